"""The predictions file of ``cli predict``, written through Lightning's ``BasePredictionWriter``.

Each prediction carries the row of its sample in the split (``CTRBatch.row``, set by the
loaders), so the file is right however the batches were dealt out: under DDP every process
holds every W-th batch, and numbering rows by arrival would mislabel them. At the end of the
epoch the processes' predictions are gathered on rank 0 (``torch.distributed.all_gather_object``,
no shared file system needed), sorted by row, joined with the raw ids of the datamodule, and
written under a temporary name then renamed, so an interrupted run never leaves a truncated
file.
"""

from __future__ import annotations

import csv
import os
import warnings
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["PREDICTION_COLUMNS", "RAW_ID_PREDICTION_COLUMNS", "PredictionsFileWriter", "write_predictions"]

#: Columns of a predictions file, in order.
PREDICTION_COLUMNS = ("row", "user", "target_item", "label", "prob")
#: Appended after :data:`PREDICTION_COLUMNS` when the datamodule keeps raw ids: readers that
#: take the first five columns by position keep working.
RAW_ID_PREDICTION_COLUMNS = ("user_id", "item_id")


def write_predictions(columns: dict[str, np.ndarray], path: str) -> None:
    """Write equal-length prediction columns to ``path``: Parquet for ``.parquet``, else CSV.

    The file is written under a temporary name and renamed, so an interrupted run never
    leaves a truncated file behind.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    base, ext = os.path.splitext(path)
    partial = f"{base}.partial{ext}"
    if ext == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), partial)
    else:
        with open(partial, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(columns))
            writer.writerows(zip(*(values.tolist() for values in columns.values())))
    os.replace(partial, path)


class PredictionsFileWriter(BasePredictionWriter):
    """Collects ``CTRTask.predict_step`` outputs and writes one predictions file per predict run.

    Args:
        path: the file (Parquet for ``.parquet``, else CSV) with the columns of
            :data:`PREDICTION_COLUMNS`, then :data:`RAW_ID_PREDICTION_COLUMNS` when the
            datamodule keeps raw ids.
        split: the predicted split (``"train"``, ``"valid"`` or ``"test"``), whose raw ids are read.
    """

    def __init__(self, path: str, split: str = "test") -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self.split = split
        self._parts: list[dict[str, np.ndarray]] = []

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._parts = []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Optional[Sequence[int]],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if "row" not in prediction:
            raise ValueError("predict: the batches carry no 'row' (CTRBatch.row, the sample's index in its split), "
                             "so predictions cannot be placed; use a CTRDataModule loader")
        self._parts.append({name: prediction[name].detach().cpu().numpy() for name in PREDICTION_COLUMNS})

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        local = {name: (np.concatenate([part[name] for part in self._parts]) if self._parts else np.zeros(0))
                 for name in PREDICTION_COLUMNS}
        self._parts = []
        parts = [local]
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            gathered: list[Optional[dict[str, np.ndarray]]] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, local)
            parts = [part for part in gathered if part is not None]
        if not trainer.is_global_zero:
            return
        columns = {name: np.concatenate([part[name] for part in parts]) for name in PREDICTION_COLUMNS}
        order = np.argsort(columns["row"], kind="stable")
        columns = {name: values[order] for name, values in columns.items()}
        rows = columns["row"].astype(np.int64)
        if len(np.unique(rows)) != len(rows):
            raise RuntimeError(f"predict: {len(rows) - len(np.unique(rows))} sample(s) were predicted twice; "
                               "nothing written")
        columns["row"] = rows
        for name in ("user", "target_item"):
            columns[name] = columns[name].astype(np.int64)
        columns.update(self._raw_id_columns(trainer, rows))
        write_predictions(columns, self.path)

    def _raw_id_columns(self, trainer: pl.Trainer, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The raw ``user_id`` and ``item_id`` of the predicted ``rows``, or ``{}`` with a
        ``UserWarning`` when the datamodule keeps no raw ids (the file then has the encoded ids only)."""
        datamodule = getattr(trainer, "datamodule", None)
        if not getattr(datamodule, "has_raw_ids", False):
            reason = ("there is no datamodule" if datamodule is None
                      else f"{type(datamodule).__name__} keeps no raw ids (see CTRDataModule.raw_ids)")
            warnings.warn(
                f"predict: the predictions file gets no {'/'.join(RAW_ID_PREDICTION_COLUMNS)} columns: {reason}; "
                "join on 'row' to recover them",
                UserWarning,
                stacklevel=2,
            )
            return {}
        raw = datamodule.raw_ids(self.split)  # type: ignore[union-attr]
        return {name: raw[name][rows] for name in RAW_ID_PREDICTION_COLUMNS}
