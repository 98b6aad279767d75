"""The prepared-sample table format: reading, validation, vocabularies and encoding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ifusion_plugin.batch import FIRST_ID, OOV_ID, PAD_ID
from ifusion_plugin.data.sequences import SequenceOptions
from ifusion_plugin.data.table import (
    Vocabulary,
    build_vocabularies,
    encode_table,
    find_split_files,
    read_split_tables,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
OPTIONS = SequenceOptions(long_len=4, num_sessions=2, session_len=2)


def _peer_like(users: list[int], items: list[int], labels: list[int], histories: list[list[int]]) -> pa.Table:
    """A table with the exact schema of ../shared/benchmarks/ml1m_peer_split.py."""
    list_t = pa.list_(pa.int32())
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "item_id": pa.array(items, pa.int64()),
            "cate_id": pa.array([i % 3 + 1 for i in items], pa.int64()),
            "label": pa.array(labels, pa.int64()),
            "item_history": pa.array(histories, list_t),
            "cate_history": pa.array([[h % 3 + 1 for h in hist] for hist in histories], list_t),
        }
    )


def _write_splits(root: Path, train: pa.Table, valid: pa.Table, test: pa.Table) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, table in (("train", train), ("valid", valid), ("test", test)):
        pq.write_table(table, root / f"{name}.parquet")
    return root


@pytest.fixture
def peer_like_root(tmp_path: Path) -> Path:
    train = _peer_like([1, 1, 2], [10, 11, 12], [1, 0, 1], [[5, 6, 7, 8, 9, 10], [5, 6, 7], []])
    valid = _peer_like([1], [13], [0], [[5, 6, 99]])
    test = _peer_like([3], [10], [1], [[6]])
    return _write_splits(tmp_path / "table", train, valid, test)


def test_separate_files_load_and_encode(peer_like_root: Path) -> None:
    tables = read_split_tables(str(peer_like_root))
    assert {k: v.num_rows for k, v in tables.items()} == {"train": 3, "valid": 1, "test": 1}
    vocab = build_vocabularies(tables["train"])
    # items: candidates 10,11,12 and history 5..10 -> {5,...,12} = 8 known ids
    assert len(vocab.items) == 8 + FIRST_ID
    cols = encode_table(tables["train"], vocab, OPTIONS)
    assert cols["long_items"].shape == (3, 4) and cols["session_items"].shape == (3, 2, 2)
    # Row 0: history 5..10, sessions = last 4 in chunks of 2, long = 5, 6 padded at the front.
    index = {raw: i + FIRST_ID for i, raw in enumerate(range(5, 13))}
    assert cols["session_items"][0].tolist() == [[index[7], index[8]], [index[9], index[10]]]
    assert cols["long_items"][0].tolist() == [PAD_ID, PAD_ID, index[5], index[6]]
    # Row 2 has an empty history: the zero-data case is legal.
    assert (cols["long_items"][2] == PAD_ID).all() and (cols["session_items"][2] == PAD_ID).all()
    assert cols["label"].tolist() == [1.0, 0.0, 1.0]


def test_unseen_ids_map_to_oov(peer_like_root: Path) -> None:
    tables = read_split_tables(str(peer_like_root))
    vocab = build_vocabularies(tables["train"])
    valid = encode_table(tables["valid"], vocab, OPTIONS)
    # item 99 in the history and item 13 as candidate never occur in train.
    assert valid["target_item"].tolist() == [OOV_ID]
    assert valid["session_items"][0, 1, 1] == OOV_ID
    test = encode_table(tables["test"], vocab, OPTIONS)
    assert test["user"].tolist() == [OOV_ID]  # user 3 is not in train


def test_string_ids_csv_single_file_with_split_column(tmp_path: Path) -> None:
    path = tmp_path / "samples.csv"
    path.write_text(
        "user_id,item_id,label,item_history,split,device\n"
        "alice,book,1,pen cup book,train,ios\n"
        "bob,pen,0,,train,android\n"
        "alice,cup,1,pen,valid,ios\n"
        "carol,lamp,0,lamp book,test,web\n"
    )
    tables = read_split_tables(str(path))
    assert [tables[s].num_rows for s in ("train", "valid", "test")] == [2, 1, 1]
    vocab = build_vocabularies(tables["train"], context_columns=["device"])
    cols = encode_table(tables["test"], vocab, OPTIONS, context_columns=["device"])
    assert cols["context"].shape == (1, 1) and cols["context"][0, 0] == OOV_ID  # 'web' unseen
    assert cols["target_item"][0] == OOV_ID  # 'lamp' unseen
    train = encode_table(tables["train"], vocab, OPTIONS, context_columns=["device"])
    assert (train["session_items"][1] == PAD_ID).all()  # empty CSV history
    assert (train["target_cate"] == OOV_ID).all()  # no category column


def test_time_gap_sessions_use_history_timestamps(tmp_path: Path) -> None:
    table = pa.table(
        {
            "user_id": [1],
            "item_id": [3],
            "label": [1],
            "item_history": [[1, 2, 3, 4]],
            "history_timestamps": [[0, 10, 1000, 1010]],
        }
    )
    _write_splits(tmp_path / "t", table, table, table)
    tables = read_split_tables(str(tmp_path / "t"))
    vocab = build_vocabularies(tables["train"])
    options = SequenceOptions(long_len=4, num_sessions=1, session_len=4, session_split="time_gap", session_gap_seconds=100)
    cols = encode_table(tables["train"], vocab, options)
    ids = vocab.items.encode(pa.array([1, 2, 3, 4]))
    assert cols["session_items"][0, 0].tolist() == [PAD_ID, PAD_ID, ids[2], ids[3]]
    assert cols["long_items"][0].tolist() == [PAD_ID, PAD_ID, ids[0], ids[1]]
    with pytest.raises(ValueError, match="history_timestamps"):
        encode_table(tables["train"].drop(["history_timestamps"]), vocab, options)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.drop(["label"]), r"missing required column\(s\) \['label'\]"),
        (lambda t: t.set_column(3, "label", pa.array([1, 0, 2], pa.int64())), r"'label' must be 0 or 1; row 2 holds 2"),
        (lambda t: t.set_column(3, "label", pa.array(["1", "0", "1"])), r"'label' must be 0/1 numbers"),
        (lambda t: t.set_column(4, "item_history", pa.array(["5 6", "7", ""])), r"'item_history' must be a list column"),
        (
            lambda t: t.set_column(4, "item_history", pa.array([[5], None, []], pa.list_(pa.int32()))),
            r"'item_history' is null at row 1",
        ),
        (lambda t: t.set_column(1, "item_id", pa.array([1.5, 2.0, 3.0])), r"'item_id' must hold integers or strings"),
        (
            lambda t: t.set_column(5, "cate_history", pa.array([[1], [], []], pa.list_(pa.int32()))),
            r"'cate_history' must have as many entries as 'item_history'.*row 0",
        ),
    ],
)
def test_validation_errors_name_file_column_and_row(tmp_path: Path, mutate, message: str) -> None:
    good = _peer_like([1, 1, 2], [10, 11, 12], [1, 0, 1], [[5, 6], [7], []])
    bad = mutate(good)
    root = _write_splits(tmp_path / "bad", bad, good, good)
    with pytest.raises(ValueError, match=message) as error:
        read_split_tables(str(root))
    assert "train.parquet" in str(error.value)


def test_missing_files_and_bad_split_values(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_split_files(str(tmp_path / "nowhere"))
    (tmp_path / "partial").mkdir()
    pq.write_table(_peer_like([1], [2], [1], [[]]), tmp_path / "partial" / "train.parquet")
    pq.write_table(_peer_like([1], [2], [1], [[]]), tmp_path / "partial" / "test.parquet")
    with pytest.raises(FileNotFoundError, match=r"missing \['valid'\]"):
        find_split_files(str(tmp_path / "partial"))
    single = _peer_like([1], [2], [1], [[]]).append_column("split", pa.array(["training"]))
    pq.write_table(single, tmp_path / "one.parquet")
    with pytest.raises(ValueError, match=r"'split' must hold train/valid/test.*'training'"):
        read_split_tables(str(tmp_path / "one.parquet"))


def test_context_column_must_exist(peer_like_root: Path) -> None:
    tables = read_split_tables(str(peer_like_root))
    with pytest.raises(ValueError, match="context_columns names 'age'"):
        build_vocabularies(tables["train"], context_columns=["age"])


def test_vocabulary_is_independent_of_row_order() -> None:
    a = Vocabulary(pa.array([5, 3, 9, 3]))
    b = Vocabulary(pa.array([9, 3, 5]))
    probe = pa.array([3, 5, 9, 42])
    assert a.encode(probe).tolist() == b.encode(probe).tolist() == [2, 3, 4, OOV_ID]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "benchmarks" / "ml1m_peer_split.py").exists(), reason="needs ../shared beside the repo")
def test_peer_split_loads_as_written(tmp_path: Path) -> None:
    """The tables of ../shared/benchmarks/ml1m_peer_split.py load with no conversion step."""
    out = tmp_path / "peer"
    subprocess.run(
        [sys.executable, str(SHARED / "benchmarks" / "ml1m_peer_split.py"), "--out", str(out), "--train_per_user", "1"],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    tables = read_split_tables(str(out))
    assert tables["valid"].num_rows == tables["test"].num_rows == 12_080
    vocab = build_vocabularies(tables["train"])
    cols = encode_table(tables["test"], vocab, SequenceOptions(long_len=50, num_sessions=4, session_len=5))
    assert set(np.unique(cols["label"]).tolist()) == {0.0, 1.0}
    assert (cols["session_items"][:, -1] != PAD_ID).any(axis=-1).all()  # every test row has a history
