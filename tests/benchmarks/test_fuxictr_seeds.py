"""The FuxiCTR seed harness's own parts (FuxiCTR itself is not installed in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.fuxictr_seeds import prepare_longctr, report


def _split(tmp_path: Path) -> Path:
    rows = {
        "train": [(1, 5, 2, 1, [3, 4], [1, 2]), (1, 6, 3, 0, [3, 4], [1, 2])],
        "valid": [(1, 7, 1, 1, [3, 4, 5], [1, 2, 2])],
        "test": [(2, 4, 2, 0, [], [])],
    }
    root = tmp_path / "split"
    root.mkdir()
    for name, items in rows.items():
        pd.DataFrame(items, columns=["user_id", "item_id", "cate_id", "label", "item_history", "cate_history"]).to_parquet(
            root / f"{name}.parquet")
    return root


def test_prepare_longctr_keeps_every_sample_history_and_category(tmp_path: Path) -> None:
    meta = prepare_longctr(_split(tmp_path), tmp_path / "work")
    assert meta == {"max_user_id": 2, "max_item_id": 7, "max_cate_id": 3, "samples": 4}
    work = tmp_path / "work"
    # One user_info row per sample, indexed by the global row number over the three splits.
    users = pd.read_parquet(work / "user_info.parquet")
    assert [list(s) for s in users["full_item_seq"]] == [[3, 4], [3, 4], [3, 4, 5], []]
    valid = pd.read_parquet(work / "valid.parquet")
    assert valid.to_dict("records") == [{"user_index": 2, "item_index": 7, "seq_len": 3, "user_id": 1, "label": 1}]
    # Row k of item_info is item k with its category (history or target), row 0 the padding.
    items = pd.read_parquet(work / "item_info.parquet")
    assert items["item_id"].tolist() == list(range(8))
    assert items["cate_id"].tolist() == [0, 0, 0, 1, 2, 2, 3, 1]
    # A second call reuses the converted data.
    assert prepare_longctr(tmp_path / "missing", work) == meta


def test_prepare_longctr_refuses_item_id_zero(tmp_path: Path) -> None:
    root = _split(tmp_path)
    pd.DataFrame([(1, 0, 2, 1, [3], [1])], columns=["user_id", "item_id", "cate_id", "label", "item_history",
                                                     "cate_history"]).to_parquet(root / "test.parquet")
    with pytest.raises(ValueError, match="item id 0 occurs in the split"):
        prepare_longctr(root, tmp_path / "work")


def test_report_summarises_seeds_against_the_published_run(tmp_path: Path) -> None:
    runs = [{"model": "TWIN", "seed": seed, "val_auc": val, "test_auc": test, "test_gauc": test - 0.01,
             "test_logloss": 0.6, "train_samples_per_s": 1000.0}
            for seed, val, test in ((2026, 0.72, 0.71), (0, 0.74, 0.73), (1, 0.76, 0.75))]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    text = report(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| TWIN"))
    # mean 0.73, sample std 0.02; published 0.7349 -> z = +0.25; seed 2026's own run beside it.
    assert "| 3 (0, 1, 2026) | 0.7400 +- 0.0200 |" in row and "| 0.7300 +- 0.0200 | 0.7100-0.7500 |" in row
    assert "| 0.7432 / 0.7349 | 0.7200 / 0.7100 | +0.25 |" in row
    assert "SIM" not in [line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("| ")]
    assert (tmp_path / "table.md").read_text() == text
