"""AvgPoolDNN: the long-term interest is the masked mean of the long sequence."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ..batch import CTRBatch, FeatureSpec
from ..fusion.baselines import ConcatFusion
from ..fusion.contract import FusionFactory
from .base import CTRHost, FusionLong
from .layers import LinearInit, SessionPooling

__all__ = ["AvgPoolDNN"]


class AvgPoolDNN(CTRHost):
    """Average-pooling DNN: ``h_long`` is the mean of the present long-term behaviours.

    ``long_dim = 2 * embed_dim``; rows without history give zeros.

    Args:
        spec, embed_dim, fusion, head_dims, head_dropout, head_sees_long, session_heads,
        session_feedforward_dim, session_dropout, session_layers, session_pooling, session_positions, embedding_std, linear_init,
        fusion_long: see :class:`~ifusion_plugin.hosts.CTRHost`.

    Example:
        >>> from ifusion_plugin.batch import FeatureSpec
        >>> host = AvgPoolDNN(FeatureSpec(10, 50, 5, long_len=8, num_sessions=2, session_len=3))
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
        self._build_fusion_and_head(self.item_dim)

    def encode_long(self, batch: CTRBatch) -> Tensor:
        """Masked mean of the long sequence, tensor of shape ``(B, 2 * embed_dim)``."""
        return self.mean_long(batch)

    LONG_READS_CANDIDATE = False

    def encode_long_request(self, user: CTRBatch, candidates: CTRBatch, target: Tensor) -> Tensor:
        """The mean does not read the candidate: computed once for the user."""
        return self.encode_long(user).expand(target.shape[0], -1)
