"""Hashed ids (``id_encoding: hash``): stable across processes and batching, no vocabulary pass."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ifusion_plugin.batch import FIRST_ID, OOV_ID
from ifusion_plugin.data import TableDataModule
from ifusion_plugin.data.hashing import HashedIds, stable_hash
from ifusion_plugin.data.vocabulary import Vocabularies, Vocabulary


def test_hashes_are_the_published_functions() -> None:
    # SplitMix64 seeded with 0 first returns 0xE220A8397B1DCDAF: the integer hash is its finaliser.
    assert stable_hash(pa.array([0], pa.int32())).tolist() == [0xE220A8397B1DCDAF]
    expected = int.from_bytes(hashlib.blake2b("user-7".encode(), digest_size=8).digest(), "little")
    assert stable_hash(pa.array(["x", "user-7", None, "user-7"])).tolist()[1::2] == [expected, expected]
    with pytest.raises(TypeError, match="integers or strings"):
        stable_hash(pa.array([1.5]))


def test_hashed_ids_encode_by_bucket_and_round_trip(tmp_path) -> None:
    ids = HashedIds(7)
    values = pa.array([10, 11, None, 10, 2**40])
    encoded = ids.encode(values)
    assert len(ids) == 9 and encoded[2] == OOV_ID and encoded[0] == encoded[3]
    assert ((encoded[[0, 1, 3, 4]] >= FIRST_ID) & (encoded[[0, 1, 3, 4]] < 9)).all()
    np.testing.assert_array_equal(ids.encode(pa.chunked_array([values[:2], values[2:]])), encoded)
    saved = Vocabularies(users=ids, items=ids, cates=None, context={"city": ids}, behaviors=Vocabulary(["pv", "buy"]))
    saved.save(str(tmp_path))
    loaded = Vocabularies.load(str(tmp_path))
    assert loaded.users == ids and loaded.context["city"] == ids and len(loaded.behaviors) == 4
    with pytest.raises(ValueError, match="positive int"):
        HashedIds(0)


def _write_table(root: Path) -> Path:
    root.mkdir(parents=True)
    header = "user_id,item_id,cate_id,label,item_history,cate_history,city\n"
    (root / "train.csv").write_text(header + "u1,i1,c1,1,i2 i3,c2 c1,paris\nu2,i3,c1,0,,,lyon\n")
    (root / "valid.csv").write_text(header + "u2,i5,c2,1,i2 i3,c2 c1,lyon\n")
    (root / "test.csv").write_text(header + "u3,i7,c1,0,i1 i2 i99,c1 c2 c9,nice\n")
    return root


def test_table_with_hashed_ids(tmp_path: Path) -> None:
    root = _write_table(tmp_path / "t")
    hashed = TableDataModule(root=str(root), context_columns=["city"], id_encoding="hash", hash_buckets=1000,
                             cache_dir=str(tmp_path / "c"))
    plain = TableDataModule(root=str(root), context_columns=["city"], cache_dir=str(tmp_path / "c"))
    spec = hashed.feature_spec
    assert (spec.num_users, spec.num_items, spec.num_cates, spec.context_cardinalities) == (1002, 1002, 1002, (1002,))
    assert hashed.cache_path != plain.cache_path
    test = hashed.split("test")[:]
    buckets = HashedIds(1000)
    # "i99" and "c9" were never in train: with a vocabulary they are OOV, hashed they have a bucket.
    assert test["session_items"][0, -1, -1] == buckets.encode(pa.array(["i99"]))[0] != OOV_ID
    assert test["session_cates"][0, -1, -1] == buckets.encode(pa.array(["c9"]))[0] != OOV_ID
    assert plain.split("test")[:]["session_items"][0, -1, -1] == OOV_ID
    assert test["target_item"].tolist() == buckets.encode(pa.array(["i7"])).tolist()
    assert test["context"][:, 0].tolist() == buckets.encode(pa.array(["nice"])).tolist()
    assert hashed.vocabularies().items == buckets and hashed.vocabularies().item_categories is None
    with pytest.raises(ValueError, match=r"id_encoding must be one of \('vocabulary', 'hash'\), got 'md5'"):
        TableDataModule(root=str(root), id_encoding="md5")
    with pytest.raises(ValueError, match="exclude each other"):
        TableDataModule(root=str(root), id_encoding="hash", encoded_ids=True)


def test_requests_hash_like_training_and_need_categories(tmp_path: Path) -> None:
    from ifusion_plugin.data.requests import encode_requests

    root = _write_table(tmp_path / "t")
    module = TableDataModule(root=str(root), context_columns=["city"], id_encoding="hash", hash_buckets=1000,
                             cache_dir=str(tmp_path / "c"))
    row = {"user_id": "u3", "item_id": "i7", "cate_id": "c1", "item_history": ["i1", "i2", "i99"],
           "cate_history": ["c1", "c2", "c9"], "city": "nice"}
    encoded = encode_requests([row], module.vocabularies(), module.request_features())
    stored = module.split("test")[:]
    for name in ("user", "target_item", "target_cate", "session_items", "session_cates", "context"):
        np.testing.assert_array_equal(encoded[name], stored[name])
    with pytest.raises(ValueError, match=r"requests must give \['cate_id'\]"):
        encode_requests([{k: v for k, v in row.items() if k != "cate_id"}], module.vocabularies(), module.request_features())
