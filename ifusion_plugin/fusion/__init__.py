"""The fusion method and the layers it replaces; depends on torch alone."""

from .baselines import AttentionFusion, ConcatFusion, GateFusion
from .contract import FusionFactory, FusionLayer, FusionOutput, masked_mean
from .denoisers import MARN, NARMLP, NARAttention, build_denoiser
from .guidance import GuidanceEncoder
from .interest_fusion import InterestFusion
from .schedule import NoiseSchedule, extract

__all__ = [
    "AttentionFusion",
    "ConcatFusion",
    "FusionFactory",
    "FusionLayer",
    "FusionOutput",
    "GateFusion",
    "GuidanceEncoder",
    "InterestFusion",
    "MARN",
    "NARAttention",
    "NARMLP",
    "NoiseSchedule",
    "build_denoiser",
    "extract",
    "masked_mean",
]
