"""The probe fusion layers of `benchmarks.fusion_probe` keep the fusion contract and train."""

from __future__ import annotations

import pytest
import torch

from benchmarks.fusion_probe import PROBES, train_and_score
from ifusion_plugin.data import SyntheticDataModule


@pytest.mark.parametrize("probe", list(PROBES))
def test_probe_contract(probe: str) -> None:
    torch.manual_seed(0)
    layer = PROBES[probe](12, 10).eval()
    mask = torch.tensor([[True, False, True], [False, False, False]])
    h_long, h_sessions = torch.randn(2, 12), torch.randn(2, 3, 10)
    with torch.no_grad():
        # Trained-like weights: the iFusion probes zero-initialise their denoiser output, so at
        # initialisation the sessions do not move them yet.
        for parameter in layer.parameters():
            parameter.normal_(0.0, 0.3)
        fused = layer(h_long, h_sessions, mask).fused
        assert fused.shape == (2, 64) and torch.isfinite(fused).all()
        # The output reads the long-term interest and the present sessions, not the masked ones
        # (a stub returning a constant, or ignoring the mask, fails).
        assert not torch.allclose(layer(h_long + 1.0, h_sessions, mask).fused[0], fused[0])
        moved = h_sessions.clone()
        moved[0, 0] += 1.0
        assert not torch.allclose(layer(h_long, moved, mask).fused[0], fused[0])
        masked = h_sessions.clone()
        masked[0, 1] += 1.0
        torch.testing.assert_close(layer(h_long, masked, mask).fused, fused)


def test_train_and_score_runs_one_epoch(tmp_path) -> None:
    data = SyntheticDataModule(num_users=40, num_items=60, history_len=30, train_per_user=2, long_len=20,
                               batch_size=32, cache_dir=str(tmp_path))
    data.setup("fit")
    row = train_and_score(data, "avgpool", "session_mlp", seed=0)
    assert 0.0 <= row["val_auc"] <= 1.0 and row["train_bce_last_quarter"] > 0
