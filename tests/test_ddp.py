"""Lightning DDP on two CPU processes (gloo): the batch sampler partitions the data by rank, the
gradients stay in step, and the synced validation metrics equal a single-process evaluation of
the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from ifusion_plugin.data import SyntheticDataModule
from ifusion_plugin.metrics import group_auc

SCRIPTS = Path(__file__).resolve().parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from ddp_fit import DATA_OPTIONS, make_task  # noqa: E402


def test_batch_sampler_partitions_each_split_by_rank(tmp_path, monkeypatch) -> None:
    from ifusion_plugin.data.loading import _RangeBatchSampler

    for shuffle in (False, True):
        seen = []
        for rank in range(3):
            monkeypatch.setattr(_RangeBatchSampler, "_world", staticmethod(lambda rank=rank: (3, rank)))
            sampler = _RangeBatchSampler(n=100, batch_size=8, shuffle=shuffle, seed=0)
            batches = [list(b) for b in sampler]
            assert len(batches) == len(sampler)
            seen.append([i for b in batches for i in b])
        flat = [i for part in seen for i in part]
        assert sorted(flat) == list(range(100))  # every sample once: none on two ranks, none dropped
        if shuffle:
            # 34 samples on rank 0, 33 on the others: 5 batches each (ceil(34 / 8)), at most 8 rows.
            assert [len(part) for part in seen] == [34, 33, 33]
            assert {len(sampler)} == {5} and max(len(b) for b in batches) <= 8


@pytest.mark.slow
def test_ddp_two_cpu_processes_sync_metrics(tmp_path) -> None:
    cache = str(tmp_path / "cache")
    data = SyntheticDataModule(cache_dir=cache, **DATA_OPTIONS)
    data.prepare_data()  # built once here: the two ranks only read it
    env = {**os.environ, "PL_GLOBAL_SEED": "0", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "ddp_fit.py"), str(tmp_path), cache, "2", "2"],  # 2 processes x 2 workers
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # The epoch trained on every row exactly once across the processes and their workers.
    trained = [r.pop("train_rows") for r in ranks]
    assert sorted(trained[0] + trained[1]) == list(range(len(data.split("train"))))
    # Validation batches are dealt out in turn (7 batches: 4 and 3), never padded with repeats.
    full_val = (len(data.split("valid")) + DATA_OPTIONS["eval_batch_size"] - 1) // DATA_OPTIONS["eval_batch_size"]
    assert [r.pop("val_batches") for r in ranks] == [(full_val + 1) // 2, full_val // 2]
    # The metric states are gathered: both ranks report the same numbers.
    assert ranks[0] == pytest.approx(ranks[1], rel=0, abs=1e-7)
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # DDP kept them in step

    # Each rank took the same number of batches: ceil(ceil(n / 2) / batch_size).
    half = -(-len(data.split("train")) // 2)
    assert ranks[0]["train_batches"] == ranks[1]["train_batches"] == -(-half // DATA_OPTIONS["batch_size"])

    # A single-process evaluation of the same weights over the whole validation split.
    task = make_task(data.feature_spec)
    task.load_state_dict(weights[0])
    task.eval()
    probs, labels, users = [], [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            probs.append(torch.sigmoid(task(batch).logits))
            labels.append(batch.label)
            users.append(batch.user)
    p, y, u = torch.cat(probs), torch.cat(labels), torch.cat(users)
    assert len(p) == len(data.split("valid"))
    assert ranks[0]["val_auc"] == pytest.approx(roc_auc_score(y.numpy(), p.numpy()), abs=1e-6)
    assert ranks[0]["val_logloss"] == pytest.approx(log_loss(y.numpy(), p.numpy()), abs=1e-5)
    assert ranks[0]["val_gauc"] == pytest.approx(float(group_auc(p, y, u)), abs=1e-6)


@pytest.mark.slow
def test_ddp_predictions_equal_the_single_process_file_row_for_row(tmp_path) -> None:
    """Each rank scores every second batch; the file still names every row once, in order, with
    the single-process probabilities and raw ids."""
    cache = str(tmp_path / "cache")
    data = SyntheticDataModule(cache_dir=cache, **DATA_OPTIONS)
    data.prepare_data()
    torch.manual_seed(0)
    task = make_task(data.feature_spec)
    torch.save(task.state_dict(), tmp_path / "weights.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    files = {}
    for devices in (1, 2):
        files[devices] = tmp_path / f"predictions-{devices}.csv"
        result = subprocess.run(
            [sys.executable, str(SCRIPTS / "ddp_predict.py"), str(tmp_path / "weights.pt"), cache, str(devices), str(files[devices])],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-4000:]
    single, ddp = (pd.read_csv(files[d]) for d in (1, 2))
    test_rows = len(data.split("test"))
    assert test_rows > 2 * DATA_OPTIONS["eval_batch_size"]  # more than one batch per rank
    assert single["row"].tolist() == list(range(test_rows)) == ddp["row"].tolist()
    assert single[["user", "target_item", "label", "user_id", "item_id"]].equals(ddp[["user", "target_item", "label", "user_id", "item_id"]])
    assert np.allclose(single["prob"], ddp["prob"], rtol=0, atol=1e-6)
    raw = data.raw_ids("test")
    assert ddp["user_id"].tolist() == raw["user_id"].tolist() and ddp["item_id"].tolist() == raw["item_id"].tolist()
