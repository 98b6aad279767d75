"""The base of every host: shared embeddings, session encoder, fusion slot and head.

Hosts differ only in how they encode the long-term sequence (:meth:`CTRHost.encode_long`);
everything else is built here once, so a comparison between hosts, or between fusion layers
inside one host, changes exactly one part.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional, Sequence

import torch
from torch import Tensor, nn

from ..batch import PAD_ID, CTRBatch, FeatureSpec
from ..fusion.baselines import ConcatFusion
from ..fusion.contract import FusionFactory, FusionLayer
from .layers import MLP, LinearInit, SessionEncoder, SessionPooling, _check_dropout, _check_dims, _check_positive_int

__all__ = ["HostOutput", "CTRHost", "FusionLong"]

#: What the fusion slot receives as ``h_long``: the host's long-term interest, or the user-level
#: mean of the long sequence (see :class:`CTRHost`).
FusionLong = Literal["host", "mean"]


@dataclass
class HostOutput:
    """What a host returns.

    Attributes:
        logits: tensor of shape ``(B,)``, the click logit (apply a sigmoid for a probability).
        losses: the fusion layer's named auxiliary losses, already weighted; a training step
            adds ``sum(losses.values())`` to the CTR loss. Empty in eval mode and for fusion
            layers without auxiliary objectives.
    """

    logits: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)


class CTRHost(nn.Module):
    """Base class of the host CTR models.

    Holds what every host shares so comparisons are fair:

    - item, category and user embeddings of width ``embed_dim`` (index 0 is padding and embeds
      to zeros), and one embedding per context column of ``spec.context_cardinalities``;
      a behaviour's features are ``[item, cate]`` of width ``2 * embed_dim``; with behaviour
      types (``spec.num_behaviors > 0``) a session behaviour's features add the embedding of
      its type (width ``2 * embed_dim``);
    - the short-term :class:`SessionEncoder` giving ``h_sessions`` of shape
      ``(B, K, 2 * embed_dim)``;
    - the fusion slot, built as ``fusion(long_dim, session_dim)`` (``2 * embed_dim`` in place
      of ``long_dim`` with ``fusion_long="mean"``);
    - the head, an MLP over ``[fused, target item, target cate, user, context...]``, plus
      ``h_long`` when ``head_sees_long`` (for the trap of docs/hosts.md: a fusion layer that can
      drop the long-term interest is then compared with the head still seeing it; turn it on
      for every fusion layer of a comparison, the concat baseline included).

    Subclasses implement :meth:`encode_long` and set ``long_dim`` before calling
    :meth:`_build_fusion_and_head`.

    Args:
        spec: vocabulary sizes and sequence shapes.
        embed_dim: width of every id embedding.
        fusion: factory ``(long_dim, session_dim) -> FusionLayer``; a fusion class itself
            qualifies, or a ``functools.partial`` fixing its other options.
        head_dims: hidden widths of the head MLP (a final linear layer gives the logit).
        head_dropout: dropout after each hidden layer of the head.
        head_sees_long: also feed ``h_long`` to the head beside ``fused``.
        session_heads: attention heads of the session encoder; must divide ``2 * embed_dim``.
        session_feedforward_dim: feed-forward width of the session encoder.
        session_dropout: dropout inside the session encoder.
        session_layers: transformer layers of the session encoder (``0``: the behaviours' own
            features are pooled, as FuxiCTR's short-term branch reads them).
        session_positions: a learned positional embedding on the session behaviours (see
            :class:`~ifusion_plugin.hosts.layers.SessionEncoder`).
        embedding_std: standard deviation of the normal initialisation of every embedding
            (FuxiCTR: 1e-4).
        linear_init: ``"torch"`` (default: PyTorch's own initialisation of ``nn.Linear``) or
            ``"xavier"`` (Xavier-normal weights and zero biases, FuxiCTR's) for the host's linear
            layers; the fusion layer keeps its own initialisation either way, so fusion layers
            compare on the same host.
        session_pooling: ``"mean"`` (default) or ``"target"``: how the session encoder pools a
            session's behaviours (see :class:`~ifusion_plugin.hosts.layers.SessionEncoder`);
            ``"target"`` and ``"attention"`` make every session vector candidate-aware.
        fusion_long: what the fusion slot fuses with the sessions. ``"host"`` (default): the
            host's long-term interest ``h_long`` (for DIN, SIM and TWIN target attention, so it
            changes with the candidate). ``"mean"``: the user-level masked mean of the long
            sequence's features (width ``2 * embed_dim``, AvgPoolDNN's ``h_long``), and the
            host's ``h_long`` reaches the head beside ``fused`` (``head_sees_long`` must then be
            true on a host whose ``h_long`` reads the candidate, or its long-term encoder would be
            unused). With mean-pooled sessions every input of the fusion layer is then the user's
            alone, so the request form fuses once per request, not once per candidate.

    Raises:
        ValueError: an option out of its range, or ``fusion_long="mean"`` without
            ``head_sees_long`` on a candidate-aware host.

    Call arguments (``forward``):
        batch: a :class:`~ifusion_plugin.batch.CTRBatch` whose shapes match ``spec``
            (the sequence lengths may differ).

    Returns:
        :class:`HostOutput` with ``logits`` of shape ``(B,)``.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embed_dim: int = 32,
        fusion: FusionFactory = ConcatFusion,
        head_dims: Sequence[int] = (256, 128, 64),
        head_dropout: float = 0.0,
        head_sees_long: bool = False,
        session_heads: int = 2,
        session_feedforward_dim: int = 128,
        session_dropout: float = 0.0,
        session_layers: int = 1,
        session_pooling: SessionPooling = "mean",
        session_positions: bool = True,
        embedding_std: float = 0.01,
        linear_init: LinearInit = "torch",
        fusion_long: FusionLong = "host",
    ) -> None:
        super().__init__()
        if not isinstance(spec, FeatureSpec):
            raise ValueError(f"spec must be a FeatureSpec, got {type(spec).__name__}")
        _check_positive_int("embed_dim", embed_dim)
        if not callable(fusion):
            raise ValueError(f"fusion must be a callable (long_dim, session_dim) -> FusionLayer, got {fusion!r}")
        self._head_dims = _check_dims("head_dims", head_dims)
        _check_dropout("head_dropout", head_dropout)
        if linear_init not in ("torch", "xavier"):
            raise ValueError(f"linear_init must be 'torch' or 'xavier', got {linear_init!r}")
        self._linear_init = linear_init
        if fusion_long not in ("host", "mean"):
            raise ValueError(f"fusion_long must be 'host' or 'mean', got {fusion_long!r}")
        if fusion_long == "mean" and self.LONG_READS_CANDIDATE and not head_sees_long:
            raise ValueError(
                f"fusion_long='mean' feeds the fusion layer the mean of the long sequence; {type(self).__name__}'s own "
                "long-term interest then reaches the model only through the head: set head_sees_long=true"
            )
        self.fusion_long = fusion_long
        if not float(embedding_std) > 0:
            raise ValueError(f"embedding_std must be positive, got {embedding_std!r}")
        self.spec = spec
        self.embed_dim = embed_dim
        self.item_dim = 2 * embed_dim
        self.head_sees_long = bool(head_sees_long)
        self._fusion_factory = fusion
        self._head_dropout = float(head_dropout)

        self.item_embedding = nn.Embedding(spec.num_items, embed_dim, padding_idx=PAD_ID)
        self.cate_embedding = nn.Embedding(spec.num_cates, embed_dim, padding_idx=PAD_ID)
        self.user_embedding = nn.Embedding(spec.num_users, embed_dim, padding_idx=PAD_ID)
        self.context_embeddings = nn.ModuleList(
            nn.Embedding(cardinality, embed_dim, padding_idx=PAD_ID) for cardinality in spec.context_cardinalities
        )
        # Behaviour types (click, cart, buy...) of the session behaviours, summed into their
        # [item, cate] features as a transformer's segment embedding is: the session width, and
        # so every fusion layer's input, stays the same with or without types.
        self.behavior_embedding: Optional[nn.Embedding] = (
            nn.Embedding(spec.num_behaviors, self.item_dim, padding_idx=PAD_ID) if spec.num_behaviors else None
        )
        typed = (self.behavior_embedding,) if self.behavior_embedding is not None else ()
        for embedding in (self.item_embedding, self.cate_embedding, self.user_embedding, *self.context_embeddings, *typed):
            # Small initial embeddings (as FuxiCTR's default std 1e-4 ... 1e-2): N(0, 1) rows
            # would dominate the head's first layer at the start of training.
            nn.init.normal_(embedding.weight, std=embedding_std)
            with torch.no_grad():
                embedding.weight[PAD_ID].zero_()
        self.session_encoder = SessionEncoder(
            self.item_dim,
            spec.session_len,
            num_heads=session_heads,
            feedforward_dim=session_feedforward_dim,
            dropout=session_dropout,
            num_layers=session_layers,
            pooling=session_pooling,
            positions=session_positions,
        )
        self.session_dim = self.item_dim

    def _build_fusion_and_head(self, long_dim: int) -> None:
        """Build the fusion layer and the head once the subclass knows ``long_dim``."""
        _check_positive_int("long_dim", long_dim)
        self.long_dim = long_dim
        fusion_layer = self._fusion_factory(self.fusion_long_dim, self.session_dim)
        if not isinstance(fusion_layer, FusionLayer):
            raise ValueError(
                f"fusion must build a FusionLayer from (long_dim, session_dim), got {type(fusion_layer).__name__}"
            )
        self.fusion = fusion_layer
        head_in = (
            fusion_layer.fusion_dim
            + self.item_dim  # target item and cate
            + self.embed_dim  # user
            + self.embed_dim * len(self.context_embeddings)
            + (long_dim if self.head_sees_long else 0)
        )
        self.head = MLP(head_in, self._head_dims, out_dim=1, activation="relu", dropout=self._head_dropout)
        if self._linear_init == "xavier":
            fusion_modules = set(self.fusion.modules())
            for module in self.modules():
                if isinstance(module, nn.Linear) and module not in fusion_modules:
                    nn.init.xavier_normal_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    @property
    def fusion_long_dim(self) -> int:
        """Width of the fusion layer's ``h_long`` input: ``long_dim``, or ``2 * embed_dim`` with
        ``fusion_long="mean"``."""
        return self.item_dim if self.fusion_long == "mean" else self.long_dim

    # ----------------------------------------------------------------- embedding helpers
    def embed_items(self, items: Tensor, cates: Tensor) -> Tensor:
        """Behaviour features ``[item, cate]``: shape ``items.shape + (2 * embed_dim,)``."""
        return torch.cat([self.item_embedding(items), self.cate_embedding(cates)], dim=-1)

    def embed_target(self, batch: CTRBatch) -> Tensor:
        """Target features, tensor of shape ``(B, 2 * embed_dim)``."""
        return self.embed_items(batch.target_item, batch.target_cate)

    def embed_long(self, batch: CTRBatch) -> Tensor:
        """Long-sequence features, tensor of shape ``(B, L, 2 * embed_dim)`` (zeros at padding)."""
        return self.embed_items(batch.long_items, batch.long_cates)

    def encode_sessions(self, batch: CTRBatch, target: Optional[Tensor] = None) -> Tensor:
        """``h_sessions``, tensor of shape ``(B, K, 2 * embed_dim)``; zeros for missing sessions.

        ``target`` (``(B, 2 * embed_dim)``, :meth:`embed_target`) saves its recomputation when the
        caller has it; only a candidate-aware ``session_pooling`` reads it.
        """
        behaviours = self.embed_items(batch.session_items, batch.session_cates)
        if self.behavior_embedding is not None:
            if batch.session_behaviors is None:
                raise ValueError(
                    f"batch.session_behaviors must be a (B, K, N) tensor: the spec declares num_behaviors={self.spec.num_behaviors}"
                )
            behaviours = behaviours + self.behavior_embedding(batch.session_behaviors)
        elif batch.session_behaviors is not None:
            raise ValueError("batch.session_behaviors is given but the spec declares no behaviour types (num_behaviors=0)")
        if self.session_encoder.pooling != "mean" and target is None:
            target = self.embed_target(batch)
        return self.session_encoder(behaviours, batch.session_item_mask, target)

    def mean_long(self, batch: CTRBatch) -> Tensor:
        """Masked mean of the long sequence's features, tensor of shape ``(B, 2 * embed_dim)``
        (zeros for rows without history)."""
        # Weighted by the mask, not relying on padding_idx alone: presence is decided by the
        # item id, and a padded position may still carry a non-zero category id.
        weights = batch.long_mask.unsqueeze(1).to(self.item_embedding.weight.dtype)  # (B, 1, L)
        total = torch.bmm(weights, self.embed_long(batch)).squeeze(1)
        return total / weights.sum(dim=-1).clamp_min(1.0)

    def fusion_input(self, batch: CTRBatch, h_long: Tensor) -> Tensor:
        """What the fusion slot receives as ``h_long``: ``h_long`` itself (``fusion_long="host"``)
        or :meth:`mean_long`; shape ``(B, fusion_long_dim)``."""
        if self.fusion_long == "host" or not self.LONG_READS_CANDIDATE:
            # A host whose h_long is the mean already (AvgPoolDNN) is not averaged twice.
            return h_long
        return self.mean_long(batch)

    @abstractmethod
    def encode_long(self, batch: CTRBatch) -> Tensor:
        """The long-term interest ``h_long``, tensor of shape ``(B, long_dim)``.

        Rows without long-term history must come out finite (the fusion layer is told about
        them through ``long_mask``).
        """
        raise NotImplementedError

    def forward(self, batch: CTRBatch) -> HostOutput:
        target = self.embed_target(batch)
        h_long = self.encode_long(batch)
        h_sessions = self.encode_sessions(batch, target)
        fusion_output = self.fusion(
            self.fusion_input(batch, h_long), h_sessions, session_mask=batch.session_mask, long_mask=batch.has_long
        )
        logits = self._head_logits(fusion_output.fused, target, self._user_features(batch), h_long)
        return HostOutput(logits=logits, losses=dict(fusion_output.losses))

    def _user_features(self, batch: CTRBatch) -> Tensor:
        """The head's user and context embeddings, ``(B, embed_dim * (1 + C))``."""
        parts = [self.user_embedding(batch.user)]
        if len(self.context_embeddings) > 0:
            if batch.context is None:
                raise ValueError(
                    f"batch.context must be a (B, {len(self.context_embeddings)}) tensor: the spec declares "
                    f"context_cardinalities={self.spec.context_cardinalities}"
                )
            parts.extend(embedding(batch.context[:, i]) for i, embedding in enumerate(self.context_embeddings))
        return torch.cat(parts, dim=-1)

    def _head_logits(self, fused: Tensor, target: Tensor, user_features: Tensor, h_long: Tensor) -> Tensor:
        parts = [fused, target, user_features]
        if self.head_sees_long:
            parts.append(h_long)
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)

    # ----------------------------------------------------------------- request form
    #: Whether ``h_long`` depends on the candidate (target attention); ``False`` lets the request
    #: form fuse once per user when the sessions do not depend on it either.
    LONG_READS_CANDIDATE: ClassVar[bool] = True

    def encode_long_request(self, user: CTRBatch, candidates: CTRBatch, target: Tensor) -> Tensor:
        """``h_long`` of C candidates of one user, tensor of shape ``(C, long_dim)``.

        Args:
            user: the user's batch of size 1 (its target fields are not read).
            candidates: the user's fields expanded to the C candidates (views), with their
                ``target_item`` / ``target_cate``.
            target: :meth:`embed_target` of ``candidates``, shape ``(C, 2 * embed_dim)``.

        The default encodes ``candidates`` as :meth:`encode_long` does; hosts override it to
        encode the user's sequence once (e.g. TWIN's keys).
        """
        return self.encode_long(candidates)

    def request_logits(self, user: CTRBatch, target_item: Tensor, target_cate: Tensor) -> Tensor:
        """Click logits of one user against C candidates, computing the user's side once (eval mode).

        With ``session_pooling="mean"`` the sessions, the fusion layer's session work
        (:meth:`~ifusion_plugin.fusion.contract.FusionLayer.prepare_sessions`) and the user and
        context embeddings are computed once; per candidate remain its embedding, ``h_long``
        (:meth:`encode_long_request`), the fusion layer's ``h_long`` part and the head (the
        fusion layer runs once when its ``h_long`` is the user's alone: ``fusion_long="mean"``
        or AvgPoolDNN). With a candidate-aware pooling the sessions are encoded per candidate
        and only the embeddings of the user and context are shared.

        Args:
            user: a :class:`CTRBatch` of batch size 1: the user, the sequences and context (its
                target fields and label are not read).
            target_item, target_cate: long tensors of shape ``(C,)``, the candidates.

        Returns:
            Logits, tensor of shape ``(C,)``, equal to :meth:`forward`'s on the C rows
            ``(user, candidate)`` (up to float rounding).
        """
        if user.user.shape[0] != 1:
            raise ValueError(f"request_logits scores one user: user.user must have shape (1,), got {tuple(user.user.shape)}")
        if target_item.shape != target_cate.shape or target_item.dim() != 1:
            raise ValueError(f"target_item and target_cate must both have shape (C,), got {tuple(target_item.shape)} "
                             f"and {tuple(target_cate.shape)}")
        count = target_item.shape[0]

        def expand(value: Optional[Tensor]) -> Optional[Tensor]:
            return None if value is None else value.expand(count, *value.shape[1:])

        candidates = CTRBatch(
            user=expand(user.user), target_item=target_item, target_cate=target_cate,
            long_items=expand(user.long_items), long_cates=expand(user.long_cates),
            session_items=expand(user.session_items), session_cates=expand(user.session_cates),
            label=target_item.new_zeros(count, dtype=torch.float32), context=expand(user.context),
            session_behaviors=expand(user.session_behaviors),
        )
        target = self.embed_items(target_item, target_cate)
        h_long = self.encode_long_request(user, candidates, target)
        long_mask = candidates.has_long
        # The fusion layer's h_long is the user's alone with fusion_long="mean" or a host whose
        # h_long does not read the candidate.
        user_level = self.fusion_long == "mean" or not self.LONG_READS_CANDIDATE
        fusion_long = self.fusion_input(user, h_long[:1]).expand(count, -1) if user_level else h_long
        if self.session_encoder.pooling == "mean":
            prepared = self.fusion.prepare_sessions(self.encode_sessions(user), user.session_mask)
            if user_level:  # nothing the fusion layer reads depends on the candidate: fuse once
                fused = self.fusion.fuse_prepared(fusion_long[:1], prepared, long_mask[:1]).expand(count, -1)
            else:
                fused = self.fusion.fuse_prepared(h_long, prepared, long_mask)
        else:
            h_sessions = self.encode_sessions(candidates, target)
            fused = self.fusion(fusion_long, h_sessions, session_mask=candidates.session_mask, long_mask=long_mask).fused
        user_features = self._user_features(user)
        return self._head_logits(fused, target, user_features.expand(count, -1), h_long)
