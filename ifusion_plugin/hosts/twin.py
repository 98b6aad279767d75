"""TWIN: a consistency-preserved GSU ranks the long sequence with the ESU's own target
attention, then the ESU attends over the top-k."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor

from ..batch import CTRBatch, FeatureSpec
from ..fusion.baselines import ConcatFusion
from ..fusion.contract import FusionFactory
from .base import CTRHost, FusionLong
from .layers import LinearInit, SessionPooling, MultiHeadTargetAttention, _check_positive_int, masked_topk

__all__ = ["TWIN"]

CPScoring = Literal["mean", "first_head"]


class TWIN(CTRHost):
    """TWo-stage Interest Network (Chang et al., 2023) as a host.

    CP-GSU: every present long-term behaviour is scored with the ESU's own query/key
    projections (``cp_scoring="mean"``: the scaled scores averaged over heads;
    ``"first_head"``: the first head's), so the retrieval ranks exactly as the ESU would
    attend; the ``top_k`` best are kept. As in TWIN the behaviour features are the item's own
    (``[item, cate]`` embeddings), which makes the full-sequence scoring a single matmul.

    ESU: multi-head target attention over the top-k, with the same parameters. The CP-GSU pass
    over all ``L`` positions runs without autograd (the selection is not differentiable) and the
    ESU rescores the ``top_k`` kept behaviours with gradients: the same numbers as gathering
    the CP-GSU scores, without keeping ``(B, L, ...)`` tensors for the backward pass.

    ``top_k`` larger than ``L`` is clamped to ``L`` at call time. Rows with no history give
    ``h_long = 0``. ``long_dim = attention_dim``.

    Args:
        spec, embed_dim, fusion, head_dims, head_dropout, head_sees_long, session_heads,
        session_feedforward_dim, session_dropout, session_layers, session_pooling, session_positions, embedding_std, linear_init,
        fusion_long: see :class:`~ifusion_plugin.hosts.CTRHost`.
        top_k: behaviours kept by the CP-GSU (positive; default 50).
        attention_dim: total width of the ESU projections (default 64).
        num_heads: ESU heads (default 2); must divide ``attention_dim``.
        attention_bias: biases on the ESU's query and value projections (FuxiCTR: none).
        attention_output: an output projection after the ESU's heads (FuxiCTR's ``W_o``).
        cp_scoring: ``"mean"`` (default) or ``"first_head"``.

    Raises:
        ValueError: ``cp_scoring`` unknown, ``top_k``, ``attention_dim`` or ``num_heads`` not a
            positive int, or ``num_heads`` not dividing ``attention_dim``.
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
        top_k: int = 50,
        attention_dim: int = 64,
        num_heads: int = 2,
        attention_bias: bool = True,
        attention_output: bool = False,
        cp_scoring: CPScoring = "mean",
    ) -> None:
        if cp_scoring not in ("mean", "first_head"):
            raise ValueError(f"cp_scoring must be 'mean' or 'first_head', got {cp_scoring!r}")
        _check_positive_int("top_k", top_k)
        super().__init__(
            spec,
            embed_dim=embed_dim,
            fusion=fusion,
            head_dims=head_dims,
            head_dropout=head_dropout,
            head_sees_long=head_sees_long,
            session_heads=session_heads,
            session_feedforward_dim=session_feedforward_dim,
            session_dropout=session_dropout,
            session_layers=session_layers,
            session_pooling=session_pooling,
            session_positions=session_positions,
            embedding_std=embedding_std,
            linear_init=linear_init,
            fusion_long=fusion_long,
        )
        self.top_k = top_k
        self.cp_scoring = cp_scoring
        self.esu = MultiHeadTargetAttention(
            self.item_dim, self.item_dim, attention_dim, num_heads, bias=attention_bias, output_projection=attention_output
        )
        self._build_fusion_and_head(attention_dim)

    def retrieve(self, batch: CTRBatch) -> tuple[Tensor, Tensor]:
        """The CP-GSU: ``(index, kept)`` of shape ``(B, min(top_k, L))``, as in :class:`SIM`.

        Scores the whole sequence with the ESU's current query/key projections. Runs without
        autograd: the selection is not differentiable, and the ESU then recomputes its scores
        on the top-k alone with gradients, so nothing of size ``(B, L, d)`` is kept for the
        backward pass.
        """
        with torch.no_grad():
            head_scores = self.esu.scores(self.embed_target(batch), self.embed_long(batch))  # (B, L, h)
            ranking = head_scores.mean(dim=-1) if self.cp_scoring == "mean" else head_scores[..., 0]
            return masked_topk(ranking, batch.long_mask, self.top_k)

    def encode_long(self, batch: CTRBatch) -> Tensor:
        """ESU over the CP-GSU's top-k, tensor of shape ``(B, attention_dim)``."""
        index, kept = self.retrieve(batch)
        behaviours = self.embed_items(batch.long_items.gather(1, index), batch.long_cates.gather(1, index))
        return self.esu(self.embed_target(batch), behaviours, kept)

    def encode_long_request(self, user: CTRBatch, candidates: CTRBatch, target: Tensor) -> Tensor:
        """The user's sequence embedded once; the CP-GSU scores of every candidate in one matmul
        (keys are never projected, see :class:`MultiHeadTargetAttention`), and the ESU pools
        the top-k of those same scores."""
        count = target.shape[0]
        behaviours = self.embed_long(user)[0]  # (L, d), once
        scores = self.esu.shared_scores(target, behaviours)  # (C, L, h)
        ranking = scores.mean(dim=-1) if self.cp_scoring == "mean" else scores[..., 0]
        index, kept = masked_topk(ranking, user.long_mask.expand(count, -1), self.top_k)
        top_scores = scores.gather(1, index.unsqueeze(-1).expand(-1, -1, scores.shape[-1]))
        return self.esu.attend(top_scores, behaviours[index], kept)
