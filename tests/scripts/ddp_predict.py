"""Predict the test split of the cached synthetic data with given weights on ``devices`` CPU
processes, through the CLI's predictions writer.

Run by tests/test_ddp.py (Lightning's DDP launcher re-executes this script for rank 1).

    python tests/scripts/ddp_predict.py WEIGHTS CACHE_DIR DEVICES PREDICTIONS_PATH
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import torch

from ifusion_plugin.data import SyntheticDataModule
from ifusion_plugin.prediction_writer import PredictionsFileWriter

from ddp_fit import DATA_OPTIONS, make_task


def main(weights: str, cache_dir: str, devices: int, path: str) -> None:
    torch.set_num_threads(1)
    data = SyntheticDataModule(cache_dir=cache_dir, **DATA_OPTIONS)
    task = make_task(data.feature_spec)
    task.load_state_dict(torch.load(weights, weights_only=True))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PredictionsFileWriter(path, "test")],
    )
    trainer.predict(task, datamodule=data, return_predictions=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
