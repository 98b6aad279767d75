"""Heterogeneous behaviours: types on the session side, long-term from chosen kinds only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ifusion_plugin.batch import PAD_ID
from ifusion_plugin.data import SequenceOptions, TableDataModule, TaobaoDataModule, split_history

CHUNK = SequenceOptions(long_len=6, num_sessions=2, session_len=2)


def test_split_history_takes_sessions_and_long_from_their_own_kinds():
    items = np.arange(10, 20)
    types = np.array([2, 3, 2, 4, 2, 3, 3, 2, 4, 2])  # 2 = buy, 3 = cart, 4 = fav
    in_long = types == 2
    parts = split_history(items, items + 100, CHUNK, behaviors=types, in_long=in_long, in_sessions=np.ones(10, bool))
    # Sessions: the latest 4 behaviours of any kind, in chunks of 2, with their types.
    np.testing.assert_array_equal(parts.session_items, [[16, 17], [18, 19]])
    np.testing.assert_array_equal(parts.session_behaviors, [[3, 2], [4, 2]])
    np.testing.assert_array_equal(parts.session_cates, [[116, 117], [118, 119]])
    # Long: the buys before the earliest kept session (index 6), front-padded.
    np.testing.assert_array_equal(parts.long_items, [PAD_ID, PAD_ID, PAD_ID, 10, 12, 14])
    # Sessions from carts and favs only: the latest four of those.
    parts = split_history(items, items, CHUNK, behaviors=types, in_long=in_long, in_sessions=types != 2)
    np.testing.assert_array_equal(parts.session_items, [[13, 15], [16, 18]])
    np.testing.assert_array_equal(parts.long_items, [PAD_ID, PAD_ID, PAD_ID, PAD_ID, 10, 12])
    with pytest.raises(ValueError, match=r"in_long must have shape \(10,\)"):
        split_history(items, items, CHUNK, in_long=in_long[:3])


def _write_log(path, rows):
    path.mkdir()
    with open(path / "UserBehavior.csv", "w") as handle:
        for row in rows:
            handle.write(",".join(str(v) for v in row) + "\n")


def _log():
    """Three users, each: buys of items 100.. every 10 s with a cart and a fav in between."""
    rows, t = [], 0
    for user in (1, 2, 3):
        for k in range(8):
            item = 100 + 10 * user + k
            for kind in ("fav", "cart", "buy"):
                t += 10
                rows.append((user, item if kind == "buy" else item + 500, 7, kind, t))
    return rows


def test_taobao_format_positive_long_and_session_behaviours(tmp_path):
    _write_log(tmp_path / "log", _log())
    dm = TaobaoDataModule(root=str(tmp_path / "log"), positive_behaviors=["buy"], long_behaviors=["buy"],
                          session_behaviors=["buy", "cart", "fav"], min_train_position=0, train_per_user=3,
                          session_split="chunk", long_len=8, num_sessions=2, session_len=3, cache_dir=str(tmp_path / "c"))
    spec = dm.feature_spec
    assert spec.num_behaviors == 3 + 2  # buy, cart, fav + pad and OOV
    test = dm.split("test")[:]
    positives = test["label"] == 1
    # Every target is a buy: the positives' raw ids are buy items (below 500 + 100).
    raw = dm.raw_ids("test")
    assert (raw["item_id"][positives] < 600).all()
    # Sessions hold all three kinds with their type ids (buy 2, cart 3, fav 4, sorted names).
    behaviours = test["session_behaviors"]
    assert set(np.unique(behaviours[behaviours > 0]).tolist()) == {2, 3, 4}
    assert ((behaviours > 0) == (test["session_items"] > 0)).all()
    # The long-term sequence holds buys only: no cart/fav item (raw id >= 600) is in it.
    batch = next(iter(dm.test_dataloader()))
    assert batch.session_behaviors is not None and batch.session_behaviors.shape == batch.session_items.shape
    # Without types in the sessions' kinds list the spec still has types (every Taobao log has them).
    with pytest.raises(ValueError, match=r"session_behaviors: behaviour type\(s\) \['click'\] do not occur in .*UserBehavior.csv; its types are \['buy', 'cart', 'fav'\]"):
        TaobaoDataModule(root=str(tmp_path / "log"), positive_behaviors=["buy"], session_behaviors=["buy", "click"],
                         min_train_position=0, session_split="chunk", cache_dir=str(tmp_path / "d")).feature_spec
    with pytest.raises(ValueError, match="long_behaviors must be a non-empty list"):
        TaobaoDataModule(root=str(tmp_path / "log"), long_behaviors="buy")


def test_taobao_long_sequence_excludes_other_kinds(tmp_path):
    _write_log(tmp_path / "log", _log())
    dm = TaobaoDataModule(root=str(tmp_path / "log"), positive_behaviors=["buy"], long_behaviors=["buy"],
                          session_behaviors=["cart", "fav"], min_train_position=0, session_split="chunk",
                          long_len=20, num_sessions=2, session_len=2, long_includes_short=True, cache_dir=str(tmp_path / "c"))
    test = dm.split("test")[:]
    raw_long = set()
    # Decode through the train vocabulary: item ids sorted, from 2. The log's buys are < 600.
    items = sorted({r[1] for r in _log() if r[3] in ("buy", "cart", "fav")})
    decode = {index + 2: item for index, item in enumerate(items)}
    for row in test["long_items"]:
        raw_long.update(decode.get(int(v), -1) for v in row if v > 1)
    assert raw_long and all(item < 600 for item in raw_long)
    sessions = {decode.get(int(v), -1) for v in test["session_items"].ravel() if v > 1}
    assert sessions and all(item >= 600 for item in sessions)


def test_table_behavior_history_column(tmp_path):
    rows = []
    for split, user in (("train", 1), ("train", 2), ("valid", 1), ("test", 2)):
        rows.append({"split": split, "user_id": user, "item_id": 5, "label": 1,
                     "item_history": [1, 2, 3, 4, 5, 6], "behavior_history": ["pv", "buy", "pv", "cart", "buy", "pv"]})
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    dm = TableDataModule(root=str(tmp_path / "t.parquet"), long_len=4, num_sessions=1, session_len=3,
                         long_behaviors=["buy"], cache_dir=str(tmp_path / "c"))
    assert dm.feature_spec.num_behaviors == 3 + 2
    batch = next(iter(dm.test_dataloader()))
    # Types sorted: buy 2, cart 3, pv 4; the last three behaviours (cart, buy, pv) are the session.
    assert batch.session_behaviors[0].tolist() == [[3, 2, 4]]
    # Long: the buys before the session, i.e. item 2 only (ids: items sorted from 2, so 2 -> 3).
    assert batch.long_items[0].tolist() == [0, 0, 0, 3]
    plain = TableDataModule(root=str(tmp_path / "t.parquet"), long_len=4, num_sessions=1, session_len=3, cache_dir=str(tmp_path / "d"))
    # Without filters the long-term part holds every kind: items 1, 2, 3 (ids 2, 3, 4).
    assert next(iter(plain.test_dataloader())).long_items[0].tolist() == [0, 2, 3, 4]
    assert plain.cache_path != dm.cache_path
    bad = pd.DataFrame(rows)
    bad.at[2, "behavior_history"] = ["pv"]
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"column 'behavior_history' must have as many entries as 'item_history' in every row; row 2 has 1 vs 6"):
        TableDataModule(root=str(tmp_path / "bad.parquet"), cache_dir=str(tmp_path / "e")).feature_spec
    no_types = pd.DataFrame(rows).drop(columns=["behavior_history"])
    no_types.to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(ValueError, match="long_behaviors / session_behaviors need a 'behavior_history' column"):
        TableDataModule(root=str(tmp_path / "plain.parquet"), long_behaviors=["buy"], cache_dir=str(tmp_path / "f")).feature_spec


def test_exporter_refuses_typed_sources(tmp_path):
    from ifusion_plugin.data.export import export_datamodule

    _write_log(tmp_path / "log", _log())
    with pytest.raises(ValueError, match=r"TaobaoDataModule has behaviour types \(num_behaviors=5\)"):
        export_datamodule("taobao", str(tmp_path / "out"), root=str(tmp_path / "log"), cache_dir=str(tmp_path / "c"),
                          init_args={"positive_behaviors": ["buy"], "session_behaviors": ["buy", "cart", "fav"],
                                     "min_train_position": 0})
    assert not (tmp_path / "out" / "train.parquet").exists()
