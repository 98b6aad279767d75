"""The probe fusion layers of `benchmarks.fusion_probe` keep the fusion contract and train."""

from __future__ import annotations

import pytest
import torch

from benchmarks.fusion_probe import PROBES, train_and_score
from ifusion_plugin.data import SyntheticDataModule


@pytest.mark.parametrize("probe", list(PROBES))
def test_probe_contract(probe: str) -> None:
    layer = PROBES[probe](12, 10).eval()
    mask = torch.tensor([[True, False, True], [False, False, False]])
    fused = layer(torch.randn(2, 12), torch.randn(2, 3, 10), mask).fused
    assert fused.shape == (2, 64) and torch.isfinite(fused).all()


def test_train_and_score_runs_one_epoch(tmp_path) -> None:
    data = SyntheticDataModule(num_users=40, num_items=60, history_len=30, train_per_user=2, long_len=20,
                               batch_size=32, cache_dir=str(tmp_path))
    data.setup("fit")
    row = train_and_score(data, "avgpool", "session_mlp", seed=0)
    assert 0.0 <= row["val_auc"] <= 1.0 and row["train_bce_last_quarter"] > 0
