"""`python -m benchmarks.ablations --quick` trains its variants through the CLI, serves the
trained checkpoints with other settings, writes the tables and plots, and resumes without
repeating a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.ablations import QUICK_TRAINED, STEPS, TRAINED, fit_command, parse_args

ROOT = Path(__file__).resolve().parents[2]


def ablations(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.ablations", "--quick", "--out", str(out), "--threads", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_variant_options_reach_the_command_line() -> None:
    args = parse_args(["--host", "din", "--out", "/tmp/x"])
    cmd = fit_command(args, "K=2, nar_mlp", 3)
    assert "--model.init_args.host.init_args.fusion.init_args.denoiser=nar_mlp" in cmd
    assert "--data.init_args.num_sessions=2" in cmd and "--data.init_args.session_len=10" in cmd
    assert cmd[cmd.index("--seed_everything") + 1] == "3" and str(ROOT / "recipes" / "din.yaml") in cmd
    skip_off = fit_command(args, "concat_skip off (the paper's literal output)", 0)
    assert "--model.init_args.host.init_args.fusion.init_args.concat_skip=false" in skip_off
    # Every figure-4b point has both injections, over the same 20 short-term behaviours.
    for k in (1, 2, 10):
        for denoiser in ("marn", "nar_mlp"):
            _, data = TRAINED[f"K={k}, {denoiser}"]
            assert data["num_sessions"] * data["session_len"] == 20


@pytest.mark.slow
def test_ablations_quick_and_resume(tmp_path) -> None:
    out = tmp_path / "ablations"
    result = ablations(out)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["fusion"] for r in rows) == sorted(QUICK_TRAINED)
    assert all(0 <= r["val_auc"] <= 1 and Path(r["checkpoint"]).exists() for r in rows)
    served = json.loads((out / "served.json").read_text())["0"]
    assert [row["steps"] for row in served["steps"]["default"]] == STEPS[:2]
    assert {"default", "schedule=linear", "consistency off"} == set(served["steps"])
    assert len(served["gamma_grid"]) == 4 and len(served["t_start"]) == 2
    assert 0 <= served["cosine"]["default"] <= 1 and 0 <= served["cosine"]["disentangle off"] <= 1
    assert served["swapped_long"]["default"]["generated"] >= 0
    text = (out / "ablations.md").read_text()
    assert "| guidance=none | 1 |" in text and "Sampling steps S" in text and "mean abs cos" in text
    for name in ("fig_components.png", "fig_steps.png", "fig_sessions.png", "fig_gamma_grid.png"):
        assert (out / name).stat().st_size > 1000

    # A second call finds every run and every served row done: nothing is run again or lost.
    before = (out / "runs.jsonl").read_text(), (out / "served.json").read_text()
    again = ablations(out)
    assert again.returncode == 0 and "val AUC" not in again.stdout.split("TWIN + iFusion on")[0]
    assert ((out / "runs.jsonl").read_text(), (out / "served.json").read_text()) == before


def test_report_only_trains_and_serves_nothing(tmp_path, monkeypatch) -> None:
    from benchmarks import ablations as module

    def no_run(*args, **kwargs):
        raise AssertionError("--report-only started a run")

    monkeypatch.setattr(module, "run_cli", no_run)
    args = parse_args(["--out", str(tmp_path), "--seeds", "0", "1", "--report-only"])
    runs = module.train(args, args.variants)
    assert runs == {} and module.serve(args, runs) == {}
    assert "| variant | seeds |" in module.trained_table(args, runs, args.variants)
