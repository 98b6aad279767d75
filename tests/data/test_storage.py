"""The compact split files: lossless for any int array, ragged on disk, read back by index."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from ifusion_plugin.data.storage import Ragged, SplitWriter, open_split


def _columns(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    lengths = rng.integers(0, 9, rows)
    long_items = np.where(np.arange(8)[None, :] >= 8 - lengths[:, None], rng.integers(1, 50, (rows, 8)), 0)
    long_items[::7, -3] = 0  # an interior zero: kept exactly
    sessions = rng.integers(0, 4, (rows, 3, 2))  # zeros anywhere
    return {"user": rng.integers(2, 40, rows), "long_items": long_items, "session_items": sessions,
            "label": rng.integers(0, 2, rows).astype(np.float32)}


def test_chunks_round_trip_exactly_in_any_order(tmp_path) -> None:
    rng = np.random.default_rng(0)
    chunks = [_columns(rng, n) for n in (50, 0, 37)]
    writer = SplitWriter(str(tmp_path / "s.arrow"))
    for chunk in chunks:
        writer.write(chunk)
    split = open_split(str(tmp_path / "s.arrow"), writer.close())
    whole = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
    assert len(split) == 87 and split.column_names == list(whole)
    order = rng.permutation(87)[:40].tolist() + [3, 3, 86]
    got = split[order]
    for name, values in whole.items():
        np.testing.assert_array_equal(got[name], values[order])
        assert got[name].dtype == (np.float32 if name == "label" else np.int64)
    np.testing.assert_array_equal(split["long_items"], whole["long_items"])
    np.testing.assert_array_equal(split[-1]["session_items"], whole["session_items"][-1])
    assert list(split.select_columns(["user"])[:5]) == ["user"]


def test_histories_cost_their_length_not_the_padding(tmp_path) -> None:
    rows, width = 1000, 200
    items = np.zeros((rows, width), dtype=np.int64)
    items[:, -10:] = 7  # ten behaviours in a 200-wide history
    writer = SplitWriter(str(tmp_path / "s.arrow"))
    writer.write({"long_items": items, "user": np.arange(rows)})
    writer.close()
    # 10 int32 values and one int32 offset per row, plus the int32 user: far below 200 int64s.
    assert os.path.getsize(tmp_path / "s.arrow") < rows * (10 * 4 + 4 + 4) * 1.2


def test_ids_beyond_int32_stay_exact_and_chunks_must_agree(tmp_path) -> None:
    writer = SplitWriter(str(tmp_path / "s.arrow"))
    writer.write({"user": np.array([2, 2**40])})
    with pytest.raises(ValueError, match="differ from the first chunk"):
        writer.write({"user": np.array([2]), "label": np.array([1.0])})
    split = open_split(str(tmp_path / "s.arrow"), writer.close())
    assert split[:]["user"].tolist() == [2, 2**40]
    writer = SplitWriter(str(tmp_path / "t.arrow"))
    with pytest.raises(ValueError, match="outside int32"):
        writer.write({"long_items": np.array([[1, 2**40]])})
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        split[np.array([5])]


def test_ragged_columns_are_stored_as_given_and_checked(tmp_path) -> None:
    # A source holding rows without their padding hands them over as Ragged: the file equals
    # the one written from the padded arrays, and a mix of both forms is one split.
    rng = np.random.default_rng(0)
    padded = _columns(rng, 60)
    trimmed = [row[np.argmax(row != 0):].tolist() if row.any() else [] for row in padded["long_items"]]
    ragged = Ragged(pa.array(trimmed, type=pa.list_(pa.int32())), (8,))
    writer = SplitWriter(str(tmp_path / "r.arrow"))
    writer.write({**padded, "long_items": ragged})
    writer.write(padded)
    split = open_split(str(tmp_path / "r.arrow"), writer.close())
    np.testing.assert_array_equal(split["long_items"], np.concatenate([padded["long_items"]] * 2))
    with pytest.raises(ValueError, match="a row of 9 values, more than its shape"):
        SplitWriter(str(tmp_path / "s.arrow")).write({"long_items": Ragged(pa.array([[1] * 9], type=pa.list_(pa.int32())), (2, 4))})
    with pytest.raises(ValueError, match="must be list<int32>, got list<item: int64>"):
        SplitWriter(str(tmp_path / "s.arrow")).write({"long_items": Ragged(pa.array([[1]]), (8,))})
    with pytest.raises(ValueError, match="non-empty shape"):
        Ragged(pa.array([[1]], type=pa.list_(pa.int32())), ())


def test_many_chunks_are_gathered_from_the_whole_file_at_once(tmp_path) -> None:
    """A split of many chunks (what a 20M-row build writes) is read through one view of the file
    mapping per type; the batches equal the per-chunk path's, wide ids and a sliced ragged chunk
    included."""
    from ifusion_plugin.data.storage import StoredSplit

    rng = np.random.default_rng(1)
    chunks = [_columns(rng, n) for n in (30, 0, 17, 25, 1, 40)]
    for chunk in chunks:
        chunk["wide"] = rng.integers(2, 50, len(chunk["user"])) + 2**40
    trimmed = [row[np.argmax(row != 0):].tolist() if row.any() else [] for row in chunks[3]["long_items"]]
    # A chunk whose ragged column is a slice of a longer array: offsets not starting at zero.
    longer = pa.array([[5, 6]] * 4 + trimmed, type=pa.list_(pa.int32()))
    writer = SplitWriter(str(tmp_path / "m.arrow"))
    for i, chunk in enumerate(chunks):
        writer.write({**chunk, "long_items": Ragged(longer.slice(4), (8,))} if i == 3 else chunk)
    shapes = writer.close()
    split = open_split(str(tmp_path / "m.arrow"), shapes)
    assert set(split._file) == set(shapes)  # every column takes the whole-file path
    per_chunk = StoredSplit(split.table, shapes)  # no mapping: the per-chunk path
    assert per_chunk._file == {}
    whole = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
    order = np.concatenate([rng.permutation(len(split)), [0, 0, len(split) - 1]])
    got, reference = split[order], per_chunk[order]
    for name, values in whole.items():
        np.testing.assert_array_equal(got[name], values[order])
        np.testing.assert_array_equal(reference[name], values[order])
        assert got[name].dtype == reference[name].dtype
    assert set(split.select_columns(["wide", "long_items"])._file) == {"wide", "long_items"}
