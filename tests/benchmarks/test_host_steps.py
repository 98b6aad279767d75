"""The host-steps harness: each step's options are its base chain's plus its own; the table
reads the runs file."""

from __future__ import annotations

import json

import pytest

from benchmarks import host_steps


def test_step_options_follow_the_base_chain() -> None:
    # s0 pins the concat projection to PyTorch's initialisation; s16 switches it to Xavier.
    assert host_steps.step_options("s0") == [f"{host_steps.FUSION}linear_init=torch"]
    s11 = host_steps.step_options("s11")
    assert s11[:4] == host_steps.step_options("s3")
    assert s11[-1] == f"{host_steps.HOST}linear_init=xavier"
    assert host_steps.step_options("s16") == s11 + [f"{host_steps.FUSION}linear_init=xavier"]
    # s5 builds on s1, not on s2: no session_layers option in its chain.
    assert not any("session_layers" in option for option in host_steps.step_options("s5"))
    with pytest.raises(ValueError, match=r"unknown step 's99'"):
        host_steps.step_options("s99")


def test_table_reports_mean_and_spread(tmp_path) -> None:
    rows = [{"host": "twin", "step": "s11", "seed": seed, "val_auc": val, "test_auc": val - 0.01, "train_samples_per_s": 100.0}
            for seed, val in ((0, 0.70), (1, 0.72))]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = host_steps.table(host_steps.load_runs(tmp_path / "runs.jsonl"))
    assert "| TWIN | s11 | s3 |" in text and "| 2 | 0.7100 +- 0.0141 | 0.7000 +- 0.0141 | 100 |" in text
