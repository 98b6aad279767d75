"""TrainThroughput (Lightning's ThroughputMonitor): the per-epoch figures that the CLI summary and
benchmarks report."""

from __future__ import annotations

import functools

import lightning.pytorch as pl

from ifusion_plugin.callbacks import TrainThroughput
from ifusion_plugin.hosts import DIN
from ifusion_plugin.task import CTRTask

from test_task import SPEC, ToyDataModule


def test_throughput_is_logged_per_epoch(tmp_path) -> None:
    data = ToyDataModule(size=96, batch_size=32)
    task = CTRTask(functools.partial(DIN, embed_dim=8, head_dims=(16,)), feature_spec=SPEC)
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[TrainThroughput()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=1,
    )
    trainer.fit(task, datamodule=data)
    metrics = trainer.callback_metrics
    seconds, rate = float(metrics["train_epoch_s"]), float(metrics["train_samples_per_s"])
    assert seconds > 0 and rate > 0
    # The second epoch's figures: its own 96 samples (3 batches of 32) over its own time, not
    # the fit's running totals that Lightning's monitor keeps.
    assert abs(rate * seconds - 96) < 1e-3 * 96
    assert float(metrics["train_peak_rss_gib"]) > 0.01
