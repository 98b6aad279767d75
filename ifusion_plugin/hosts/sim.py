"""SIM: a general search unit (GSU) retrieves the top-k behaviours, an exact search unit (ESU)
attends over them with multi-head target attention."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor

from ..batch import CTRBatch, FeatureSpec
from ..fusion.baselines import ConcatFusion
from ..fusion.contract import FusionFactory
from .base import CTRHost, FusionLong
from .layers import LinearInit, SessionPooling, MultiHeadTargetAttention, _check_positive_int, masked_topk

__all__ = ["SIM"]

SearchMode = Literal["soft", "hard"]


class SIM(CTRHost):
    """Search-based Interest Model (Pi et al., 2020) as a host.

    GSU, by ``search``:

    - ``"soft"``: rank the present behaviours by the inner product of their ``[item, cate]``
      embedding with the target's (the same embeddings the ESU reads), keep the top ``top_k``;
    - ``"hard"``: keep the behaviours whose category equals the target's, the ``top_k`` most
      recent of them.

    The ranking is a hard, non-differentiable selection; the embeddings learn through the ESU.
    ``top_k`` larger than the sequence length ``L`` is clamped to ``L`` at call time (every
    present behaviour is then kept). Rows with fewer candidates than ``top_k`` (short history,
    or few same-category behaviours in hard search) attend over those they have; rows with none
    give ``h_long = 0``.

    ESU: :class:`~ifusion_plugin.hosts.layers.MultiHeadTargetAttention` with the target as query
    over the retrieved behaviours; ``long_dim = attention_dim``.

    Args:
        spec, embed_dim, fusion, head_dims, head_dropout, head_sees_long, session_heads,
        session_feedforward_dim, session_dropout, session_layers, session_pooling, session_positions, embedding_std, linear_init,
        fusion_long: see :class:`~ifusion_plugin.hosts.CTRHost`.
        search: ``"soft"`` (default) or ``"hard"``.
        top_k: behaviours kept by the GSU (positive; default 50).
        attention_dim: total width of the ESU projections (default 64).
        num_heads: ESU heads (default 2); must divide ``attention_dim``.
        attention_bias: biases on the ESU's query and value projections (FuxiCTR: none).
        attention_output: an output projection after the ESU's heads (FuxiCTR's ``W_o``).

    Raises:
        ValueError: ``search`` unknown, ``top_k``, ``attention_dim`` or ``num_heads`` not a
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
        search: SearchMode = "soft",
        top_k: int = 50,
        attention_dim: int = 64,
        num_heads: int = 2,
        attention_bias: bool = True,
        attention_output: bool = False,
    ) -> None:
        if search not in ("soft", "hard"):
            raise ValueError(f"search must be 'soft' or 'hard', got {search!r}")
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
        self.search = search
        self.top_k = top_k
        self.esu = MultiHeadTargetAttention(
            self.item_dim, self.item_dim, attention_dim, num_heads, bias=attention_bias, output_projection=attention_output
        )
        self._build_fusion_and_head(attention_dim)

    def retrieve(self, batch: CTRBatch) -> tuple[Tensor, Tensor]:
        """The GSU: positions of the retrieved behaviours.

        Runs without autograd: the selection is not differentiable, so the full ``(B, L, d)``
        embedded sequence is never kept for the backward pass (only the top-k are re-embedded
        with gradients in :meth:`encode_long`).

        Args:
            batch: the batch (ids and masks).

        Returns:
            ``(index, kept)``, tensors of shape ``(B, min(top_k, L))``: long positions into the
            long sequence and a bool mask, False where fewer than ``top_k`` candidates exist.
        """
        mask = batch.long_mask
        with torch.no_grad():
            if self.search == "soft":
                # <[i, c], [i_t, c_t]> = <i, i_t> + <c, c_t>: no concatenated (B, L, 2d) copy.
                item_scores = torch.bmm(self.item_embedding(batch.long_items), self.item_embedding(batch.target_item).unsqueeze(-1))
                cate_scores = torch.bmm(self.cate_embedding(batch.long_cates), self.cate_embedding(batch.target_cate).unsqueeze(-1))
                scores = (item_scores + cate_scores).squeeze(-1)
            else:
                mask = mask & (batch.long_cates == batch.target_cate.unsqueeze(-1))
                # Most recent first: sequences are oldest first, so the position is the rank.
                positions = torch.arange(mask.shape[1], device=mask.device, dtype=self.item_embedding.weight.dtype)
                scores = positions.expand(mask.shape)
            return masked_topk(scores, mask, self.top_k)

    def encode_long(self, batch: CTRBatch) -> Tensor:
        """ESU over the GSU's top-k, tensor of shape ``(B, attention_dim)``."""
        index, kept = self.retrieve(batch)
        behaviours = self.embed_items(batch.long_items.gather(1, index), batch.long_cates.gather(1, index))
        return self.esu(self.embed_target(batch), behaviours, kept)
