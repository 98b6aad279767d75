"""Layers shared by the host models: MLP, DIN's activation unit, multi-head target attention
(the ESU of SIM and TWIN), top-k retrieval, and the short-term session encoder.

Everything is vectorised over the batch and the sequence; no layer loops in Python over rows or
positions. Masks are bool tensors, True at real behaviours.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "MLP",
    "ActivationUnitAttention",
    "MultiHeadTargetAttention",
    "SessionEncoder",
    "masked_topk",
    "gather_positions",
]

Activation = Literal["relu", "prelu", "sigmoid"]
LinearInit = Literal["torch", "xavier"]
_ACTIVATIONS: tuple[str, ...] = ("relu", "prelu", "sigmoid")


class _PReLU(nn.Module):
    """PReLU with one slope per feature of the LAST dimension (``nn.PReLU`` uses dimension 1,
    which is the sequence in ``(B, L, H)`` inputs)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.slope = nn.Parameter(torch.full((width,), 0.25))

    def forward(self, x: Tensor) -> Tensor:
        # Flattened to (rows, width), dimension 1 is the feature: the fused prelu kernel applies.
        return torch.nn.functional.prelu(x.reshape(-1, x.shape[-1]), self.slope).view(x.shape)


def _make_activation(name: str, width: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return _PReLU(width)
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {name!r}")


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_dims(name: str, dims: Sequence[int], allow_empty: bool = False) -> tuple[int, ...]:
    dims = tuple(dims)
    if not dims and not allow_empty:
        raise ValueError(f"{name} must name at least one layer width, got {dims!r}")
    for width in dims:
        if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
            raise ValueError(f"{name} must contain positive ints, got {dims!r}")
    return dims


def _check_dropout(name: str, value: float) -> None:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")


class MLP(nn.Module):
    """Stack of ``Linear -> activation -> dropout`` blocks, with an optional final linear layer.

    Args:
        in_dim: width of the input.
        hidden_dims: width of each hidden layer, in order.
        out_dim: width of a final linear layer without activation; ``None`` ends at the last
            hidden layer.
        activation: ``"relu"``, ``"prelu"`` or ``"sigmoid"``.
        dropout: dropout probability after each hidden activation.

    Call arguments:
        x: tensor of shape ``(..., in_dim)``.

    Returns:
        Tensor of shape ``(..., out_dim)`` (or ``(..., hidden_dims[-1])`` when ``out_dim`` is None).

    Example:
        >>> MLP(8, (16, 4), out_dim=1)(torch.randn(2, 8)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: Optional[int] = None,
        *,
        activation: Activation = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive_int("in_dim", in_dim)
        hidden_dims = _check_dims("hidden_dims", hidden_dims, allow_empty=out_dim is not None)
        _check_dropout("dropout", dropout)
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), _make_activation(activation, hidden)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        if out_dim is not None:
            _check_positive_int("out_dim", out_dim)
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.out_dim = width
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ActivationUnitAttention(nn.Module):
    """DIN's target attention: an MLP scores ``[q, k, q - k, q * k]`` for every behaviour.

    The first layer is applied algebraically decomposed: with its weight split into four blocks
    ``W = [W_q; W_k; W_d; W_p]`` (rows for ``q``, ``k``, ``q - k``, ``q * k``),

    ``[q, k, q-k, q*k] @ W = q @ (W_q + W_d) + k @ (W_k - W_d + diag(q) W_p)``,

    so the ``q`` term is computed once per row and the rest is one batched matmul of the keys
    with a per-row ``(d, H)`` matrix. This never materialises the ``(B, L, 4d)`` input nor the
    ``(B, L, d)`` product ``q * k``, and gives the same numbers as the concatenated form
    (:meth:`naive_scores` keeps that form for tests). The parameters are those of one
    ``nn.Linear(4d, H)``, so checkpoints match the textbook layout.

    As in DIN (and FuxiCTR's default), the scores are not normalised by a softmax unless
    ``use_softmax`` is set; padded positions get weight 0 either way.

    Args:
        dim: width ``d`` of the query and of each key.
        hidden_dims: widths of the scoring MLP's hidden layers (the first is ``H``).
        activation: activation of the scoring MLP.
        use_softmax: normalise the scores over the present positions.

    Call arguments:
        query: tensor of shape ``(B, d)``, the target item's features.
        keys: tensor of shape ``(B, L, d)``, the behaviours' features.
        mask: bool tensor of shape ``(B, L)``, True at real behaviours.

    Returns:
        Tensor of shape ``(B, d)``, the attention-weighted sum of the keys (zeros for rows
        without any behaviour).
    """

    def __init__(
        self,
        dim: int,
        hidden_dims: Sequence[int] = (64,),
        *,
        activation: Activation = "prelu",
        use_softmax: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("dim", dim)
        hidden_dims = _check_dims("attention_hidden_dims", hidden_dims)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"attention_activation must be one of {_ACTIVATIONS}, got {activation!r}")
        self.dim = dim
        self.use_softmax = bool(use_softmax)
        self.first = nn.Linear(4 * dim, hidden_dims[0])
        self.first_activation = _make_activation(activation, hidden_dims[0])
        self.rest = MLP(hidden_dims[0], hidden_dims[1:], out_dim=1, activation=activation)

    def _first_layer(self, query: Tensor, keys: Tensor) -> Tensor:
        d = self.dim
        weight = self.first.weight.t()  # (4d, H)
        w_q, w_k, w_d, w_p = weight[:d], weight[d : 2 * d], weight[2 * d : 3 * d], weight[3 * d :]
        query_term = query @ (w_q + w_d) + self.first.bias  # (B, H)
        per_row = (w_k - w_d).unsqueeze(0) + query.unsqueeze(-1) * w_p.unsqueeze(0)  # (B, d, H)
        return torch.baddbmm(query_term.unsqueeze(1), keys, per_row)  # (B, L, H)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """Raw attention scores of shape ``(B, L)`` from the decomposed first layer."""
        hidden = self.first_activation(self._first_layer(query, keys))
        return self.rest(hidden).squeeze(-1)

    def naive_scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """The same scores from the concatenated ``(B, L, 4d)`` input; a reference for tests."""
        q = query.unsqueeze(1).expand_as(keys)
        hidden = self.first_activation(self.first(torch.cat([q, keys, q - keys, q * keys], dim=-1)))
        return self.rest(hidden).squeeze(-1)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        scores = self.scores(query, keys)
        if self.use_softmax:
            weights = _masked_softmax(scores, mask, dim=-1)
        else:
            weights = scores * mask.to(scores.dtype)
        return torch.bmm(weights.unsqueeze(1), keys).squeeze(1)


def _masked_softmax(scores: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over ``dim`` restricted to ``mask``; an all-masked slice gives zeros, not NaN."""
    # Fill with a large finite negative rather than -inf: an all-masked slice then yields a
    # uniform (finite) softmax that the final multiplication by the mask zeroes.
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * mask.to(scores.dtype)


class MultiHeadTargetAttention(nn.Module):
    """Multi-head target attention, the ESU of SIM and TWIN: the target queries the behaviours.

    Per head ``h`` with width ``a = attention_dim / num_heads``:
    ``score_hl = <W_q,h q, W_k,h k_l> / sqrt(a)``, ``alpha_h = softmax_l(score_h)`` over present
    positions, ``out_h = W_v,h sum_l alpha_hl k_l + b_v,h``; the heads are concatenated.

    Two exact rewrites make it cheap at long ``L``: the key projection is folded into the query
    (``<W_q q, W_k k> = <W_k^T W_q q, k>``), so keys are never projected, and the value
    projection is applied after pooling (it is linear and the weights sum to 1). The keys need
    no bias: a key bias adds the same constant to every score of a row, which the softmax and
    the top-k both ignore. :meth:`naive_forward` keeps the textbook form for tests.

    :meth:`scores` is public because TWIN's CP-GSU ranks the whole sequence with these very
    parameters; :meth:`attend` then pools a gathered subset of those scores.

    Args:
        query_dim: width of the query (the target's features).
        key_dim: width of each behaviour's features.
        attention_dim: total width of the query/key/value projections (the output width).
        num_heads: number of heads; must divide ``attention_dim``.
        bias: biases on the query and value projections (default True); FuxiCTR's attention has
            none. A query bias adds a target-independent preference for some behaviours.
        output_projection: a bias-free ``attention_dim -> attention_dim`` projection after the
            heads are concatenated, as FuxiCTR's ``W_o`` (default False).

    Call arguments:
        query: tensor of shape ``(B, query_dim)``.
        keys: tensor of shape ``(B, L, key_dim)``.
        mask: bool tensor of shape ``(B, L)``, True at real behaviours.

    Returns:
        Tensor of shape ``(B, attention_dim)``; zeros for rows without any present position.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        attention_dim: int = 64,
        num_heads: int = 2,
        *,
        bias: bool = True,
        output_projection: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("query_dim", query_dim), ("key_dim", key_dim), ("attention_dim", attention_dim), ("num_heads", num_heads)):
            _check_positive_int(name, value)
        if attention_dim % num_heads != 0:
            raise ValueError(f"num_heads must divide attention_dim={attention_dim}, got {num_heads}")
        self.key_dim = key_dim
        self.attention_dim = attention_dim
        self.num_heads = num_heads
        self.head_dim = attention_dim // num_heads
        self.query_projection = nn.Linear(query_dim, attention_dim, bias=bias)
        self.key_projection = nn.Linear(key_dim, attention_dim, bias=False)
        self.value_projection = nn.Linear(key_dim, attention_dim, bias=bias)
        self.output_projection: Optional[nn.Linear] = (
            nn.Linear(attention_dim, attention_dim, bias=False) if output_projection else None
        )

    def _folded_query(self, query: Tensor) -> Tensor:
        """``W_k^T W_q q / sqrt(a)`` per head: (B, query_dim) -> (B, key_dim, num_heads)."""
        heads, width = self.num_heads, self.head_dim
        q = self.query_projection(query).view(-1, heads, width)  # (B, h, a)
        w_k = self.key_projection.weight.view(heads, width, self.key_dim)  # (h, a, d)
        return torch.einsum("bha,had->bdh", q, w_k) / math.sqrt(width)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """Scaled scores of every head, tensor of shape ``(B, L, num_heads)`` (unmasked)."""
        return torch.bmm(keys, self._folded_query(query))

    def shared_scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """:meth:`scores` of C queries ``(C, query_dim)`` against one sequence ``(L, key_dim)``
        that they all share (one user's, in the request form): ``(C, L, num_heads)``, one matmul."""
        return torch.einsum("ld,cdh->clh", keys, self._folded_query(query))

    def attend(self, scores: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """Pool ``keys`` (B, L', d) with ``scores`` (B, L', h) over ``mask`` (B, L'); (B, attention_dim)."""
        weights = _masked_softmax(scores, mask.unsqueeze(-1), dim=1)  # (B, L', h)
        pooled = torch.bmm(weights.transpose(1, 2), keys)  # (B, h, d)
        w_v = self.value_projection.weight.view(self.num_heads, self.head_dim, self.key_dim)
        values = torch.einsum("bhd,had->bha", pooled, w_v).reshape(-1, self.attention_dim)
        if self.value_projection.bias is not None:
            # The value bias enters through sum(alpha) = 1, which is 0 for rows with no position.
            has_any = mask.any(dim=1, keepdim=True).to(values.dtype)
            values = values + self.value_projection.bias * has_any
        return values if self.output_projection is None else self.output_projection(values)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        return self.attend(self.scores(query, keys), keys, mask)

    def naive_forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """Textbook multi-head attention with projected keys and values; a reference for tests."""
        batch, length, _ = keys.shape
        heads, width = self.num_heads, self.head_dim
        q = self.query_projection(query).view(batch, heads, 1, width)
        k = self.key_projection(keys).view(batch, length, heads, width).transpose(1, 2)
        v = self.value_projection(keys).view(batch, length, heads, width).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(width)  # (B, h, L)
        weights = _masked_softmax(scores, mask.unsqueeze(1), dim=-1)
        out = (weights.unsqueeze(2) @ v).squeeze(2).reshape(batch, self.attention_dim)
        return out if self.output_projection is None else self.output_projection(out)


def masked_topk(scores: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices of the ``k`` best present positions per row.

    ``k`` is clamped to ``L``: a top-k larger than the sequence keeps every position. Rows with
    fewer than ``k`` present positions fill the rest with padded positions, reported as False in
    the returned mask.

    Args:
        scores: tensor of shape ``(B, L)``; larger is better.
        mask: bool tensor of shape ``(B, L)``, True at positions that may be retrieved.
        k: number of positions to keep (positive).

    Returns:
        ``(index, kept)``: long tensor of shape ``(B, k')`` and bool tensor of shape ``(B, k')``
        with ``k' = min(k, L)``.
    """
    k = min(k, scores.shape[1])
    # Detached: retrieval is a hard selection; gradients reach the kept positions through the
    # attention that follows, not through the ranking.
    ranked = scores.detach().masked_fill(~mask, float("-inf"))
    top, index = torch.topk(ranked, k, dim=1, sorted=False)
    return index, torch.isfinite(top)


def gather_positions(values: Tensor, index: Tensor) -> Tensor:
    """``values[b, index[b, j]]``: tensor of shape ``(B, k, D)`` from ``(B, L, D)`` and ``(B, k)``."""
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


SessionPooling = Literal["mean", "target", "attention"]
_SESSION_POOLINGS: tuple[str, ...] = ("mean", "target", "attention")


class SessionEncoder(nn.Module):
    """The short-term encoder: transformer encoder layers per session (one by default), then a pooling.

    All ``B * K`` sessions go through one batched call with a key padding mask. A session with
    no behaviour would make attention over an empty set NaN: its rows are unmasked for the
    attention (they hold the zero padding embedding) and its pooled vector is set to zero, so
    the fusion layer, told by ``session_mask`` that the session is missing, never sees NaN.

    Args:
        dim: width of each behaviour's features (the output width ``d_S``).
        session_len: ``N``, behaviours per session (sets the learned positional embedding).
        num_heads: attention heads of the encoder layer; must divide ``dim``.
        feedforward_dim: hidden width of the encoder layer's feed-forward block.
        dropout: dropout inside the encoder layer.
        num_layers: transformer encoder layers (default 1, our reading of the paper's session encoder); ``0``
            pools the behaviours' own features, as FuxiCTR's short-term branch reads them.
        positions: add a learned positional embedding to the behaviours before the encoder
            layers (default True). A pooling alone is order-blind, so ``num_layers=0`` with
            positions adds a per-position vector to every pooled session.
        pooling: ``"mean"``: masked mean over each session's behaviours (the session vector
            does not depend on the candidate); ``"target"``: target attention within each
            session (DIN-style, one softmax per session over its behaviours, queried by a
            projection of the candidate), so each session vector is candidate-aware;
            ``"attention"``: multi-head target attention within each session with query, key and
            value projections (:class:`MultiHeadTargetAttention`, ``num_heads`` heads), the form
            of the short-term branch of SIM and TWIN in FuxiCTR.

    Call arguments:
        behaviours: tensor of shape ``(B, K, N, dim)``.
        mask: bool tensor of shape ``(B, K, N)``, True at real behaviours.
        target: tensor of shape ``(B, dim)``, the candidate's features; required by
            ``pooling="target"`` and ``"attention"``, ignored otherwise.

    Returns:
        Tensor of shape ``(B, K, dim)``; zeros for empty sessions.
    """

    def __init__(
        self,
        dim: int,
        session_len: int,
        *,
        num_heads: int = 2,
        feedforward_dim: int = 128,
        dropout: float = 0.0,
        num_layers: int = 1,
        pooling: SessionPooling = "mean",
        positions: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in _SESSION_POOLINGS:
            raise ValueError(f"session_pooling must be one of {_SESSION_POOLINGS}, got {pooling!r}")
        for name, value in (("dim", dim), ("session_len", session_len), ("session_heads", num_heads), ("session_feedforward_dim", feedforward_dim)):
            _check_positive_int(name, value)
        if dim % num_heads != 0:
            raise ValueError(f"session_heads must divide the session width {dim}, got {num_heads}")
        _check_dropout("session_dropout", dropout)
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 0:
            raise ValueError(f"session_layers must be a non-negative int, got {num_layers!r}")
        self.dim = dim
        self.position: Optional[nn.Parameter] = None
        if positions:
            self.position = nn.Parameter(torch.zeros(session_len, dim))
            nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=feedforward_dim, dropout=dropout, batch_first=True)
            for _ in range(num_layers)
        )
        self.pooling = pooling
        self.target_query: Optional[nn.Linear] = nn.Linear(dim, dim) if pooling == "target" else None
        self.target_attention: Optional[MultiHeadTargetAttention] = (
            MultiHeadTargetAttention(dim, dim, dim, num_heads) if pooling == "attention" else None
        )

    def forward(self, behaviours: Tensor, mask: Tensor, target: Optional[Tensor] = None) -> Tensor:
        batch, sessions, length, dim = behaviours.shape
        flat = behaviours.reshape(batch * sessions, length, dim)
        if self.position is not None:
            flat = flat + self.position[-length:]
        flat_mask = mask.reshape(batch * sessions, length)
        present = flat_mask.any(dim=1, keepdim=True)
        padding = ~(flat_mask | ~present)  # empty sessions attend to everything (see docstring)
        for layer in self.layers:
            flat = layer(flat, src_key_padding_mask=padding)
        encoded = flat.view(batch, sessions, length, dim)
        if self.pooling == "mean":
            weights = mask.to(encoded.dtype).unsqueeze(-1)
            return (encoded * weights).sum(dim=2) / weights.sum(dim=2).clamp_min(1.0)
        if target is None:
            raise ValueError(f"session_pooling={self.pooling!r} needs the candidate's features: pass target of shape (B, dim)")
        if self.target_attention is not None:
            # Every session of a row is queried by the same candidate; an empty session pools
            # to zeros (MultiHeadTargetAttention's rows without a present position).
            queries = target.repeat_interleave(sessions, dim=0)  # (B * K, dim)
            return self.target_attention(queries, flat, flat_mask).view(batch, sessions, -1)
        assert self.target_query is not None
        query = self.target_query(target).view(batch, 1, 1, dim)
        scores = (encoded * query).sum(dim=-1) / math.sqrt(dim)  # (B, K, N)
        # An empty session's weights are all zero, so its vector is zero (the fusion is told
        # by session_mask that it is missing).
        attention = _masked_softmax(scores, mask, dim=-1)
        return (attention.unsqueeze(-1) * encoded).sum(dim=2)
