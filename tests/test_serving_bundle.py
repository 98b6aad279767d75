"""Raw ids in, probabilities out: the vocabularies travel with the export, requests are encoded
exactly as the training samples were, and the bundle scores like ``predict``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ifusion_plugin.batch import FIRST_ID, OOV_ID
from ifusion_plugin.cli import run as cli_run
from ifusion_plugin.data import TableDataModule, TaobaoDataModule
from ifusion_plugin.data.requests import RequestFeatures, encode_requests
from ifusion_plugin.data.sequences import SequenceOptions
from ifusion_plugin.data.vocabulary import Vocabularies, Vocabulary
from ifusion_plugin.serving_bundle import ServingBundle

from test_cli import QUICK, RECIPES, in_tmp  # noqa: F401  (in_tmp: a run in tmp_path as working directory)

TAOBAO_SLICE = Path(__file__).resolve().parent / "fixtures" / "taobao-slice"
INPUT_COLUMNS = ("user", "target_item", "target_cate", "long_items", "long_cates", "session_items", "session_cates",
                 "context", "session_behaviors")


def write_string_table(root: Path, seed: int = 0) -> Path:
    """A table dataset with string ids everywhere (users, items, categories, a context column,
    behaviour types), split files train/valid/test; test also names a user and items train never saw."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = [f"item-{k}" for k in range(40)]
    category = {item: f"cat-{k % 5}" for k, item in enumerate(items)}
    for split, rows_per_user in (("train", 6), ("valid", 1), ("test", 2)):
        rows = []
        users = [f"user-{u}" for u in range(24)] + (["user-new"] if split == "test" else [])
        for user in users:
            for _ in range(rows_per_user):
                length = int(rng.integers(0, 14))
                history = [items[int(k)] for k in rng.integers(0, 40, length)]
                target = items[int(rng.integers(0, 40))] if rng.random() > 0.1 or split != "test" else "item-new"
                rows.append({
                    "user_id": user, "item_id": target, "label": int(rng.random() < 0.5),
                    "cate_id": category.get(target, "cat-new"),
                    "item_history": history, "cate_history": [category[i] for i in history],
                    "behavior_history": [("click", "cart", "buy")[int(k)] for k in rng.integers(0, 3, length)],
                    "device": ("ios", "android", "web")[int(rng.integers(0, 3))],
                })
        pq.write_table(pa.Table.from_pylist(rows), root / f"{split}.parquet")
    return root


def table_module(root: Path, cache: Path, **options) -> TableDataModule:
    return TableDataModule(str(root), context_columns=["device"], long_len=6, num_sessions=2, session_len=3,
                           session_behaviors=["click", "cart", "buy"], long_behaviors=["click", "buy"],
                           cache_dir=str(cache), **options)


def assert_encoded_like_split(columns: dict[str, np.ndarray], module, split: str = "test") -> None:
    stored = module.split(split)[:]
    compared = [name for name in INPUT_COLUMNS if name in stored]
    assert {"user", "long_items", "session_items"} <= set(compared)
    for name in compared:
        np.testing.assert_array_equal(columns[name], stored[name], err_msg=name)


def test_vocabularies_round_trip_and_item_categories(tmp_path: Path) -> None:
    vocabularies = Vocabularies(
        users=Vocabulary(pa.array(["b", "a", "b"])),
        items=Vocabulary.from_keys(pa.array([30, 10, 20])),
        cates=Vocabulary.from_keys(["x", "y"]),
        context={"device/os": Vocabulary(["ios", "web"])},
        behaviors=Vocabulary.from_keys(["buy", "click"]),
        item_categories=Vocabularies.catalogue(pa.array([10, 20, 10, 40]), pa.array(["x", "y", "y", None])),
    )
    assert vocabularies.users.encode(pa.array(["a", "b", "zz", None])).tolist() == [2, 3, OOV_ID, OOV_ID]
    assert vocabularies.items.encode(pa.array([10, 30, 99])).tolist() == [3, 2, OOV_ID]  # the given order
    assert vocabularies.items.encode(pa.array(["20"])).tolist() == [4]  # a string request against int keys
    # The catalogue keeps an item's last category and no null one; unknown items have none.
    assert vocabularies.categories_of(pa.array([10, 20, 40, 77])).to_pylist() == ["y", "y", None, None]
    vocabularies.save(str(tmp_path / "v"))
    loaded = Vocabularies.load(str(tmp_path / "v"))
    for name in ("users", "items", "cates", "behaviors"):
        assert getattr(loaded, name).keys.equals(getattr(vocabularies, name).keys), name
    assert list(loaded.context) == ["device/os"] and loaded.context["device/os"].keys.to_pylist() == ["ios", "web"]
    assert loaded.item_categories.equals(vocabularies.item_categories)
    with pytest.raises(ValueError, match="distinct; 1 repeat"):
        Vocabulary.from_keys([1, 2, 1])
    with pytest.raises(ValueError, match="item_categories must hold each item once"):
        Vocabularies(users=vocabularies.users, items=vocabularies.items, cates=None,
                     item_categories=pa.table({"item": [1, 1], "cate": [2, 3]}))
    with pytest.raises(FileNotFoundError, match="no vocabularies.json"):
        Vocabularies.load(str(tmp_path))


def test_requests_encode_like_the_table_split(tmp_path: Path) -> None:
    root = write_string_table(tmp_path / "table")
    module = table_module(root, tmp_path / "cache")
    vocabularies, features = module.vocabularies(), module.request_features()
    assert features.context_columns == ("device",) and features.history_categories
    assert vocabularies.users.keys.type == pa.string() and len(vocabularies.items) == module.feature_spec.num_items
    test = pq.read_table(root / "test.parquet").drop_columns(["label"])
    spec = module.feature_spec
    assert_encoded_like_split(encode_requests(test, vocabularies, features, num_behaviors=spec.num_behaviors), module)
    # Without category columns the item map gives the same categories (one category per item here).
    bare = test.drop_columns(["cate_id", "cate_history"])
    assert_encoded_like_split(encode_requests(bare.to_pylist(), vocabularies, features, num_behaviors=spec.num_behaviors), module)
    # Unseen ids are OOV, as in training.
    encoded = encode_requests(test, vocabularies, features, num_behaviors=spec.num_behaviors)
    new_user = np.asarray(test["user_id"].to_pylist()) == "user-new"
    assert new_user.any() and (encoded["user"][new_user] == OOV_ID).all()
    # Nothing the model needs may be missing, and the message names it.
    with pytest.raises(ValueError, match=r"requests: missing column\(s\) \['device'\]"):
        encode_requests(test.drop_columns(["device"]), vocabularies, features, num_behaviors=spec.num_behaviors)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['behavior_history'\]"):
        encode_requests(test.drop_columns(["behavior_history"]), vocabularies, features, num_behaviors=spec.num_behaviors)
    with pytest.raises(ValueError, match=r"requests: missing required column\(s\) \['item_history'\]"):
        encode_requests(test.drop_columns(["item_history"]), vocabularies, features)
    gap = RequestFeatures(sequence=SequenceOptions(long_len=6, num_sessions=2, session_len=3, session_split="time_gap"))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['history_timestamps'\]"):
        encode_requests(bare.select(["user_id", "item_id", "item_history"]), vocabularies, gap)
    assert RequestFeatures.from_dict(json.loads(json.dumps(features.to_dict()))) == features


def _taobao_requests(root: Path, module: TaobaoDataModule) -> list[dict]:
    """The test rows of ``module`` as a server would send them: raw ids, the user's whole history
    before the test behaviour (every type, with times and types), no categories."""
    log = np.genfromtxt(root / "UserBehavior.csv", delimiter=",", dtype=None, encoding="utf-8")
    rows = sorted(range(len(log)), key=lambda r: (int(log[r][0]), int(log[r][4]), r))
    by_user: dict[int, list] = {}
    for r in rows:
        by_user.setdefault(int(log[r][0]), []).append(log[r])
    raw = module.raw_ids("test")
    requests = []
    for user, item in zip(raw["user_id"].tolist(), raw["item_id"].tolist()):
        events = by_user[user]
        last_positive = max(i for i, e in enumerate(events) if e[3] in module.positive_behaviors)
        before = events[:last_positive]
        requests.append({"user_id": user, "item_id": item, "item_history": [int(e[1]) for e in before],
                         "behavior_history": [str(e[3]) for e in before], "history_timestamps": [int(e[4]) for e in before]})
    return requests


def test_requests_encode_like_a_builtin_source(tmp_path: Path) -> None:
    module = TaobaoDataModule(root=str(TAOBAO_SLICE), cache_dir=str(tmp_path), min_train_position=1, positive_behaviors=("pv",),
                              long_behaviors=("pv",), session_behaviors=("pv", "cart", "fav", "buy"), long_len=10)
    vocabularies, features = module.vocabularies(), module.request_features()
    assert vocabularies.behaviors.keys.to_pylist() == ["buy", "cart", "fav", "pv"]
    assert features.long_behaviors == ("pv",) and features.sequence.session_split == "time_gap"
    requests = _taobao_requests(TAOBAO_SLICE, module)
    encoded = encode_requests(requests, vocabularies, features, num_behaviors=module.feature_spec.num_behaviors)
    assert_encoded_like_split(encoded, module)
    assert (encoded["session_behaviors"] > OOV_ID).any() and (encoded["long_cates"] >= FIRST_ID).any()


@pytest.mark.slow
def test_bundle_scores_raw_ids_like_predict(in_tmp: Path) -> None:
    root = write_string_table(in_tmp / "table")
    data = in_tmp / "table.yaml"
    data.write_text(json.dumps({"data": {"class_path": "ifusion_plugin.data.TableDataModule", "init_args": {
        "root": "table", "context_columns": ["device"], "long_len": 6, "num_sessions": 2, "session_len": 3,
        "session_behaviors": ["click", "cart", "buy"], "long_behaviors": ["click", "buy"], "batch_size": 16,
        "eval_batch_size": 1000, "cache_dir": "cache"}}}))
    assert cli_run(["fit", f"--config={RECIPES / 'twin.yaml'}", f"--config={data}", *QUICK]) == 0
    best = sorted(in_tmp.glob("logs/**/checkpoints/*.ckpt"))[0]
    assert cli_run(["predict", f"--ckpt_path={best}", "--predictions_path=preds.parquet"]) == 0
    assert cli_run(["export", "--ckpt", str(best), "--out_dir", "export"]) == 0
    manifest = json.loads((in_tmp / "export" / "serving.json").read_text())
    assert manifest["vocabularies"] == "vocab" and manifest["features"]["context_columns"] == ["device"]

    predicted = pq.read_table(in_tmp / "preds.parquet").to_pydict()
    requests = pq.read_table(root / "test.parquet").drop_columns(["label"]).to_pylist()
    rows = np.asarray(predicted["row"])
    assert [requests[r]["user_id"] for r in rows] == predicted["user_id"]  # string ids, in row order
    # The request form scores a user's side once against several candidates.
    mine = [r for r in rows if requests[r]["user_id"] == requests[rows[0]]["user_id"]]
    for program in ("pt2", "onnx"):
        bundle = ServingBundle.load(str(in_tmp / "export"), program=program)
        assert bundle.request_model is not None
        probs = bundle.predict([requests[r] for r in rows], batch_size=7)
        np.testing.assert_allclose(probs, np.asarray(predicted["prob"]), rtol=0, atol=1e-5, err_msg=program)
        for r in mine:
            side = {k: v for k, v in requests[r].items() if k not in ("item_id", "cate_id")}
            scored = bundle.score(side, candidates=["item-1", requests[r]["item_id"], "item-new"])
            assert scored.shape == (3,)
            np.testing.assert_allclose(scored[1], probs[list(rows).index(r)], rtol=0, atol=1e-5, err_msg=program)
            single = bundle.predict([{**side, "item_id": c} for c in ("item-1", "item-new")])
            np.testing.assert_allclose(scored[[0, 2]], single, rtol=0, atol=1e-5, err_msg=program)

    # An export without the run's config has no vocabularies, and the loader says how to get them.
    os.remove(best.parent.parent / "config.yaml")
    assert cli_run(["export", "--ckpt", str(best), "--out_dir", "bare", "--format", "pt2"]) == 0
    assert json.loads((in_tmp / "bare" / "serving.json").read_text())["vocabularies"] is None
    assert not (in_tmp / "bare" / "vocab").exists()
    with pytest.raises(ValueError, match="has no vocabularies; export again with --config"):
        ServingBundle.load(str(in_tmp / "bare"))
    assert cli_run(["export", "--ckpt", str(best), "--out_dir", "bare", "--format", "pt2", "--overwrite",
                    f"--config={data}"]) == 0
    assert ServingBundle.load(str(in_tmp / "bare")).predict(requests[:3]).shape == (3,)
