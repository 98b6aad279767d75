"""Lightning callbacks of the CTR task."""

from __future__ import annotations

import resource
import sys
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage

__all__ = ["TrainThroughput"]


class TrainThroughput(ThroughputMonitor):
    """Lightning's :class:`~lightning.pytorch.callbacks.ThroughputMonitor`, plus per-epoch
    figures for the CLI summary and the benchmarks.

    The monitor times every training batch (synchronising CUDA first) with validation time
    taken out, and logs its windowed rates to the logger (``train/device/samples_per_sec``,
    ...). At each epoch's end this callback logs, through ``pl_module.log`` so that they reach
    ``trainer.callback_metrics``: ``train_epoch_s`` (the monitor's training time of this epoch:
    data loading included, validation excluded), ``train_samples_per_s`` (this epoch's samples
    over that time) and ``train_peak_rss_gib`` (the process's peak resident memory so far).
    On rank 0 only, as the monitor measures.

    Args:
        **kwargs: passed to :class:`~lightning.fabric.utilities.throughput.Throughput`
            (``window_size``, ``separator``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(batch_size_fn=len, **kwargs)
        self._epoch_start: Optional[tuple[float, int]] = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._totals()

    def _totals(self) -> Optional[tuple[float, int]]:
        """(training seconds, samples) the monitor counted since the fit started; ``None``
        before its first batch (and on ranks other than 0, where it does not measure)."""
        throughput = self._throughputs.get(RunningStage.TRAINING)
        if throughput is None or not throughput._time:
            return None
        metrics = throughput.compute()
        return float(metrics["time"]), int(metrics["samples"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        end = self._totals()
        if end is None:
            return
        # The monitor's clock starts at on_train_start: the first epoch counts from there.
        start = self._epoch_start or (0.0, 0)
        seconds, samples = end[0] - start[0], end[1] - start[1]
        if samples <= 0:
            return
        # ru_maxrss is KiB on Linux and bytes on macOS.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        pl_module.log("train_epoch_s", seconds, on_epoch=True, rank_zero_only=True)
        pl_module.log("train_samples_per_s", samples / max(seconds, 1e-9), on_epoch=True, rank_zero_only=True)
        pl_module.log("train_peak_rss_gib", peak / 2**30, on_epoch=True, rank_zero_only=True)
