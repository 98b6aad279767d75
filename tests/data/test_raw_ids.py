"""Raw ids per sample (``CTRDataModule.raw_ids``): checked against the sources' own files.

The encoded ``user``/``target_item`` of every sample must be what the documented vocabulary rule
makes of its raw ``user_id``/``item_id``, so a raw id in the wrong row, or one replaced by its
vocabulary index, fails these tests.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ifusion_plugin.batch import FIRST_ID, OOV_ID
from ifusion_plugin.data import (
    AmazonBooksDIENDataModule,
    AmazonGroceryDataModule,
    MovieLens1MDataModule,
    SyntheticDataModule,
    TableDataModule,
)
from ifusion_plugin.data.cache import FORMAT_VERSION, RAW_ID_COLUMNS, load_or_build

GROCERY = Path(__file__).resolve().parents[1] / "fixtures" / "amazon-grocery-slice"
SPLITS = ("train", "valid", "test")


def grocery_sequences(root: Path) -> dict[int, list[int]]:
    """Raw item ids per raw user id from ``interactions.tsv``, oldest first (file order breaks ties)."""
    with open(root / "interactions.tsv", encoding="utf-8") as handle:
        rows = [(int(r["user_id"]), int(r["time"]), line, int(r["item_id"]))
                for line, r in enumerate(csv.DictReader(handle, delimiter="\t"))]
    sequences: dict[int, list[int]] = {}
    for user, _, _, item in sorted(rows):
        sequences.setdefault(user, []).append(item)
    return sequences


def _encode(keys: list, values) -> list[int]:
    """The documented vocabulary rule: known ids from 2 in sorted raw-id order, else OOV."""
    index = {key: i + FIRST_ID for i, key in enumerate(sorted(keys))}
    return [index.get(v, OOV_ID) for v in values]


def test_grocery_raw_ids_match_the_interactions_file(tmp_path: Path) -> None:
    module = AmazonGroceryDataModule(root=str(GROCERY), cache_dir=str(tmp_path), long_len=10)
    sequences = grocery_sequences(GROCERY)
    raw = {split: module.raw_ids(split) for split in SPLITS}
    samples = {split: module.split(split)[:] for split in SPLITS}
    assert module.has_raw_ids
    # Train sees the histories up to the last train position and its own negatives.
    seen = {item for seq in sequences.values() for item in seq[:-2]}
    seen |= set(raw["train"]["item_id"][samples["train"]["label"] == 0].tolist())
    for split in SPLITS:
        ids, cols = raw[split], samples[split]
        assert ids["user_id"].dtype == ids["item_id"].dtype == np.int64
        assert len(ids["user_id"]) == len(ids["item_id"]) == len(cols["label"])
        assert cols["user"].tolist() == _encode(list(sequences), ids["user_id"].tolist())
        assert cols["target_item"].tolist() == _encode(list(seen), ids["item_id"].tolist())
        positives, negatives = cols["label"] == 1, cols["label"] == 0
        for user, item in zip(ids["user_id"][negatives].tolist(), ids["item_id"][negatives].tolist()):
            assert item not in sequences[user]  # a negative is never an item the user rated
        if split != "train":
            position = {"valid": -2, "test": -1}[split]
            expected = [sequences[user][position] for user in ids["user_id"][positives].tolist()]
            assert ids["item_id"][positives].tolist() == expected
    oov = samples["test"]["target_item"] == OOV_ID
    assert oov.sum() > 0  # the fixture has test items train never saw: each keeps its own raw id
    assert set(raw["test"]["item_id"][oov].tolist()).isdisjoint(seen)


def test_synthetic_and_movielens_raw_ids(tmp_path: Path) -> None:
    synthetic = SyntheticDataModule(num_users=12, num_items=40, num_cates=5, history_len=20, long_len=6,
                                    cache_dir=str(tmp_path))
    for split in SPLITS:
        ids, cols = synthetic.raw_ids(split), synthetic.split(split)[:]
        # The generator's ids start at 0; its encoding only shifts them past padding and OOV.
        np.testing.assert_array_equal(ids["user_id"] + FIRST_ID, cols["user"])
        np.testing.assert_array_equal(ids["item_id"] + FIRST_ID, cols["target_item"])
    root = tmp_path / "ml"
    root.mkdir()
    rng = np.random.default_rng(0)
    sequences = {100 + u: rng.permutation(np.arange(500, 540))[:25 + u].tolist() for u in range(3)}
    (root / "sequences.tsv").write_text(
        "user_id\tmovie_ids\n" + "".join(f"{u}\t{','.join(map(str, s))}\n" for u, s in sequences.items()))
    (root / "movies.dat").write_text("".join(f"{m}::Movie {m}::Drama\n" for m in range(500, 540)))
    movielens = MovieLens1MDataModule(root=str(root), cache_dir=str(tmp_path), long_len=8)
    test = movielens.raw_ids("test")
    assert test["user_id"].tolist() == [u for u in sequences for _ in range(2)]
    assert test["item_id"][::2].tolist() == [s[-1] for s in sequences.values()]


def test_dien_raw_ids_are_the_strings_of_the_files(tmp_path: Path) -> None:
    root = tmp_path / "dien"
    root.mkdir()
    sep = "\x02"
    (root / "local_train_splitByUser").write_text(
        "".join(f"{i % 2}\tU{u}\tI{i}\tC0\t{sep.join(f'I{j}' for j in range(i))}\t{sep.join('C0' for _ in range(i))}\n"
                for u in range(10) for i in range(1, 4)))
    (root / "local_test_splitByUser").write_text(f"1\tU0\tI9\tC0\tI1{sep}I2\tC0{sep}C0\n0\tU99\tI1\tC0\t\t\n")
    module = AmazonBooksDIENDataModule(root=str(root), cache_dir=str(tmp_path / "c"), long_len=3, num_sessions=1,
                                       session_len=1)
    test = module.raw_ids("test")
    assert test["user_id"].tolist() == ["U0", "U99"] and test["item_id"].tolist() == ["I9", "I1"]
    assert module.split("test")[:]["target_item"].tolist()[0] == OOV_ID  # I9: OOV, raw id kept
    train = module.raw_ids("train")
    assert len(train["user_id"]) == len(module.split("train")) and all(u.startswith("U") for u in train["user_id"])


def test_table_raw_ids_keep_strings_ints_and_row_order(tmp_path: Path) -> None:
    root = tmp_path / "table"
    root.mkdir()
    header = "user_id,item_id,label,item_history\n"
    (root / "train.csv").write_text(header + "u1,i1,1,i2 i3\nu2,i3,0,i1\n")
    (root / "valid.csv").write_text(header + "u2,i2,1,i1\n")
    (root / "test.csv").write_text(header + "u3,i99,0,i1 i2\nu1,i2,1,\n")
    module = TableDataModule(str(root), long_len=2, num_sessions=1, session_len=1, cache_dir=str(tmp_path / "c"))
    test = module.raw_ids("test")
    assert sorted(test) == ["item_id", "user_id"]
    assert test["user_id"].tolist() == ["u3", "u1"] and test["item_id"].tolist() == ["i99", "i2"]
    assert module.split("test")[:]["target_item"].tolist() == [OOV_ID, FIRST_ID + 1]  # i99 unseen; i2 second
    # Integer ids of any width come back as int64, with their values.
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({
        "user_id": pa.array([7, 7, 8, 9], pa.int32()), "item_id": pa.array([70, 71, 70, 72], pa.int16()),
        "label": [1, 0, 1, 1], "item_history": pa.array([[70], [70], [], []], pa.list_(pa.int64())),
        "split": ["train", "train", "valid", "test"],
    }), ints)
    module = TableDataModule(str(ints), long_len=2, num_sessions=1, session_len=1, cache_dir=str(tmp_path / "c"))
    test = module.raw_ids("test")
    assert test["user_id"].dtype == test["item_id"].dtype == np.int64
    assert (test["user_id"].tolist(), test["item_id"].tolist()) == ([9], [72])
    assert module.raw_ids("train")["item_id"].tolist() == [70, 71]


class _NoRawIds(SyntheticDataModule):
    """A subclass whose build, like one written before raw ids existed, returns samples only."""

    def _source_name(self) -> str:
        return "synthetic-no-raw-ids"

    def _build(self):
        splits, spec = super()._build()[:2]
        return {split: {k: v for k, v in cols.items() if k not in RAW_ID_COLUMNS} for split, cols in splits.items()}, spec


def test_raw_ids_stay_out_of_the_batches_and_missing_ones_are_reported(tmp_path: Path) -> None:
    options = dict(num_users=8, num_items=30, num_cates=4, history_len=24, long_len=4, cache_dir=str(tmp_path))
    module = SyntheticDataModule(**options)
    assert FORMAT_VERSION >= 2  # caches written before raw ids existed are rebuilt
    assert not set(RAW_ID_COLUMNS) & set(module.split("train").column_names)
    assert sorted(os.listdir(os.path.join(module.cache_path, "raw_ids"))) == [f"{s}.parquet" for s in sorted(SPLITS)]
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'valid', 'test'\], got 'dev'"):
        module.raw_ids("dev")  # type: ignore[arg-type]
    bare = _NoRawIds(**options)
    assert not bare.has_raw_ids
    with pytest.raises(LookupError, match=r"_NoRawIds stored no raw ids .*\['user_id', 'item_id'\]"):
        bare.raw_ids("test")
    assert len(next(iter(bare.test_dataloader()))) > 0


def test_cache_rejects_inconsistent_raw_ids(tmp_path: Path) -> None:
    good, spec, _vocabularies = SyntheticDataModule(num_users=4, num_items=30, num_cates=4, history_len=24, long_len=4)._build()

    def build_with(split: str, **columns):
        return lambda: ({**good, split: {**good[split], **columns}}, spec)

    short = good["test"]["user_id"][:-1]
    with pytest.raises(ValueError, match=rf"split 'test': raw-id column 'user_id' must have one entry per sample, "
                                         rf"expected {len(short) + 1}, got {len(short)}"):
        load_or_build(str(tmp_path), "a", build_with("test", user_id=short), {})
    only_users = {k: v for k, v in good["valid"].items() if k != "item_id"}
    with pytest.raises(ValueError, match=r"split 'valid': raw-id columns must be given together"):
        load_or_build(str(tmp_path), "b", lambda: ({**good, "valid": only_users}, spec), {})
    no_train = {k: v for k, v in good["train"].items() if k not in RAW_ID_COLUMNS}
    with pytest.raises(ValueError, match=r"raw ids must be given for every split or none"):
        load_or_build(str(tmp_path), "c", lambda: ({**good, "train": no_train}, spec), {})
    assert os.listdir(tmp_path) == []  # nothing half-written is left behind
