"""ifusion-plugin: iFusion interest fusion for CTR models, as a drop-in PyTorch module.

The fusion layers are importable from here without Lightning or pyarrow installed::

    from ifusion_plugin import InterestFusion, ConcatFusion, GateFusion
"""

from .fusion import AttentionFusion, ConcatFusion, FusionFactory, FusionLayer, FusionOutput, GateFusion, InterestFusion

__version__ = "0.1.0"

__all__ = [
    "AttentionFusion",
    "ConcatFusion",
    "FusionFactory",
    "FusionLayer",
    "FusionOutput",
    "GateFusion",
    "InterestFusion",
    "__version__",
]
