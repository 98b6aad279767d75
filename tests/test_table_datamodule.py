"""TableDataModule (prepared-sample tables as a DataModule) and the exporter's round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchmetrics.classification import BinaryAUROC

from ifusion_plugin.batch import OOV_ID, PAD_ID, CTRBatch, FeatureSpec
from ifusion_plugin.data import AmazonGroceryDataModule, CTRDataModule, SyntheticDataModule, TableDataModule
from ifusion_plugin.data.export import export_datamodule, main as export_main
from ifusion_plugin.fusion import ConcatFusion
from ifusion_plugin.hosts import AvgPoolDNN

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIELDS = ("user", "target_item", "target_cate", "long_items", "long_cates", "session_items", "session_cates", "label", "context")


def _write_csv_table(root: Path) -> Path:
    """A tiny CSV table with string ids and two context columns, one file per split."""
    root.mkdir(parents=True, exist_ok=True)
    header = "user_id,item_id,cate_id,label,item_history,cate_history,device,city\n"
    (root / "train.csv").write_text(
        header
        + "u1,i1,c1,1,i2 i3 i4 i5 i6 i7,c2 c1 c1 c2 c2 c1,ios,paris\n"
        + "u1,i9,c2,0,i2 i3 i4 i5 i6 i7,c2 c1 c1 c2 c2 c1,ios,paris\n"
        + "u2,i3,c1,1,,,android,lyon\n"
        + "u2,i4,c1,0,i8,c2,web,lyon\n"
    )
    (root / "valid.csv").write_text(header + "u2,i5,c2,1,i8 i3,c2 c1,android,lyon\n")
    (root / "test.csv").write_text(header + "u3,i7,c1,0,i1 i2 i99,c1 c2 c9,tv,nice\n")
    return root


def _compare_batches(left: CTRBatch, right: CTRBatch) -> None:
    for name in FIELDS:
        a, b = getattr(left, name), getattr(right, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), name


def _test_auc(module: CTRDataModule, spec: FeatureSpec) -> float:
    torch.manual_seed(0)
    model = AvgPoolDNN(spec, embed_dim=8, fusion=ConcatFusion, head_dims=(16,), session_feedforward_dim=16).eval()
    auc = BinaryAUROC()
    with torch.no_grad():
        for batch in module.test_dataloader():
            auc.update(torch.sigmoid(model(batch).logits), batch.label.long())
    return float(auc.compute())


def _assert_round_trip(builtin: CTRDataModule, table: TableDataModule) -> None:
    assert table.feature_spec == builtin.feature_spec
    for loader in ("val_dataloader", "test_dataloader", "train_dataloader"):
        left, right = list(getattr(builtin, loader)()), list(getattr(table, loader)())
        assert len(left) == len(right) > 0
        for a, b in zip(left, right):
            _compare_batches(a, b)
    assert _test_auc(builtin, builtin.feature_spec) == _test_auc(table, table.feature_spec)


def test_table_batches_shapes_context_and_cache_hit(tmp_path: Path) -> None:
    root = _write_csv_table(tmp_path / "table")
    kwargs = dict(context_columns=["device", "city"], long_len=3, num_sessions=2, session_len=2, batch_size=3,
                  cache_dir=str(tmp_path / "cache"))
    module = TableDataModule(str(root), **kwargs)
    spec = module.feature_spec
    assert module.cache_hit is False
    # device: ios, android, web (train) -> 3 known + pad + OOV; city: paris, lyon -> 2 + 2.
    assert spec.context_cardinalities == (5, 4)
    assert (spec.num_users, spec.num_items, spec.num_cates) == (2 + 2, 9 + 2, 2 + 2)
    batch = next(iter(module.train_dataloader()))
    assert isinstance(batch, CTRBatch) and len(batch) == 3
    assert batch.long_items.shape == (3, 3) and batch.session_items.shape == (3, 2, 2)
    assert batch.context is not None and batch.context.shape == (3, 2) and batch.context.dtype == torch.long
    first = next(iter(module.val_dataloader()))
    assert first.context.tolist() == [[2, 2]]  # android, lyon: the first known ids in sorted order
    test = next(iter(module.test_dataloader()))
    assert test.context.tolist() == [[OOV_ID, OOV_ID]]  # tv, nice never seen in train
    assert test.user.tolist() == [OOV_ID] and test.session_items[0, -1, -1].item() == OOV_ID  # i99
    train = next(iter(TableDataModule(str(root), **{**kwargs, "batch_size": 4}).val_dataloader()))
    assert train.label.dtype == torch.float32
    again = TableDataModule(str(root), **kwargs)
    assert again.feature_spec == spec and again.cache_hit is True
    _compare_batches(next(iter(again.test_dataloader())), test)
    # The model consumes the context columns.
    model = AvgPoolDNN(spec, embed_dim=4, head_dims=(8,), session_feedforward_dim=8)
    assert model(batch).logits.shape == (3,)
    # Other options -> another cache entry.
    other = TableDataModule(str(root), **{**kwargs, "context_columns": ["device"]})
    assert other.feature_spec.context_cardinalities == (5,) and other.cache_hit is False


def test_single_parquet_file_with_split_column(tmp_path: Path) -> None:
    table = pa.table(
        {
            "user_id": [1, 1, 2, 2],
            "item_id": [10, 11, 12, 10],
            "label": [1, 0, 1, 0],
            "item_history": pa.array([[3, 4], [3, 4], [], [4]], pa.list_(pa.int64())),
            "split": ["train", "train", "valid", "test"],
        }
    )
    pq.write_table(table, tmp_path / "samples.parquet")
    module = TableDataModule(str(tmp_path / "samples.parquet"), long_len=2, num_sessions=1, session_len=1,
                             cache_dir=str(tmp_path / "cache"))
    assert [len(module.split(s)) for s in ("train", "valid", "test")] == [2, 1, 1]
    batch = next(iter(module.test_dataloader()))
    assert batch.context is None and batch.target_cate.tolist() == [OOV_ID]  # no cate columns
    assert batch.session_items.tolist() == [[[4 - 3 + 2]]] and batch.long_items.tolist() == [[PAD_ID, PAD_ID]]


def test_errors_surface_from_the_datamodule(tmp_path: Path) -> None:
    root = _write_csv_table(tmp_path / "table")
    (root / "valid.csv").write_text("user_id,item_id,cate_id,label,cate_history,device,city\nu2,i5,c2,1,c2 c1,android,lyon\n")
    module = TableDataModule(str(root), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"valid\.csv: missing required column\(s\) \['item_history'\]"):
        module.feature_spec
    root2 = _write_csv_table(tmp_path / "table2")
    (root2 / "test.csv").write_text((root2 / "test.csv").read_text().replace(",city\n", ",town\n"))
    with pytest.raises(ValueError, match=r"test\.csv: context_columns names 'city'"):
        TableDataModule(str(root2), context_columns=["city"], cache_dir=str(tmp_path / "cache")).feature_spec
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TableDataModule(str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "cache")).feature_spec


def test_round_trip_synthetic_export(tmp_path: Path) -> None:
    # drift_len set explicitly: its default (num_sessions * session_len) would differ per option set.
    init = dict(num_users=40, num_items=90, num_cates=6, history_len=28, train_per_user=3, drift_len=8)
    cache = str(tmp_path / "cache")
    out = tmp_path / "export"
    export_main(["--data", "synthetic", "--out", str(out), "--max_history", "30", "--cache_dir", cache,
                 *[f"--init={k}={v}" for k, v in init.items()]])
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "test.parquet", "train.parquet", "valid.parquet"]
    written = pq.read_table(out / "test.parquet")
    assert written.column_names == ["user_id", "item_id", "cate_id", "label", "item_history", "cate_history"]
    for options in (dict(long_len=10, num_sessions=3, session_len=4),
                    dict(long_len=20, num_sessions=2, session_len=5, long_includes_short=True)):
        kwargs = dict(options, batch_size=64, cache_dir=cache)
        builtin = SyntheticDataModule(**init, **kwargs)
        table = TableDataModule(str(out), encoded_ids=True, **kwargs)
        _assert_round_trip(builtin, table)


def test_round_trip_grocery_fixture_csv(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    root = str(FIXTURES / "amazon-grocery-slice")
    out = tmp_path / "export"
    export_datamodule("amazon-grocery", str(out), root=root, fmt="csv", max_history=40, cache_dir=cache)
    kwargs = dict(long_len=12, num_sessions=3, session_len=4, session_split="chunk", batch_size=50, cache_dir=cache)
    builtin = AmazonGroceryDataModule(root=root, **kwargs)
    table = TableDataModule(str(out), encoded_ids=True, **kwargs)
    _assert_round_trip(builtin, table)
    # The same export also loads with vocabularies rebuilt from train (ids then compacted).
    plain = TableDataModule(str(out), **kwargs)
    assert len(plain.split("test")) == len(builtin.split("test"))
    assert plain.feature_spec.num_items <= builtin.feature_spec.num_items


def test_csv_bad_line_is_named_or_skipped(tmp_path: Path) -> None:
    root = _write_csv_table(tmp_path / "t")
    train = root / "train.csv"
    lines = train.read_text().splitlines()
    lines.insert(2, "u9,i9,c9,1")  # 4 fields of 8, as line 3 of the file
    train.write_text("\n".join(lines) + "\n")
    strict = TableDataModule(root=str(root), context_columns=["device", "city"], cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"train.csv, line 3: expected 8 fields separated by ',', got 4: 'u9,i9,c9,1'"):
        strict.feature_spec
    lenient = TableDataModule(root=str(root), context_columns=["device", "city"], cache_dir=str(tmp_path / "c"),
                              on_bad_line="skip")
    assert len(lenient.split("train")) == 4  # the four good rows, the bad one counted in a warning
    assert "u9" not in lenient.raw_ids("train")["user_id"].tolist()


def test_split_directories_of_shards_read_as_one_table(tmp_path: Path) -> None:
    """The layout a Spark job writes (``train/part-*.parquet`` + ``_SUCCESS``) gives the same
    samples as one file per split; shards are read in name order."""
    single = _write_csv_table(tmp_path / "single")
    sharded = tmp_path / "sharded"
    (sharded / "train").mkdir(parents=True)
    for split in ("valid", "test"):
        (sharded / f"{split}.csv").write_text((single / f"{split}.csv").read_text())
    header, *rows = (single / "train.csv").read_text().splitlines()
    for n, part in enumerate((rows[:3], rows[3:])):
        (sharded / "train" / f"part-{n:05d}.csv").write_text("\n".join([header, *part]) + "\n")
    (sharded / "train" / "_SUCCESS").write_text("")
    one = TableDataModule(root=str(single), context_columns=["device", "city"], cache_dir=str(tmp_path / "c1"))
    many = TableDataModule(root=str(sharded), context_columns=["device", "city"], cache_dir=str(tmp_path / "c2"))
    assert many.feature_spec == one.feature_spec
    for name in ("train", "valid", "test"):
        left, right = one.split(name), many.split(name)
        assert all(np.array_equal(np.asarray(left[c]), np.asarray(right[c])) for c in left.column_names)
    assert many.raw_ids("train")["user_id"].tolist() == one.raw_ids("train")["user_id"].tolist()
    # A later shard changes the cache key (each shard's size and mtime is in it).
    assert len(many._raw_files()) == 2 + 2
    (sharded / "train" / "part-00001.csv").write_text(header + "\n")
    with pytest.raises(FileNotFoundError, match="no .parquet or .csv shards"):
        empty = sharded / "valid"
        empty.mkdir()
        (sharded / "valid.csv").unlink()
        TableDataModule(root=str(sharded), cache_dir=str(tmp_path / "c3")).feature_spec


def test_parquet_splits_stream_in_batches_with_the_same_samples(tmp_path: Path, monkeypatch) -> None:
    """Parquet is read by batches of STREAM_ROWS rows (row groups of 2 here) and each encoded
    batch written before the next: the samples equal a one-batch build's, and an error in a
    later batch names its row from the start of the file."""
    import ifusion_plugin.data.table as table_module

    single = _write_csv_table(tmp_path / "csv")
    root = tmp_path / "parquet"
    root.mkdir()
    for split in ("train", "valid", "test"):
        pq.write_table(table_module._read_file(str(single / f"{split}.csv"), " "), root / f"{split}.parquet", row_group_size=2)
    whole = TableDataModule(root=str(root), context_columns=["device"], cache_dir=str(tmp_path / "c1"))
    whole.prepare_data()
    read = []
    batches = table_module._file_batches
    monkeypatch.setattr(table_module, "_file_batches", lambda *a: (read.append(t.num_rows) or t for t in batches(*a)))
    monkeypatch.setattr(table_module, "STREAM_ROWS", 2)
    monkeypatch.setattr(table_module.TrainVocabularies, "MERGE_EVERY", 2)  # the batches' distinct ids merged as they come
    streamed = TableDataModule(root=str(root), context_columns=["device"], cache_dir=str(tmp_path / "c2"))
    assert streamed.feature_spec == whole.feature_spec
    assert max(read) == 2 and len(read) > 3
    for name in ("train", "valid", "test"):
        left, right = whole.split(name)[:], streamed.split(name)[:]
        assert sorted(left) == sorted(right) and "long_items" in left
        for column in left:
            np.testing.assert_array_equal(left[column], right[column])
    assert streamed.vocabularies().item_categories.equals(whole.vocabularies().item_categories)
    train = pq.read_table(root / "train.parquet").to_pylist()
    train[-1]["label"] = 2
    pq.write_table(pa.Table.from_pylist(train), root / "train.parquet", row_group_size=2)
    with pytest.raises(ValueError, match=rf"train.parquet: column 'label' must be 0 or 1; row {len(train) - 1} holds 2"):
        TableDataModule(root=str(root), context_columns=["device"], cache_dir=str(tmp_path / "c3")).prepare_data()
    assert not list((tmp_path / "c3").glob("table-*"))  # nothing a later run would trust
