"""The data-scale harness: generates a table in the documented format, prepares it in a fresh
process and reports every target of the data issue with met / not met."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from benchmarks import data_scale


@pytest.mark.slow
def test_generated_table_and_report(tmp_path, capsys, monkeypatch) -> None:
    data_scale.write_table(tmp_path / "t", rows=400, median_history=20, items=50, users=30, rows_per_shard=150)
    train = sorted((tmp_path / "t" / "train").glob("part-*.parquet"))
    assert len(train) == 3  # 360 train rows in shards of 150
    table = pq.read_table(train[0])
    assert {"user_id", "item_id", "label", "item_history", "cate_id", "cate_history"} <= set(table.column_names)
    lengths = [len(h) for h in table["item_history"].to_pylist()]
    assert 5 < sorted(lengths)[len(lengths) // 2] < 60  # median near 20

    assert data_scale.main(["--rows", "600", "--median-history", "20", "--items", "80", "--users", "40",
                            "--out", str(tmp_path / "run"), "--quick", "--batch-size", "32", "--stream-rows", "100",
                            "--json", str(tmp_path / "m.json")]) == 0
    measured = json.loads((tmp_path / "m.json").read_text())
    assert measured["rows"] == 540 + 30 + 30 and measured["prepare_rows_per_s"] > 0 and measured["disk_bytes_per_row"] > 0
    assert measured["train_chunks"] == 6 and measured["stream_rows"] == 100  # 540 train rows read 100 at a time
    printed = capsys.readouterr().out
    for key in data_scale.TARGETS:
        assert f"| {key} |" in printed
    verdicts = [line for line in printed.splitlines() if line.endswith(("| met |", "| not met |")) and not line.startswith("| measure")]
    assert len(verdicts) == len(data_scale.TARGETS)

    # --cold, in this process with the page-cache drop stubbed (it needs root): both orders timed
    # from the cache the run above built, the block shuffle with the block asked for.
    drops = []
    monkeypatch.setattr(data_scale, "drop_page_cache", lambda: drops.append(1))
    cold = data_scale.prepare(str(tmp_path / "run" / "table"), str(tmp_path / "run" / "cache"), 32, 3, cold=True,
                              block_rows=64)
    assert len(drops) == 2 and cold["shuffle_block_rows"] == 64
    assert cold["loader_cold_rows_samples_per_s"] > 0 and cold["loader_cold_blocks_samples_per_s"] > 0
