"""Paired comparison of two models on the same test rows: AUC difference with a user bootstrap.

A claim that model B beats model A needs the difference measured on the same rows, over several
seeds, with its uncertainty. :func:`paired_auc_difference` takes the predictions of both models
for the same rows, one row of predictions per seed (seed ``s`` of A is paired with seed ``s`` of
B), and returns the mean over seeds of ``AUC(B) - AUC(A)`` with a percentile bootstrap
confidence interval. Each bootstrap replicate draws users with replacement (a user's rows stay
together, since one user's samples are correlated) and applies the same draw to every seed and
both models; the replicate's statistic is the mean over seeds of the per-seed difference. So the
interval covers the sampling noise of the test users, and the seeds' spread enters through the
mean.

Weighted AUC (a user drawn ``c`` times weighs ``c``) is computed exactly, ties counting one half,
from one sort per prediction vector: a replicate costs ``O(rows)`` per vector.

Depends on numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDifference", "weighted_auc", "paired_auc_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """``mean over seeds of AUC(B) - AUC(A)`` and its bootstrap interval.

    Attributes:
        diff: the difference on the full test set (mean over seeds).
        low, high: the bounds of the ``level`` percentile interval.
        level: the interval's coverage (e.g. 0.95).
        seeds: how many seed pairs were combined.
        replicates: bootstrap replicates drawn.
    """

    diff: float
    low: float
    high: float
    level: float
    seeds: int
    replicates: int

    @property
    def above_zero(self) -> bool:
        """Whether the whole interval lies above zero (B better beyond noise)."""
        return self.low > 0.0


class _SortedScores:
    """One prediction vector, sorted once; :meth:`auc` takes row weights."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray) -> None:
        order = np.argsort(scores, kind="mergesort")
        self.order = order
        sorted_scores = scores[order]
        # Start of each run of equal scores, so ties count one half.
        new_run = np.empty(len(order), dtype=bool)
        new_run[:1] = True
        new_run[1:] = sorted_scores[1:] != sorted_scores[:-1]
        self.run_id = np.cumsum(new_run) - 1
        self.positive = labels[order] == 1

    def auc(self, weights: np.ndarray) -> float:
        w = weights[self.order]
        w_pos = np.where(self.positive, w, 0.0)
        w_neg = w - w_pos
        runs = self.run_id[-1] + 1
        neg_per_run = np.bincount(self.run_id, weights=w_neg, minlength=runs)
        pos_per_run = np.bincount(self.run_id, weights=w_pos, minlength=runs)
        below = np.cumsum(neg_per_run) - neg_per_run  # negative weight strictly below each run
        total_pos, total_neg = pos_per_run.sum(), neg_per_run.sum()
        if total_pos == 0 or total_neg == 0:
            return float("nan")
        return float((pos_per_run * (below + 0.5 * neg_per_run)).sum() / (total_pos * total_neg))


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """ROC AUC with per-row weights (ties count one half); ``nan`` when a class is absent.

    Args:
        scores: float array of shape ``(n,)``.
        labels: array of shape ``(n,)`` with values in {0, 1}.
        weights: non-negative float array of shape ``(n,)`` (default all ones).
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    return _SortedScores(scores, labels).auc(weights)


def paired_auc_difference(
    labels: np.ndarray,
    preds_a: np.ndarray,
    preds_b: np.ndarray,
    groups: np.ndarray,
    *,
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Mean over seeds of ``AUC(B) - AUC(A)`` on the same rows, with a user-bootstrap interval.

    Args:
        labels: array of shape ``(n,)``, the test labels (0/1), shared by every run.
        preds_a: array of shape ``(S, n)``: model A's predictions, one row per seed.
        preds_b: array of shape ``(S, n)``: model B's, row ``s`` paired with A's row ``s``.
        groups: array of shape ``(n,)``, the user of each row (the resampled unit).
        replicates: bootstrap replicates (positive).
        level: coverage of the percentile interval, in (0, 1).
        seed: seed of the bootstrap draws.

    Returns:
        :class:`PairedDifference`.

    Raises:
        ValueError: shapes disagree, no seed, or ``replicates``/``level`` out of range.
    """
    labels = np.asarray(labels)
    preds_a, preds_b = np.atleast_2d(np.asarray(preds_a, np.float64)), np.atleast_2d(np.asarray(preds_b, np.float64))
    n = len(labels)
    if preds_a.shape != preds_b.shape or preds_a.shape[1:] != (n,) or preds_a.shape[0] == 0:
        raise ValueError(f"preds_a and preds_b must both have shape (seeds, {n}), got {preds_a.shape} and {preds_b.shape}")
    if np.shape(groups) != (n,):
        raise ValueError(f"groups must have shape ({n},), got {np.shape(groups)}")
    if replicates <= 0:
        raise ValueError(f"replicates must be positive, got {replicates}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    num_groups = int(group_index.max()) + 1 if n else 0
    sorted_a = [_SortedScores(row, labels) for row in preds_a]
    sorted_b = [_SortedScores(row, labels) for row in preds_b]

    def mean_difference(weights: np.ndarray) -> float:
        return float(np.mean([b.auc(weights) - a.auc(weights) for a, b in zip(sorted_a, sorted_b)]))

    full = mean_difference(np.ones(n))
    rng = np.random.default_rng(seed)
    draws = np.empty(replicates)
    for r in range(replicates):
        counts = np.bincount(rng.integers(num_groups, size=num_groups), minlength=num_groups)
        draws[r] = mean_difference(counts[group_index].astype(np.float64))
    tail = (1.0 - level) / 2.0
    low, high = np.nanquantile(draws, [tail, 1.0 - tail])
    return PairedDifference(diff=full, low=float(low), high=float(high), level=level, seeds=preds_a.shape[0], replicates=replicates)
