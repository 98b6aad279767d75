"""The fusion layers that iFusion replaces, behind the same contract.

Each takes ``(long_dim, session_dim, fusion_dim)`` and returns a :class:`FusionOutput`, so a
same-host, same-data comparison swaps one class name. Missing inputs follow what a standard
model does: a missing long-term interest (``long_mask`` False) is a zero vector, missing
sessions are left out of the pooling, and a row with no session pools to zeros.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor, nn

from .contract import FusionLayer, FusionOutput, masked_mean

__all__ = ["ConcatFusion", "GateFusion", "AttentionFusion"]

LinearInit = Literal["xavier", "torch"]


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _init_linears(module: nn.Module, linear_init: LinearInit) -> None:
    """Xavier-normal weights and zero biases on every ``nn.Linear`` of ``module`` (``"xavier"``),
    or PyTorch's own initialisation left as it is (``"torch"``).

    Why Xavier by default: PyTorch's ``nn.Linear`` draws weights at about half the Xavier scale
    (std ``1 / sqrt(3 fan_in)``), so a projection between the host's interests and its head
    damps both at the start of training (FuxiCTR and Keras initialise dense layers Xavier). On the
    MovieLens-1M peer split (popularity negatives, one epoch) TWIN + concat moved +0.0075
    validation AUC over 6 seeds (within noise; BENCHMARKS.md, "Hosts against the peer library").
    """
    if linear_init not in ("xavier", "torch"):
        raise ValueError(f"linear_init must be 'xavier' or 'torch', got {linear_init!r}")
    if linear_init == "torch":
        return
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _zero_missing_long(h_long: Tensor, long_mask: Optional[Tensor]) -> Tensor:
    if long_mask is None:
        return h_long
    return h_long * long_mask.to(h_long.dtype).unsqueeze(-1)


def _session_mask_or_all(h_sessions: Tensor, session_mask: Optional[Tensor]) -> Tensor:
    if session_mask is None:
        return torch.ones(h_sessions.shape[:2], dtype=torch.bool, device=h_sessions.device)
    return session_mask


class ConcatFusion(FusionLayer):
    """Concatenation: ``[h_long, mean of present sessions]``, projected to ``fusion_dim`` by a
    linear layer, or passed on as it is (``fusion_dim=None``, the plain concatenation).

    A projection narrower than ``long_dim + session_dim`` limits the head to a rank-``fusion_dim``
    view of the two interests; ``fusion_dim=None`` gives the head both side by side, as
    FuxiCTR's and most CTR models' heads read them (then ``fusion_dim = long_dim + session_dim``).

    Args:
        long_dim, session_dim, validate_inputs: see :class:`FusionLayer`.
        fusion_dim: width of the projection (default 64), or ``None`` for no projection.
        linear_init: ``"xavier"`` (default: Xavier-normal weights, zero bias, as FuxiCTR and
            Keras initialise a dense layer) or ``"torch"`` (PyTorch's default, as before
            this option existed: the figures under BENCHMARKS.md's History).

    Example:
        >>> fusion = ConcatFusion(long_dim=32, session_dim=16, fusion_dim=8)
        >>> fusion(torch.randn(4, 32), torch.randn(4, 3, 16)).fused.shape
        torch.Size([4, 8])
        >>> ConcatFusion(long_dim=32, session_dim=16, fusion_dim=None).fusion_dim
        48
    """

    def __init__(
        self,
        long_dim: int,
        session_dim: int,
        fusion_dim: Optional[int] = 64,
        *,
        validate_inputs: bool = True,
        linear_init: LinearInit = "xavier",
    ) -> None:
        width = fusion_dim
        if fusion_dim is None and _positive_int(long_dim) and _positive_int(session_dim):
            width = long_dim + session_dim
        # An invalid long_dim or session_dim reaches the base class, which names it.
        super().__init__(long_dim, session_dim, width, validate_inputs=validate_inputs)  # type: ignore[arg-type]
        self.projection: Optional[nn.Linear] = None if fusion_dim is None else nn.Linear(long_dim + session_dim, fusion_dim)
        _init_linears(self, linear_init)

    def forward(
        self,
        h_long: Tensor,
        h_sessions: Tensor,
        session_mask: Optional[Tensor] = None,
        long_mask: Optional[Tensor] = None,
    ) -> FusionOutput:
        self._check_inputs(h_long, h_sessions, session_mask, long_mask)
        pooled = masked_mean(h_sessions, _session_mask_or_all(h_sessions, session_mask))
        joined = torch.cat([_zero_missing_long(h_long, long_mask), pooled], dim=-1)
        return FusionOutput(fused=joined if self.projection is None else self.projection(joined))

    def prepare_sessions(self, h_sessions: Tensor, session_mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        pooled = masked_mean(h_sessions, _session_mask_or_all(h_sessions, session_mask))
        if self.projection is None:
            return {"pooled": pooled}
        # The projection of [h_long, pooled] is W_L h_long + (W_S pooled + b): the second term once.
        w_session = self.projection.weight[:, self.long_dim :]
        return {"session_term": nn.functional.linear(pooled, w_session, self.projection.bias)}

    def fuse_prepared(self, h_long: Tensor, prepared: dict[str, Tensor], long_mask: Optional[Tensor] = None) -> Tensor:
        h_long = _zero_missing_long(h_long, long_mask)
        if self.projection is None:
            return torch.cat([h_long, prepared["pooled"].expand(h_long.shape[0], -1)], dim=-1)
        return nn.functional.linear(h_long, self.projection.weight[:, : self.long_dim]) + prepared["session_term"]


class GateFusion(FusionLayer):
    """Gated sum: ``g * P_L(h_long) + (1 - g) * P_S(pooled)``, ``g = sigmoid(W [P_L, P_S])``.

    The gate is per example and per dimension, as in the gated fusion of long- and short-term
    interests (e.g. SDM, Lv et al. 2019).

    Args:
        long_dim, session_dim, fusion_dim, validate_inputs: see :class:`FusionLayer`.
        linear_init: ``"xavier"`` (default) or ``"torch"``, as :class:`ConcatFusion`'s.
    """

    def __init__(
        self,
        long_dim: int,
        session_dim: int,
        fusion_dim: int = 64,
        *,
        validate_inputs: bool = True,
        linear_init: LinearInit = "xavier",
    ) -> None:
        super().__init__(long_dim, session_dim, fusion_dim, validate_inputs=validate_inputs)
        self.long_projection = nn.Linear(long_dim, fusion_dim)
        self.session_projection = nn.Linear(session_dim, fusion_dim)
        self.gate = nn.Linear(2 * fusion_dim, fusion_dim)
        _init_linears(self, linear_init)

    def forward(
        self,
        h_long: Tensor,
        h_sessions: Tensor,
        session_mask: Optional[Tensor] = None,
        long_mask: Optional[Tensor] = None,
    ) -> FusionOutput:
        self._check_inputs(h_long, h_sessions, session_mask, long_mask)
        long_part = self.long_projection(_zero_missing_long(h_long, long_mask))
        pooled = masked_mean(h_sessions, _session_mask_or_all(h_sessions, session_mask))
        short_part = self.session_projection(pooled)
        gate = torch.sigmoid(self.gate(torch.cat([long_part, short_part], dim=-1)))
        return FusionOutput(fused=gate * long_part + (1.0 - gate) * short_part)

    def prepare_sessions(self, h_sessions: Tensor, session_mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        short_part = self.session_projection(masked_mean(h_sessions, _session_mask_or_all(h_sessions, session_mask)))
        # The gate's input [P_L, P_S] splits as for ConcatFusion: its P_S term once.
        gate_term = nn.functional.linear(short_part, self.gate.weight[:, self.fusion_dim :], self.gate.bias)
        return {"short_part": short_part, "gate_term": gate_term}

    def fuse_prepared(self, h_long: Tensor, prepared: dict[str, Tensor], long_mask: Optional[Tensor] = None) -> Tensor:
        long_part = self.long_projection(_zero_missing_long(h_long, long_mask))
        gate = torch.sigmoid(nn.functional.linear(long_part, self.gate.weight[:, : self.fusion_dim]) + prepared["gate_term"])
        return gate * long_part + (1.0 - gate) * prepared["short_part"]


class AttentionFusion(FusionLayer):
    """Attention fusion: the long-term interest queries the sessions, then a residual sum.

    ``fused = P_L(h_long) + MultiheadAttention(q=P_L(h_long), kv=P_S(h_sessions))`` over the
    present sessions; a row without sessions gets ``P_L(h_long)`` alone.

    Args:
        long_dim, session_dim, fusion_dim, validate_inputs: see :class:`FusionLayer`.
        num_heads: attention heads; must divide ``fusion_dim``.
    """

    def __init__(
        self,
        long_dim: int,
        session_dim: int,
        fusion_dim: int = 64,
        *,
        num_heads: int = 4,
        validate_inputs: bool = True,
    ) -> None:
        super().__init__(long_dim, session_dim, fusion_dim, validate_inputs=validate_inputs)
        if num_heads <= 0 or fusion_dim % num_heads != 0:
            raise ValueError(f"num_heads must be a positive divisor of fusion_dim={fusion_dim}, got {num_heads}")
        self.long_projection = nn.Linear(long_dim, fusion_dim)
        self.session_projection = nn.Linear(session_dim, fusion_dim)
        self.attention = nn.MultiheadAttention(fusion_dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(fusion_dim)

    def forward(
        self,
        h_long: Tensor,
        h_sessions: Tensor,
        session_mask: Optional[Tensor] = None,
        long_mask: Optional[Tensor] = None,
    ) -> FusionOutput:
        self._check_inputs(h_long, h_sessions, session_mask, long_mask)
        query = self.long_projection(_zero_missing_long(h_long, long_mask)).unsqueeze(1)
        keys = self.session_projection(h_sessions)
        present = _session_mask_or_all(h_sessions, session_mask)
        # A row with no session would make softmax over an empty set NaN: let it attend to
        # everything, then zero the result below.
        has_any = present.any(dim=1)
        key_padding = ~(present | ~has_any.unsqueeze(1))
        attended, _ = self.attention(query, keys, keys, key_padding_mask=key_padding, need_weights=False)
        attended = attended.squeeze(1) * has_any.to(attended.dtype).unsqueeze(-1)
        return FusionOutput(fused=self.norm(query.squeeze(1) + attended))
