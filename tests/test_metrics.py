"""Metrics against independent references: sklearn's roc_auc_score (per group) and log_loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from ifusion_plugin.metrics import BinaryAUROC, GroupAUC, LogLoss, group_auc, log_loss, rela_impr


def reference_gauc(preds: np.ndarray, target: np.ndarray, groups: np.ndarray) -> float:
    """DIN's GAUC with a loop over users and sklearn's AUC: the definition, not the algorithm."""
    total, weight = 0.0, 0
    for user in np.unique(groups):
        rows = groups == user
        if len(np.unique(target[rows])) < 2:
            continue
        total += rows.sum() * roc_auc_score(target[rows], preds[rows])
        weight += rows.sum()
    return total / weight


def sample(n: int, num_groups: int, seed: int, ties: bool, dtype: torch.dtype):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, num_groups, n)
    target = rng.integers(0, 2, n)
    preds = rng.random(n) * 0.5 + 0.4 * target  # informative but imperfect
    if ties:
        preds = np.round(preds, 1)  # many ties inside groups
    preds = torch.tensor(preds).to(dtype).double().numpy()  # what the metric sees after the cast
    return preds, target, groups


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n, num_groups", [(50, 3), (500, 40), (2000, 400)])
def test_group_auc_matches_sklearn(n: int, num_groups: int, ties: bool, dtype: torch.dtype) -> None:
    preds, target, groups = sample(n, num_groups, seed=n + num_groups, ties=ties, dtype=dtype)
    expected = reference_gauc(preds, target, groups)
    got = group_auc(torch.tensor(preds).to(dtype), torch.tensor(target), torch.tensor(groups))
    assert float(got) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("num_batches", [1, 3, 7])
def test_group_auc_metric_accumulates_across_batches(num_batches: int) -> None:
    """A user's samples split across batches (as across DDP ranks) still form one group."""
    preds, target, groups = sample(700, 30, seed=num_batches, ties=True, dtype=torch.float32)
    metric = GroupAUC()
    for chunk in np.array_split(np.random.default_rng(0).permutation(700), num_batches):
        metric.update(torch.tensor(preds[chunk]).float(), torch.tensor(target[chunk]), torch.tensor(groups[chunk]))
    assert float(metric.compute()) == pytest.approx(reference_gauc(preds, target, groups), abs=1e-6)
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(metric.compute())


def test_group_auc_skips_single_class_groups_and_weights_by_impressions() -> None:
    preds = torch.tensor([0.1, 0.9, 0.3, 0.2, 0.8, 0.5, 0.6])
    target = torch.tensor([0, 1, 1, 0, 0, 1, 1])
    groups = torch.tensor([7, 7, 8, 8, 8, 9, 9])  # user 9 has positives only: skipped
    assert float(group_auc(preds, target, groups)) == pytest.approx((2 * 1.0 + 3 * 0.5) / 5)


def test_group_auc_nan_when_no_group_has_both_classes() -> None:
    assert torch.isnan(group_auc(torch.tensor([0.2, 0.4]), torch.tensor([1, 0]), torch.tensor([1, 2])))
    assert torch.isnan(group_auc(torch.tensor([]), torch.tensor([]), torch.tensor([], dtype=torch.long)))


def test_group_auc_state_is_synced_by_concatenation() -> None:
    metric = GroupAUC()
    assert all(metric._reductions[name].__name__ == "dim_zero_cat" for name in ("preds", "target", "groups"))


@pytest.mark.parametrize(
    "preds, target, groups, message",
    [
        (torch.rand(4, 1), torch.ones(4, 1), torch.ones(4, 1), "preds must have shape"),
        (torch.rand(4), torch.ones(3), torch.ones(4), "target must have shape"),
        (torch.rand(4), torch.ones(4), torch.ones(5), "groups must have shape"),
        (torch.rand(4), torch.tensor([0, 1, 2, 0]), torch.ones(4), "only 0 and 1"),
        (torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 1, 0]), torch.ones(4), "floating-point"),
    ],
)
def test_group_auc_validates_inputs(preds, target, groups, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GroupAUC().update(preds, target, groups)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("num_batches", [1, 4])
def test_log_loss_matches_sklearn(dtype: torch.dtype, from_logits: bool, num_batches: int) -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, 400)
    target = rng.integers(0, 2, 400)
    probs = 1 / (1 + np.exp(-logits))
    expected = sk_log_loss(target, probs, labels=[0, 1])
    inputs = torch.tensor(logits if from_logits else probs).to(dtype)
    metric = LogLoss(from_logits=from_logits)
    for chunk in torch.tensor_split(torch.arange(400), num_batches):
        metric.update(inputs[chunk], torch.tensor(target)[chunk])
    tolerance = 1e-9 if dtype == torch.float64 else 1e-5
    assert float(metric.compute()) == pytest.approx(expected, rel=tolerance)
    assert float(log_loss(inputs, torch.tensor(target), from_logits=from_logits)) == pytest.approx(expected, rel=tolerance)


def test_log_loss_clips_probabilities() -> None:
    value = log_loss(torch.tensor([0.0, 1.0]), torch.tensor([1, 0]), eps=1e-7)
    assert float(value) == pytest.approx(-np.log(1e-7))
    with pytest.raises(ValueError, match="eps"):
        LogLoss(eps=0.0)


def test_auc_is_torchmetrics_and_matches_sklearn() -> None:
    preds, target, _ = sample(300, 1, seed=5, ties=True, dtype=torch.float32)
    metric = BinaryAUROC()
    metric.update(torch.tensor(preds).float(), torch.tensor(target))
    assert float(metric.compute()) == pytest.approx(roc_auc_score(target, preds), abs=1e-6)


@pytest.mark.parametrize(
    "auc, base, expected",
    [(0.76, 0.75, 4.0), (0.75, 0.75, 0.0), (0.70, 0.75, -20.0), (0.5, 0.6, -100.0), (0.9, 0.7, 100.0)],
)
def test_rela_impr(auc: float, base: float, expected: float) -> None:
    assert rela_impr(auc, base) == pytest.approx(expected)


@pytest.mark.parametrize("base", [0.5, 0.3])
def test_rela_impr_rejects_base_at_or_below_random(base: float) -> None:
    with pytest.raises(ValueError, match="base_auc"):
        rela_impr(0.7, base)


def _ddp_worker(rank: int, world_size: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        preds, target, groups = sample(600, 25, seed=11, ties=True, dtype=torch.float32)
        # Interleaved shards: every user's samples are spread over both processes.
        shard = np.arange(rank, 600, world_size)
        gauc, loss = GroupAUC(), LogLoss()
        gauc.update(torch.tensor(preds[shard]).float(), torch.tensor(target[shard]), torch.tensor(groups[shard]))
        loss.update(torch.tensor(preds[shard]).float(), torch.tensor(target[shard]))
        queue.put((rank, float(gauc.compute()), float(loss.compute())))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_sync_across_processes(tmp_path) -> None:
    """Two gloo processes, each with half of every user's samples, agree on the global values."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), queue), nprocs=2, start_method="spawn")
    results = sorted(queue.get(timeout=60) for _ in range(2))
    preds, target, groups = sample(600, 25, seed=11, ties=True, dtype=torch.float32)
    expected_gauc = reference_gauc(preds, target, groups)
    expected_loss = sk_log_loss(target, np.clip(preds, 1e-7, 1 - 1e-7), labels=[0, 1])
    for _, gauc, loss in results:
        assert gauc == pytest.approx(expected_gauc, abs=1e-6)
        assert loss == pytest.approx(expected_loss, rel=1e-5)
