"""Bad data, one case at a time: each gives a clear error naming the file (and line or row), or
is handled as documented. Prepared-sample tables and MovieLens-1M files written here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ifusion_plugin.batch import OOV_ID, PAD_ID
from ifusion_plugin.data import MovieLens1MDataModule, TableDataModule
from ifusion_plugin.data.table import read_split_tables

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_table import _peer_like, _write_splits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_datamodules import _write_ml  # noqa: E402

GOOD = _peer_like([1, 1, 2], [10, 11, 12], [1, 0, 1], [[5, 6], [7], []])


def test_truncated_parquet_file_names_the_file(tmp_path: Path) -> None:
    root = _write_splits(tmp_path / "t", GOOD, GOOD, GOOD)
    data = (root / "train.parquet").read_bytes()
    (root / "train.parquet").write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(ValueError, match=r"train\.parquet.*(corrupted|magic bytes)"):
        read_split_tables(str(root))


def test_truncated_text_file_names_file_and_line(tmp_path: Path) -> None:
    root = str(tmp_path / "ml")
    _write_ml(root)
    path = os.path.join(root, "sequences.tsv")
    text = open(path).read()
    # The last line (line 5: header + 4 users) cut just after a separator: "5\t1,2,".
    cut = text[: text.rindex("\n", 0, len(text) - 1) + 1] + "5\t1,2,"
    open(path, "w").write(cut)
    with pytest.raises(ValueError, match=rf"{path}:5: non-integer id"):
        MovieLens1MDataModule(root=root, cache_dir=str(tmp_path / "c")).feature_spec


def test_malformed_line_is_skipped_and_counted_by_option(tmp_path: Path, caplog) -> None:
    root = str(tmp_path / "ml")
    _write_ml(root, extra_line="no tab here\n")
    data = MovieLens1MDataModule(root=root, cache_dir=str(tmp_path / "c"), on_bad_line="skip")
    with caplog.at_level("WARNING"):
        data.feature_spec
    assert "skipped 1 malformed line(s)" in caplog.text


def test_unknown_ids_map_to_oov_never_crash(tmp_path: Path) -> None:
    test = _peer_like([1, 99], [10, 999], [1, 0], [[5, 888], [777]])
    root = _write_splits(tmp_path / "t", GOOD, GOOD, test)
    data = TableDataModule(str(root), long_len=4, num_sessions=1, session_len=2, cache_dir=str(tmp_path / "c"),
                           eval_batch_size=8)
    batch = next(iter(data.test_dataloader()))
    assert batch.user[1] == OOV_ID and batch.target_item[1] == OOV_ID
    present = batch.long_items[batch.long_items != PAD_ID].tolist() + batch.session_items[batch.session_items != PAD_ID].tolist()
    assert OOV_ID in present  # 888 and 777 were never seen in train


def test_empty_histories_are_the_zero_data_case(tmp_path: Path) -> None:
    empty = _peer_like([1, 2], [10, 11], [1, 0], [[], []])
    root = _write_splits(tmp_path / "t", GOOD, empty, GOOD)
    data = TableDataModule(str(root), long_len=4, num_sessions=2, session_len=2, cache_dir=str(tmp_path / "c"))
    batch = next(iter(data.val_dataloader()))
    assert not batch.has_long.any() and not batch.session_mask.any()


def test_histories_longer_than_configured_keep_the_latest(tmp_path: Path) -> None:
    history = list(range(100, 160))  # 60 behaviours, oldest first
    long = _peer_like([1, 1], [10, 11], [1, 0], [history, history])
    root = _write_splits(tmp_path / "t", long, long, long)
    data = TableDataModule(str(root), long_len=5, num_sessions=2, session_len=3, cache_dir=str(tmp_path / "c"),
                           encoded_ids=True)
    batch = next(iter(data.test_dataloader()))
    # Sessions take the 6 latest, the long-term sequence the 5 before them; the rest is dropped.
    assert batch.session_items[0].reshape(-1).tolist() == history[-6:]
    assert batch.long_items[0].tolist() == history[-11:-6]


@pytest.mark.parametrize(
    "labels, message",
    [
        (pa.array([1.0, float("nan"), 0.0]), r"'label' must be 0 or 1; row 1 holds nan"),
        (pa.array([1, 0, 2], pa.int64()), r"'label' must be 0 or 1; row 2 holds 2"),
        (pa.array([1, -1, 0], pa.int64()), r"'label' must be 0 or 1; row 1 holds -1"),
    ],
    ids=["nan", "two", "negative"],
)
def test_labels_outside_zero_one_name_file_and_row(tmp_path: Path, labels: pa.Array, message: str) -> None:
    root = _write_splits(tmp_path / "t", GOOD.set_column(3, "label", labels), GOOD, GOOD)
    with pytest.raises(ValueError, match=message) as error:
        read_split_tables(str(root))
    assert "train.parquet" in str(error.value)


def test_nan_in_an_extra_categorical_column_is_its_own_category(tmp_path: Path) -> None:
    # Extra columns are categorical (there are no dense features): a missing value is a value of
    # its own, never a silent zero vector.
    device = pa.array(["ios", None, "web"])
    train = GOOD.append_column("device", device)
    root = _write_splits(tmp_path / "t", train, train, train)
    data = TableDataModule(str(root), long_len=4, num_sessions=1, session_len=2, context_columns=["device"],
                           cache_dir=str(tmp_path / "c"), eval_batch_size=8)
    context = next(iter(data.test_dataloader())).context[:, 0]
    assert len(set(context.tolist())) == 3 and bool((context >= 1).all())
    assert np.isfinite(context.numpy()).all()
