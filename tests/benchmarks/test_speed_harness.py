"""`python -m benchmarks.speed --quick --onnx` runs end to end and reports every row it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_speed_quick(tmp_path) -> None:
    out = tmp_path / "speed.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed", "--quick", "--onnx", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    inference = rows["inference"]
    user_level = ["concat, fusion_long=mean", "iFusion S=1, fusion_long=mean"]
    fusions = {"concat", "gate", "iFusion S=1", "iFusion S=2", "iFusion S=1 h64", *user_level}
    assert {(r["batch"], r["fusion"]) for r in inference} == {(b, f) for b in (1, 8) for f in fusions}
    assert all(r["ms"] > 0 for r in inference)
    # Each ratio is that row's time over concat's at the same batch and mode, and iFusion's
    # two-step sampling costs more than its one-step serving (it runs the denoiser twice).
    concat_ms = {(r["mode"], r["batch"]): r["ms"] for r in inference if r["fusion"] == "concat"}
    for r in inference:
        assert r["vs_concat"] == pytest.approx(r["ms"] / concat_ms[r["mode"], r["batch"]], rel=1e-9)
    ms = {(r["batch"], r["fusion"]): r["ms"] for r in inference}
    assert any(ms[b, "iFusion S=2"] > ms[b, "iFusion S=1"] for b in (1, 8))
    training = rows["training"]
    assert [r["fusion"] for r in training] == ["concat", "gate", "iFusion S=1", "iFusion S=1 h64", *user_level]
    assert all(r["samples_per_s"] > 0 and r["peak_rss_gib"] > 0.05 for r in training)
    assert "| eager | 8 | iFusion S=2 |" in result.stdout and "time per sample vs concat" in result.stdout
    # The request form: each variant in both forms, equal to its rows; with fusion_long=mean the
    # fusion layer runs once per request, so its FLOPs per candidate are a fraction of the
    # per-candidate chain's; ONNX Runtime rows for the exported programs, equal to the rows too.
    request = {(r["form"], r["fusion"]): r for r in rows["request"]}
    variants = ["concat", "gate", "iFusion S=1", "iFusion S=1 h64", *user_level]
    assert {("request", f) for f in variants} | {("rows", f) for f in variants} <= set(request)
    assert {f for form, f in request if form == "request, ONNX Runtime"} == {"concat", "iFusion S=1", *user_level}
    assert all(r["max_abs_diff_vs_rows"] < 1e-4 and r["ms"] > 0 for r in request.values())
    per_user = request["request", "iFusion S=1, fusion_long=mean"]["fusion_flops_per_sample"]
    assert per_user < request["request", "iFusion S=1"]["fusion_flops_per_sample"] / 4
