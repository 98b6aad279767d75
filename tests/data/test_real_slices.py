"""Loaders on committed slices of the real Amazon Grocery and Taobao files."""

import os

import pytest

from ifusion_plugin.data import AmazonGroceryDataModule, TaobaoDataModule

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def test_amazon_grocery_slice(tmp_path):
    dm = AmazonGroceryDataModule(root=os.path.join(FIX, "amazon-grocery-slice"), cache_dir=str(tmp_path), long_len=10)
    spec = dm.feature_spec
    users = {int(line.split("\t")[0]) for line in open(os.path.join(FIX, "amazon-grocery-slice", "interactions.tsv")).readlines()[1:]}
    assert len(dm.split("test")) == 2 * len(users) and spec.num_users == len(users) + 2
    b = next(iter(dm.test_dataloader()))
    assert b.session_items.shape[1:] == (4, 5) and set(b.label.tolist()) == {0.0, 1.0}
    assert b.session_mask.any()


def test_taobao_slice_and_behaviour_filter(tmp_path):
    root = os.path.join(FIX, "taobao-slice")
    dm = TaobaoDataModule(root=root, cache_dir=str(tmp_path), min_train_position=1)
    buys = TaobaoDataModule(root=root, cache_dir=str(tmp_path), min_train_position=1, positive_behaviors=("pv",))
    assert dm.feature_spec.num_items > buys.feature_spec.num_items >= 2
    assert dm.cache_path != buys.cache_path
    assert len(dm.split("valid")) == 10


def test_taobao_bad_line(tmp_path):
    root = tmp_path / "tb"
    root.mkdir()
    (root / "UserBehavior.csv").write_text("1,2,3,pv,100\n1,2,3,pv\n")
    with pytest.raises(ValueError, match=r"UserBehavior.csv, line 2: expected 5 fields"):
        TaobaoDataModule(root=str(root), cache_dir=str(tmp_path / "c")).feature_spec


def test_integer_logs_name_the_line_or_skip_and_count(tmp_path, caplog):
    from ifusion_plugin.data.logs import read_int_columns

    path = tmp_path / "interactions.tsv"
    path.write_text("user_id\titem_id\ttime\n1\t2\t100\n\n1\tx7\t101\n2\t3\t102\n2\t4\n")
    names = ("user_id", "item_id", "time")
    with pytest.raises(ValueError, match=r"interactions.tsv, line 5: expected 3 fields"):
        read_int_columns(str(path), "\t", names, names, header=True)
    path.write_text("user_id\titem_id\ttime\n1\t2\t100\n\n1\tx7\t101\n2\t3\t102\n")
    with pytest.raises(ValueError, match=r"interactions.tsv, line 4: expected integers in \['user_id', 'item_id', 'time'\]"):
        read_int_columns(str(path), "\t", names, names, header=True)
    with caplog.at_level("WARNING"):
        table = read_int_columns(str(path), "\t", names, names, header=True, on_bad_line="skip")
    assert table.to_pydict() == {"user_id": [1, 2], "item_id": [2, 3], "time": [100, 102]}
    assert "skipped 1 malformed line(s)" in caplog.text
    with pytest.raises(ValueError, match=r"line 1: expected the header \['user_id', 'item_id', 'time'\], got \['user_id', 'item', 'time'\]"):
        path.write_text("user_id\titem\ttime\n1\t2\t3\n")
        read_int_columns(str(path), "\t", names, names, header=True)
