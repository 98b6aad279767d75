"""The plain-PyTorch example runs end to end and prints both AUCs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "replace_concat.py"


@pytest.mark.slow
def test_replace_concat_example_prints_both_aucs():
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300, check=True)
    aucs = {}
    for name in ("ConcatFusion", "InterestFusion"):
        match = re.search(rf"{name}\s+test AUC: ([0-9.]+)", result.stdout)
        assert match, result.stdout
        aucs[name] = float(match.group(1))
    # Both models learn the planted signal (chance is 0.5).
    assert all(0.55 < auc <= 1.0 for auc in aucs.values()), aucs
