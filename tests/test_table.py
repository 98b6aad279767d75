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
from ifusion_plugin.data.storage import Ragged
from ifusion_plugin.data.table import (
    Vocabulary,
    build_vocabularies,
    encode_table,
    find_split_files,
    iter_split,
    read_split_tables,
)
from ifusion_plugin.data.vocabulary import Vocabularies

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


@pytest.mark.parametrize("options", [
    SequenceOptions(long_len=20, num_sessions=3, session_len=4),
    SequenceOptions(long_len=7, num_sessions=3, session_len=4, long_includes_short=True),
    SequenceOptions(long_len=30, num_sessions=2, session_len=5, long_includes_short=True),
])
def test_ragged_encoding_equals_the_padded_one(options: SequenceOptions) -> None:
    # The cache's fast path slices each row's kept behaviours instead of padding them: decoded
    # (right-aligned into zeros) it must give the padded arrays exactly, on a sliced batch too.
    rng = np.random.default_rng(1)
    rows = 400
    offsets = pa.array(np.concatenate([[0], np.cumsum(rng.integers(0, 60, rows))]).astype(np.int32))
    history = rng.integers(0, 300, offsets[-1].as_py())
    table = pa.table({
        "user_id": rng.integers(0, 50, rows), "item_id": rng.integers(0, 300, rows), "label": rng.integers(0, 2, rows),
        "item_history": pa.ListArray.from_arrays(offsets, pa.array(history)),
        "cate_id": rng.integers(0, 10, rows),
        "cate_history": pa.ListArray.from_arrays(offsets, pa.array(history % 10)),
        "behavior_history": pa.ListArray.from_arrays(offsets, pa.array(rng.choice(["pv", "buy"], len(history)))),
    })
    vocab = build_vocabularies(table.slice(0, 250))  # later rows hold unseen (OOV) ids
    for batch in (table, table.slice(120, 200)):
        padded, ragged = encode_table(batch, vocab, options), encode_table(batch, vocab, options, ragged=True)
        assert list(ragged) == list(padded)
        for name, expected in padded.items():
            got = ragged[name]
            if isinstance(got, Ragged):
                width = int(np.prod(got.shape))
                got = np.array([[PAD_ID] * (width - len(row)) + row for row in got.values.to_pylist()]).reshape(expected.shape)
            np.testing.assert_array_equal(got, expected, err_msg=name)
    assert isinstance(ragged["session_behaviors"], Ragged)


def test_integer_vocabularies_look_up_densely_as_the_hash_lookup_does() -> None:
    # Integer keys in a bounded span use a dense table; it must agree with Arrow's hash lookup on
    # unseen ids, ids outside the span (both ends of int64), nulls and other integer types.
    rng = np.random.default_rng(0)
    keys = rng.integers(-50, 1000, 300)
    vocab = Vocabulary(pa.array(keys))
    values = pa.array([*rng.integers(-100, 1100, 2000).tolist(), None, 2**62, -2**63, 2**63 - 1])
    hashed = Vocabulary(pa.array(keys))
    hashed.DENSE_MIN_SPAN = hashed.DENSE_SPAN_PER_KEY = 0  # forces the hash lookup
    expected = hashed.encode(values)
    assert hashed._dense_table() is None and vocab._dense_table() is not None
    np.testing.assert_array_equal(vocab.encode(values), expected)
    small = pa.array(rng.integers(-60, 1010, 500).astype(np.int16))
    np.testing.assert_array_equal(vocab.encode(small), hashed.encode(small))
    assert (expected == OOV_ID).any() and (expected >= FIRST_ID).any()
    # uint64 keys with a value beyond int64: the dense table cannot hold it, OOV by hashing.
    unsigned = Vocabulary(pa.array(np.arange(5, 50, dtype=np.uint64)))
    assert unsigned.encode(pa.array(np.array([7, 2**64 - 1], dtype=np.uint64))).tolist() == [FIRST_ID + 2, OOV_ID]


def test_catalogue_keeps_each_items_last_category_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    # Integer items in a bounded span take a dense scatter-max; others a hash aggregation. Both
    # must keep each item's last non-null category, listed in item order.
    from ifusion_plugin.data import vocabulary as vocabulary_module

    rng = np.random.default_rng(0)
    for items in (rng.integers(-30, 500, 4000), rng.integers(0, 2**50, 3000)):
        cates = pa.array([None if c % 7 == 0 else int(c) for c in rng.integers(0, 20, len(items))])
        got = Vocabularies.catalogue(pa.array(items), cates)
        with monkeypatch.context() as patch:
            patch.setattr(vocabulary_module, "_last_positions_dense", lambda items: None)
            assert got.equals(Vocabularies.catalogue(pa.array(items), cates))
        expected: dict[int, int] = {}
        for item, cate in zip(items.tolist(), cates.to_pylist()):
            if cate is not None:
                expected[item] = cate
        assert got["item"].to_pylist() == sorted(expected)
        assert got["cate"].to_pylist() == [expected[item] for item in sorted(expected)]


@pytest.mark.parametrize("null_cates", [False, True])
def test_streamed_vocabularies_equal_the_whole_table_ones(null_cates: bool) -> None:
    # Batch by batch, the items come from each batch's catalogue when every item is paired with
    # a category (no null): the vocabularies must equal those of the whole table in one batch,
    # and the item vocabulary every distinct candidate and history item, whatever their
    # categories (items here change category between rows).
    rng = np.random.default_rng(1)
    rows = 600
    lengths = rng.integers(0, 6, rows)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    history = rng.integers(0, 400, int(lengths.sum()))
    cates = rng.integers(0, 9, int(lengths.sum())).astype(object)
    if null_cates:
        cates[::5] = None
    table = pa.table({
        "user_id": rng.integers(0, 50, rows), "item_id": rng.integers(300, 700, rows), "label": rng.integers(0, 2, rows),
        "item_history": pa.ListArray.from_arrays(offsets, pa.array(history)),
        "cate_id": rng.integers(0, 9, rows),
        "cate_history": pa.ListArray.from_arrays(offsets, pa.array(list(cates), type=pa.int64())),
    })
    streamed = build_vocabularies(table.slice(start, 70) for start in range(0, rows, 70))
    whole = build_vocabularies(table)
    expected_items = np.unique(np.concatenate([table["item_id"].to_numpy(), history]))
    assert streamed.items.keys.to_pylist() == whole.items.keys.to_pylist() == expected_items.tolist()
    assert streamed.cates.keys.equals(whole.cates.keys) and streamed.users.keys.equals(whole.users.keys)
    catalogued = streamed.item_categories["item"].to_pylist()
    assert catalogued == expected_items.tolist() if not null_cates else set(catalogued) <= set(expected_items.tolist())


def test_read_ahead_yields_in_order_and_raises_where_the_bad_batch_comes(tmp_path: Path) -> None:
    # The next batch is read in a thread: batches still arrive in file order, a bad row in the
    # second shard surfaces only after the first shard's batches, and an abandoned stream ends.
    root = tmp_path / "t"
    for split in ("train", "valid", "test"):
        (root / split).mkdir(parents=True)
    for shard, labels in enumerate(([0, 1] * 5, [1, 0, 7, 1])):
        n = len(labels)
        pq.write_table(pa.table({
            "user_id": [shard * 100 + i for i in range(n)], "item_id": list(range(n)), "label": labels,
            "item_history": [[1, 2]] * n,
        }), root / "train" / f"part-{shard}.parquet")
    for split in ("valid", "test"):
        pq.write_table(pq.read_table(root / "train" / "part-0.parquet"), root / split / "part-0.parquet")
    stream = iter_split(str(root), "train", rows=4)
    firsts = [next(stream)["user_id"][0].as_py() for _ in range(3)]
    assert firsts == [0, 4, 8]
    with pytest.raises(ValueError, match=r"part-1\.parquet.*label"):
        next(stream)
    abandoned = iter_split(str(root), "valid", rows=2)
    assert next(abandoned).num_rows == 2
    abandoned.close()  # returns: the thread's pending read is awaited, nothing hangs
