"""`python -m benchmarks.quality --quick` runs the CLI recipes, keeps every finished run, and
resumes without repeating one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def quality(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.quality", "--quick", "--out", str(out),
                           "--predictions", str(out.parent / "predictions"), "--logs", str(out.parent / "logs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_quality_quick_and_resume(tmp_path) -> None:
    out = tmp_path / "quality"
    result = quality(out)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["host"], r["fusion"], r["seed"]) for r in rows) == sorted(
        (h, f, s) for h in ("avgpool", "twin") for f in ("concat", "ifusion") for s in (0, 1)
    )
    assert all(0 <= r["test_auc"] <= 1 and r["train_samples_per_s"] > 0 for r in rows)
    # Seeds change the model: the two seeds of a cell do not give identical metrics.
    by_cell = {}
    for r in rows:
        by_cell.setdefault((r["host"], r["fusion"]), []).append(r["test_logloss"])
    assert all(a != b for a, b in by_cell.values())
    table = (out / "table.md").read_text()
    assert "| TWIN | ifusion | 2 |" in table and "+-" in table
    assert all(r["commit"] and r["command"].startswith("python -m ifusion_plugin.cli fit") for r in rows)
    assert sorted(path.name for path in (out / "configs").iterdir()) == sorted(
        f"{h}-{f}-seed{s}.yaml" for h in ("avgpool", "twin") for f in ("concat", "ifusion") for s in (0, 1))
    # The paired column: iFusion against concat of the same host, on both seeds' test rows.
    pairs = json.loads((out / "paired.json").read_text())
    assert sorted(pairs) == ["avgpool/ifusion", "twin/ifusion"]
    assert all(p["seeds"] == 2 and p["low"] <= p["diff"] <= p["high"] for p in pairs.values())
    assert "Popularity-only test AUC: 0." in table and "paired diff vs concat" in table

    # How much of each iFusion result is the generated interest: the same rows with the gate zeroed.
    contribution = subprocess.run([sys.executable, "-m", "benchmarks.fusion_contribution", "--out", str(out),
                                   "--logs", str(tmp_path / "logs"), "--replicates", "200"],
                                  cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert contribution.returncode == 0, contribution.stderr[-3000:]
    measured = json.loads((out / "contribution.json").read_text())
    assert sorted(measured) == ["avgpool", "twin"] and all(m["seeds"] == [0, 1] for m in measured.values())
    assert all(m["low"] <= m["zeroed_minus_kept"] <= m["high"] and m["mean_abs_gate"] > 0 for m in measured.values())
    assert "| TWIN | 2 |" in contribution.stdout

    # Serving knobs over the sweep's iFusion checkpoints (found under its logs): one row per
    # host x t_start, both seeds in each.
    knobs = subprocess.run([sys.executable, "-m", "benchmarks.fusion_eval_knobs", "--runs", str(out / "runs.jsonl"),
                            "--logs", str(tmp_path / "logs"), "--t-start", "10", "--threads", "1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert knobs.returncode == 0, knobs.stderr[-3000:]
    grid = [line for line in knobs.stdout.splitlines() if line.startswith(("| avgpool |", "| twin |"))]
    assert len(grid) == 4 and all("| 1 | 2 |" in line for line in grid), knobs.stdout

    # The benchmarks' one checkpoint evaluator rebuilds a run's data from the config.yaml fit
    # saved and scores its best checkpoint as the CLI's test did.
    from benchmarks.evaluation import (
        best_checkpoint,
        checkpoint_datamodule,
        evaluate,
        load_task,
        probabilities,
        split_batches,
    )

    for fusion in ("concat", "ifusion"):
        row = next(r for r in rows if (r["host"], r["fusion"], r["seed"]) == ("twin", fusion, 1))
        ckpt = best_checkpoint(tmp_path / "logs", f"twin-{fusion}-seed1")
        task, batches = load_task(ckpt), split_batches(checkpoint_datamodule(ckpt), "test")
        auc, logloss = evaluate(task, batches)
        assert (auc, logloss) == pytest.approx((row["test_auc"], row["test_logloss"]), abs=1e-5)
    # iFusion's serving settings reach the scores: with x0_hat removed they change.
    assert not np.allclose(probabilities(task, batches, generated_scale=0.0), probabilities(task, batches))
    with pytest.raises(ValueError, match="need an InterestFusion checkpoint, got ConcatFusion"):
        evaluate(load_task(best_checkpoint(tmp_path / "logs", "twin-concat-seed1")), batches, t_start=10)

    # --report rebuilds the same table from the committed raw results alone.
    report = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--report", "--out", str(out),
                             "--predictions", str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (out / "table.md").read_text().split("\n", 1)[1] == table.split("\n", 1)[1]

    # A second call finds every run done: nothing is run again, nothing is lost.
    before = (out / "runs.jsonl").read_text()
    again = quality(out)
    assert again.returncode == 0 and "test AUC" not in again.stdout.split("Data:")[0]
    assert (out / "runs.jsonl").read_text() == before


def test_against_baselines_separates_bootstrap_and_seed_evidence() -> None:
    from benchmarks.quality import against_baselines, seed_interval

    low, high = seed_interval([0.01, 0.02, 0.03])  # mean 0.02, sd 0.01, t(0.975, 2) = 4.303
    assert (low, high) == pytest.approx((0.02 - 4.303 * 0.01 / 3**0.5, 0.02 + 4.303 * 0.01 / 3**0.5), abs=1e-4)

    def pair(diff, low, high, per_seed):
        return {"diff": diff, "low": low, "high": high, "per_seed": per_seed}

    pairs = {
        # Above both in every seed: better also across seeds.
        "avgpool/ifusion": pair(0.02, 0.01, 0.03, [0.02, 0.021, 0.019]),
        "avgpool/ifusion-vs-gate": pair(0.01, 0.005, 0.015, [0.01, 0.011, 0.009]),
        # Narrow bootstrap intervals above zero, seeds disagreeing: only the bootstrap says better.
        "twin/ifusion": pair(0.005, 0.002, 0.008, [0.03, -0.02, 0.005]),
        "twin/ifusion-vs-gate": pair(0.01, 0.005, 0.015, [0.01, 0.011, 0.009]),
        # Below gate.
        "din/ifusion": pair(0.01, 0.005, 0.015, [0.01, 0.011, 0.009]),
        "din/ifusion-vs-gate": pair(-0.01, -0.015, -0.005, [-0.01, -0.011, -0.009]),
    }
    rows = {line.split(" | ")[0].strip("| "): line for line in against_baselines(["avgpool", "din", "twin"], pairs).splitlines()[2:]}
    assert rows["AvgPoolDNN"].endswith("| better, also across seeds |") and "| 3 of 3 |" in rows["AvgPoolDNN"]
    assert rows["TWIN"].endswith("| better (bootstrap); not across seeds |") and "| 2 of 3 |" in rows["TWIN"]
    assert rows["DIN"].endswith("| worse |") and "| 0 of 3 |" in rows["DIN"]

    # A sweep without gate (concat and iFusion only): gate's cells empty, the verdict against concat.
    rows = {line.split(" | ")[0].strip("| "): line for line in against_baselines(["sim", "twin"], {
        "sim/ifusion": pair(0.006, 0.003, 0.009, [0.01, -0.002, 0.01]),
        "twin/ifusion": pair(-0.001, -0.004, 0.003, [0.01, -0.01, -0.003]),
    }).splitlines()[2:]}
    assert rows["SIM"].endswith("| - | - | - | better (bootstrap); not across seeds (against concat; gate not run) |")
    assert rows["TWIN"].endswith("| within noise (against concat; gate not run) |") and "| 1 of 3 |" in rows["TWIN"]
