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
    with pytest.raises(ValueError, match=r"UserBehavior.csv:2: expected 5 fields"):
        TaobaoDataModule(root=str(root), cache_dir=str(tmp_path / "c")).feature_spec
