"""Lightning callbacks of the CTR task."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any, Optional

import lightning.pytorch as pl

__all__ = ["TrainThroughput"]


class TrainThroughput(pl.Callback):
    """Log the training throughput of each epoch, for benchmarks and the CLI summary.

    Logs ``train_epoch_s`` (seconds from the epoch's start to the end of its last training
    batch: data loading included, validation excluded), ``train_samples_per_s`` and
    ``train_peak_rss_gib`` (the process's peak resident memory so far).
    """

    def __init__(self) -> None:
        super().__init__()
        self._start: Optional[float] = None
        self._last_end: Optional[float] = None
        self._samples = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._last_end, self._samples = time.perf_counter(), None, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._samples += len(batch)
        self._last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is None or self._last_end is None or self._samples == 0:
            return
        seconds = self._last_end - self._start
        # ru_maxrss is KiB on Linux and bytes on macOS.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        pl_module.log("train_epoch_s", seconds, on_epoch=True, rank_zero_only=True)
        pl_module.log("train_samples_per_s", self._samples / max(seconds, 1e-9), on_epoch=True, rank_zero_only=True)
        pl_module.log("train_peak_rss_gib", peak / 2**30, on_epoch=True, rank_zero_only=True)
