"""Host CTR models (AvgPoolDNN, DIN, SIM, TWIN) with a pluggable fusion slot.

Every host shares the embeddings, the short-term session encoder and the head of
:class:`CTRHost` and differs only in its long-term encoder; the fusion layer is a constructor
argument, so ``DIN(spec, fusion=InterestFusion)`` and ``DIN(spec, fusion=ConcatFusion)`` differ
in that layer alone.
"""

from .avgpool import AvgPoolDNN
from .base import CTRHost, HostOutput
from .din import DIN
from .sim import SIM
from .twin import TWIN

__all__ = ["AvgPoolDNN", "CTRHost", "DIN", "HostOutput", "SIM", "TWIN"]
