"""Paired AUC differences: weighted AUC against sklearn, the bootstrap against known cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ifusion_plugin.paired import paired_auc_difference, weighted_auc


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_auc_matches_sklearn(ties: bool) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = labels * 0.3 + rng.random(500)
    if ties:
        scores = np.round(scores, 1)
    weights = rng.integers(0, 4, 500).astype(float)
    assert weighted_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert weighted_auc(scores, labels, weights) == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights), abs=1e-12)
    assert np.isnan(weighted_auc(scores, np.ones(500)))


def _case(gain: float, seeds: int = 5, users: int = 400, seed: int = 0):
    """Two rows (positive, negative) per user; B's scores carry ``gain`` more signal than A's."""
    rng = np.random.default_rng(seed)
    labels = np.tile([1, 0], users)
    groups = np.repeat(np.arange(users), 2)
    base = rng.normal(size=2 * users)
    a = np.stack([labels * 0.5 + base + rng.normal(scale=0.5, size=2 * users) for _ in range(seeds)])
    b = np.stack([labels * (0.5 + gain) + base + rng.normal(scale=0.5, size=2 * users) for _ in range(seeds)])
    return labels, a, b, groups


def test_clear_gain_has_an_interval_above_zero_and_no_gain_does_not() -> None:
    labels, a, b, groups = _case(gain=0.4)
    result = paired_auc_difference(labels, a, b, groups, replicates=300)
    expected = np.mean([roc_auc_score(labels, b[s]) - roc_auc_score(labels, a[s]) for s in range(5)])
    assert result.diff == pytest.approx(expected, abs=1e-12)
    assert result.low <= result.diff <= result.high and result.above_zero
    labels, a, b, groups = _case(gain=0.0)
    null = paired_auc_difference(labels, a, b, groups, replicates=300)
    assert null.low < 0 < null.high and not null.above_zero
    # The same model against itself: exactly zero, a zero-width interval.
    same = paired_auc_difference(labels, a, a, groups, replicates=50)
    assert same.diff == same.low == same.high == 0.0


def test_bootstrap_is_seeded_and_checks_shapes() -> None:
    labels, a, b, groups = _case(gain=0.1, seeds=2, users=50)
    first = paired_auc_difference(labels, a, b, groups, replicates=100, seed=3)
    assert first == paired_auc_difference(labels, a, b, groups, replicates=100, seed=3)
    assert first != paired_auc_difference(labels, a, b, groups, replicates=100, seed=4)
    with pytest.raises(ValueError, match=r"must both have shape \(seeds, 100\)"):
        paired_auc_difference(labels, a, b[:1], groups)
    with pytest.raises(ValueError, match="groups must have shape"):
        paired_auc_difference(labels, a, b, groups[:5])
    with pytest.raises(ValueError, match="level must lie in"):
        paired_auc_difference(labels, a, b, groups, level=1.5)
