"""The prepared GPU check: it refuses a machine without CUDA in one line, and its table names
every part (the GPU runs themselves happen on a lent device, never in CI)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda() -> None:
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        gpu_check.main(["--skip-fit"])


def test_recipes_exist_and_the_table_has_every_part() -> None:
    for recipe in gpu_check.FIT_RECIPES.values():
        assert (gpu_check.ROOT / "recipes" / recipe).is_file(), recipe
    rows = [
        {"part": "fit bf16-mixed", "model": "TWIN + iFusion", "val_auc": 0.77, "test_auc": 0.76, "train_samples_per_s": 12345.0},
        {"part": "cost bf16 eager", "model": "TWIN + iFusion S=1, request 1x512", "ms": 1.5, "vs_concat": 1.2},
        {"part": "export parity (fp32, GPU)", "model": "TWIN + iFusion, rows", "max_abs_diff": 3e-7},
    ]
    table = gpu_check.markdown(rows, "some GPU").splitlines()
    assert table[0].startswith("GPU check on some GPU")
    assert table[4] == "| fit bf16-mixed | TWIN + iFusion | 0.7700 | 0.7600 | 12,345 |  |  |  |"
    assert table[5].endswith("| 1.500 | 1.200 |  |") and table[6].endswith("| 3.0e-07 |")
