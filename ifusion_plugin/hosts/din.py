"""DIN: target attention with the activation unit over the long sequence."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ..batch import CTRBatch, FeatureSpec
from ..fusion.baselines import ConcatFusion
from ..fusion.contract import FusionFactory
from .base import CTRHost, FusionLong
from .layers import LinearInit, SessionPooling, Activation, ActivationUnitAttention

__all__ = ["DIN"]


class DIN(CTRHost):
    """Deep Interest Network (Zhou et al., 2018) as a host.

    ``h_long = sum_l w_l k_l`` with ``w_l = MLP([q, k_l, q - k_l, q * k_l])`` over the present
    long-term behaviours ``k_l`` and the target ``q`` (both ``[item, cate]`` embeddings), see
    :class:`~ifusion_plugin.hosts.layers.ActivationUnitAttention` for the decomposed, cheaper
    evaluation. ``long_dim = 2 * embed_dim``.

    Args:
        spec, embed_dim, fusion, head_dims, head_dropout, head_sees_long, session_heads,
        session_feedforward_dim, session_dropout, session_layers, session_pooling, session_positions, embedding_std, linear_init,
        fusion_long: see :class:`~ifusion_plugin.hosts.CTRHost`.
        attention_hidden_dims: hidden widths of the activation unit (DIN and FuxiCTR: ``(64,)``).
        attention_activation: ``"prelu"`` (default), ``"relu"`` or ``"sigmoid"``.
        attention_softmax: normalise the activation-unit scores with a softmax (DIN does not).
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
        attention_hidden_dims: Sequence[int] = (64,),
        attention_activation: Activation = "prelu",
        attention_softmax: bool = False,
    ) -> None:
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
        self.attention = ActivationUnitAttention(
            self.item_dim, attention_hidden_dims, activation=attention_activation, use_softmax=attention_softmax
        )
        self._build_fusion_and_head(self.item_dim)

    def encode_long(self, batch: CTRBatch) -> Tensor:
        """Activation-unit pooling of the long sequence, tensor of shape ``(B, 2 * embed_dim)``."""
        return self.attention(self.embed_target(batch), self.embed_long(batch), batch.long_mask)
