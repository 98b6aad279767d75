"""The fusion method and the layers it replaces; depends on torch alone."""

from .baselines import AttentionFusion, ConcatFusion, GateFusion
from .contract import FusionFactory, FusionLayer, FusionOutput, masked_mean

__all__ = [
    "AttentionFusion",
    "ConcatFusion",
    "FusionFactory",
    "FusionLayer",
    "FusionOutput",
    "GateFusion",
    "masked_mean",
]
