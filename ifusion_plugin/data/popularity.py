"""The popularity-only baseline: how much of a benchmark's AUC item popularity alone explains.

Each candidate is scored by how often its item is a positive in the train split; nothing about
the user is used. With one negative drawn uniformly from all items this scorer reaches test AUC
0.826 on the MovieLens-1M peer split, so a model's 0.865 there says little about
personalisation; with popularity-proportional negatives (``negative_sampling="popularity"``)
it falls to about 0.55. Benchmarks print it beside every table and flag a set where it lies
outside ``[1 - PERSONALISATION_THRESHOLD, PERSONALISATION_THRESHOLD]``.

    python -m ifusion_plugin.data.popularity --config recipes/data/ml1m-peer.yaml
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

if TYPE_CHECKING:
    from .datamodule import CTRDataModule

__all__ = ["PERSONALISATION_THRESHOLD", "measures_popularity", "popularity_scores", "popularity_auc"]

#: Above this popularity-only test AUC (or below ``1 -`` it, where the negatives are the more
#: popular items) a set mostly measures popularity, not personalisation.
PERSONALISATION_THRESHOLD = 0.60


def measures_popularity(auc: float) -> bool:
    """Whether a popularity-only AUC separates the classes by more than the threshold, either way."""
    return max(auc, 1.0 - auc) > PERSONALISATION_THRESHOLD


def popularity_scores(train_items: np.ndarray, train_labels: np.ndarray, items: np.ndarray) -> np.ndarray:
    """How often each of ``items`` is a positive among ``(train_items, train_labels)``.

    Args:
        train_items: int array of shape ``(S,)``, the train candidates' item ids.
        train_labels: array of shape ``(S,)``, 1 at positives.
        items: int array of shape ``(T,)``, the candidates to score (ids unseen in train score 0).

    Returns:
        float64 array of shape ``(T,)``.
    """
    train_items = np.asarray(train_items, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    positives = train_items[np.asarray(train_labels) == 1]
    size = int(max(positives.max(initial=-1), items.max(initial=-1))) + 1
    counts = np.bincount(positives, minlength=size).astype(np.float64)
    return counts[items]


def popularity_auc(datamodule: "CTRDataModule", split: Literal["valid", "test"] = "test") -> float:
    """AUC on ``split`` of scoring each candidate by its train-positive count.

    Args:
        datamodule: any :class:`~ifusion_plugin.data.CTRDataModule` (builds or loads its cache).
        split: ``"valid"`` or ``"test"``.

    Returns:
        The AUC as a float in [0, 1].
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    columns = ["target_item", "label"]
    train = datamodule.split("train").select_columns(columns)[:]
    evaluated = datamodule.split(split).select_columns(columns)[:]
    scores = popularity_scores(train["target_item"], train["label"], evaluated["target_item"])
    # Scaled into [0, 1): torchmetrics reads scores outside [0, 1] as logits and squashes them
    # with a sigmoid, which ties every count above ~40 in float32 (0.514 instead of 0.546 here).
    probabilities = torch.from_numpy(scores / (scores.max(initial=0.0) + 1.0))
    return float(binary_auroc(probabilities, torch.from_numpy(np.asarray(evaluated["label"], dtype=np.int64))))


def main(argv: list[str] | None = None) -> None:
    """Print the popularity-only valid and test AUC of a data recipe."""
    from jsonargparse import ArgumentParser

    from .datamodule import CTRDataModule

    parser = ArgumentParser(prog="python -m ifusion_plugin.data.popularity", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="config")
    parser.add_argument("--data", type=CTRDataModule, required=True)
    parser.add_argument("--metrics_path", type=Optional[str], default=None,
                        help="also write {'valid': auc, 'test': auc} to this JSON file (for scripts)")
    config = parser.parse_args(argv)
    datamodule = parser.instantiate(config).data
    aucs = {}
    for split in ("valid", "test"):
        auc = aucs[split] = popularity_auc(datamodule, split)
        flag = f"  (outside [{1 - PERSONALISATION_THRESHOLD:.2f}, {PERSONALISATION_THRESHOLD:.2f}]: measures popularity, not personalisation)" if measures_popularity(auc) else ""
        print(f"popularity-only {split} AUC {auc:.4f}{flag}")
    if config.metrics_path:
        with open(config.metrics_path, "w", encoding="utf-8") as handle:
            json.dump(aucs, handle)


if __name__ == "__main__":
    main()
