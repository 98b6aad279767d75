"""The one evaluator of trained checkpoints for the benchmarks: the data a run trained on, its
checkpoints, and their scores under other serving settings, in this process.

Every harness that re-scores weights without retraining (``fusion_contribution``,
``fusion_eval_knobs``, ``ablations``' served variants, ``zero_data``) goes through here, so
they read the same batches the same way and compute AUC and logloss with the same metrics as
training (torchmetrics' ``binary_auroc``, :func:`ifusion_plugin.metrics.log_loss`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

import numpy as np
import torch
import yaml
from torchmetrics.functional.classification import binary_auroc

from ifusion_plugin.batch import CTRBatch
from ifusion_plugin.data import CTRDataModule
from ifusion_plugin.fusion import InterestFusion
from ifusion_plugin.metrics import log_loss
from ifusion_plugin.run_config import (
    datamodule_from_config,
    datamodule_from_section,
    run_config_of,
)
from ifusion_plugin.task import CTRTask

__all__ = ["auc_logloss", "best_checkpoint", "checkpoint_datamodule", "evaluate", "labels_of", "load_task",
           "probabilities", "recipe_datamodule", "run_datamodule", "split_batches"]

ROOT = Path(__file__).resolve().parents[1]
#: Evaluation batch size of every re-scoring (larger than training's: no gradients).
EVAL_BATCH_SIZE = 2048


def load_task(ckpt: "str | Path") -> CTRTask:
    """The :class:`~ifusion_plugin.task.CTRTask` of a checkpoint, on CPU, in eval mode."""
    return CTRTask.load_from_checkpoint(str(ckpt), map_location="cpu").eval()


def best_checkpoint(logs: Path, run: str) -> Path:
    """The best (not ``last``) checkpoint of the run logged as ``logs/<run>`` (a quality sweep
    names its runs ``<host>-<fusion>-seed<N>``).

    Raises:
        FileNotFoundError: none or several.
    """
    found = sorted(p for p in (logs / run).rglob("checkpoints/*.ckpt") if p.name != "last.ckpt")
    if len(found) != 1:
        raise FileNotFoundError(f"expected one best checkpoint of run {run} under {logs}, found {[str(p) for p in found]}")
    return found[0]


def run_datamodule(config: "str | Path", data_root: Optional[str] = None, **overrides: Any) -> CTRDataModule:
    """The datamodule of a run's resolved config (a sweep's ``configs/*.yaml`` or the
    ``config.yaml`` that ``fit`` saved; every option the run used), relative roots resolved
    from the repository (the runs' working directory), set up for evaluation."""
    overrides = {"eval_batch_size": EVAL_BATCH_SIZE, **overrides, **({"root": data_root} if data_root else {})}
    datamodule = datamodule_from_config(str(config), cwd=str(ROOT), overrides=overrides)
    datamodule.setup("validate")
    return datamodule


def checkpoint_datamodule(ckpt: "str | Path", data_root: Optional[str] = None, **overrides: Any) -> CTRDataModule:
    """:func:`run_datamodule` of the ``config.yaml`` saved beside a checkpoint's run.

    Raises:
        FileNotFoundError: the run saved no config (name the data with a recipe instead).
    """
    config = run_config_of(str(ckpt))
    if config is None:
        raise FileNotFoundError(f"{ckpt}: no config.yaml beside its run (checkpoints/..): pass --data to name the recipe")
    return run_datamodule(config, data_root, **overrides)


def recipe_datamodule(data: str, data_root: Optional[str] = None, cwd: "str | Path" = ROOT, **overrides: Any) -> CTRDataModule:
    """The datamodule of ``recipes/data/<data>.yaml`` (``synthetic``: the recipes' default
    data) with ``root`` replaced by ``data_root`` when given, relative roots resolved from
    ``cwd`` and ``overrides`` applied to its init_args; set up for evaluation."""
    if data == "synthetic":
        section = yaml.safe_load((ROOT / "recipes" / "common" / "synthetic.yaml").read_text())
    else:
        section = yaml.safe_load((ROOT / "recipes" / "data" / f"{data}.yaml").read_text())["data"]
    overrides = {**overrides, **({"root": data_root} if data_root else {})}
    datamodule = datamodule_from_section(section, source=f"recipes/data/{data}.yaml", cwd=str(cwd), overrides=overrides)
    datamodule.setup("validate")
    return datamodule


def split_batches(datamodule: CTRDataModule, split: Literal["valid", "test"]) -> list[CTRBatch]:
    """Every batch of ``split`` in row order (held in memory: they are scored many times)."""
    return list(datamodule.val_dataloader() if split == "valid" else datamodule.test_dataloader())


def probabilities(task: CTRTask, batches: Iterable[CTRBatch], **serving: Any) -> np.ndarray:
    """Click probabilities ``(n,)`` of ``batches`` in order; ``serving`` (any argument of
    :meth:`~ifusion_plugin.fusion.InterestFusion.serving`: ``t_start``, ``sampling_steps``,
    ``gamma_cp``, ``gamma_tf``, ``generated_scale``...) changes iFusion's serving settings for
    this call only.

    Raises:
        ValueError: serving settings for a checkpoint whose fusion is not iFusion.
    """
    fusion = task.host.fusion
    if serving and not isinstance(fusion, InterestFusion):
        raise ValueError(f"serving settings {sorted(serving)} need an InterestFusion checkpoint, got {type(fusion).__name__}")
    settings = fusion.serving(**serving) if serving else contextlib.nullcontext()
    with torch.no_grad(), settings:
        return torch.cat([torch.sigmoid(task(batch).logits) for batch in batches]).numpy()


def auc_logloss(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(AUC, logloss) of probabilities ``(n,)`` against 0/1 labels ``(n,)``."""
    p, y = torch.as_tensor(probs), torch.as_tensor(labels)
    return binary_auroc(p, y.long()).item(), log_loss(p, y.float()).item()


def labels_of(batches: Iterable[CTRBatch]) -> np.ndarray:
    """The labels ``(n,)`` of ``batches`` in order."""
    return torch.cat([batch.label for batch in batches]).numpy()


def evaluate(task: CTRTask, batches: list[CTRBatch], **serving: Any) -> tuple[float, float]:
    """(AUC, logloss) of ``task`` over ``batches`` with the given serving settings (see
    :func:`probabilities`)."""
    return auc_logloss(probabilities(task, batches, **serving), labels_of(batches))
