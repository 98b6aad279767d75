"""Fit a small DIN + iFusion on cached synthetic data with ``devices`` CPU processes.

Run by tests/test_ddp.py (Lightning's DDP launcher re-executes this script for rank 1). Each
rank writes its final validation metrics and the rows it trained on to ``OUT/rank<r>.json`` and
its weights to ``OUT/rank<r>.pt``.

    python tests/scripts/ddp_fit.py OUT CACHE_DIR DEVICES [NUM_WORKERS]
"""

from __future__ import annotations

import functools
import json
import os
import sys

import lightning.pytorch as pl
import torch

from ifusion_plugin.data import SyntheticDataModule
from ifusion_plugin.fusion import InterestFusion
from ifusion_plugin.hosts import DIN
from ifusion_plugin.task import CTRTask

# Shared with the test, which builds the same datamodule (and its cache) before launching.
DATA_OPTIONS = dict(num_users=50, num_items=60, history_len=30, train_per_user=4, long_len=20,
                    batch_size=16, eval_batch_size=16)


def make_task(spec) -> CTRTask:
    fusion = functools.partial(InterestFusion, fusion_dim=8, num_heads=2, denoiser_hidden_dim=16, guidance_hidden_dim=16)
    return CTRTask(functools.partial(DIN, embed_dim=8, head_dims=(16,), fusion=fusion), feature_spec=spec)


class TrainedRows(pl.Callback):
    """The split rows of every training batch this process took."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        self.rows += batch.row.tolist()


def main(out: str, cache_dir: str, devices: int, num_workers: int = 0) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, workers=True)
    data = SyntheticDataModule(cache_dir=cache_dir, num_workers=num_workers, **DATA_OPTIONS)
    rows = TrainedRows()
    task = make_task(data.feature_spec)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=[rows],
    )
    trainer.fit(task, datamodule=data)
    rank = trainer.global_rank
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
    metrics["train_batches"] = int(trainer.num_training_batches)
    metrics["val_batches"] = int(sum(trainer.num_val_batches))
    metrics["train_rows"] = rows.rows
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(metrics, handle)
    torch.save(task.state_dict(), os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *(int(arg) for arg in sys.argv[4:5]))
