"""Protocol, cache and loader tests of ifusion_plugin.data (small files written here)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ifusion_plugin.batch import OOV_ID, PAD_ID, CTRBatch
from ifusion_plugin.data import MovieLens1MDataModule, SequenceOptions, SyntheticDataModule, build_ctr_samples, split_history
from ifusion_plugin.data.cache import COMPLETE_MARKER

OPTS = SequenceOptions(long_len=6, num_sessions=2, session_len=2)


def _seqs():
    rng = np.random.default_rng(3)
    users = list(range(10, 16))
    seqs = [rng.permutation(np.arange(100, 160))[: 25 + 3 * i] for i in range(6)]
    cate_of = {i: i % 7 for i in range(100, 160)}
    return users, seqs, cate_of


def test_split_sizes_and_negatives_never_rated():
    users, seqs, cate_of = _seqs()
    out, spec, _vocabularies = build_ctr_samples(users, seqs, cate_of, OPTS, seed=0, train_per_user=3, min_train_position=20)
    # per user 3 train positions (n-3 >= 22), 1 valid, 1 test; each a positive and a negative
    assert len(out["train"]["label"]) == 6 * 3 * 2
    assert len(out["valid"]["label"]) == len(out["test"]["label"]) == 12
    assert out["test"]["label"].tolist() == [1, 0] * 6
    assert out["train"]["long_items"].shape == (36, 6) and out["train"]["session_items"].shape == (36, 2, 2)
    # every one of the 60 items is seen in train histories, so id = rank in sorted raw ids + 2
    assert spec.num_items == 60 + 2
    for split in ("train", "valid", "test"):
        cols = out[split]
        for row in np.flatnonzero(cols["label"] == 0):
            raw_neg = cols["target_item"][row] - 2 + 100
            assert cols["user"][row - 1] == cols["user"][row]  # positive then negative
            assert raw_neg not in set(seqs[cols["user"][row] - 2].tolist())


def test_no_test_item_in_train_histories_and_determinism():
    users, seqs, cate_of = _seqs()
    opts = SequenceOptions(long_len=40, num_sessions=2, session_len=2)
    out, _, _vocabularies = build_ctr_samples(users, seqs, cate_of, opts, seed=0, train_per_user=3)
    out2, _, _vocabularies = build_ctr_samples(users, seqs, cate_of, opts, seed=0, train_per_user=3)
    out3, _, _vocabularies = build_ctr_samples(users, seqs, cate_of, opts, seed=1, train_per_user=3)
    for k in out["train"]:
        np.testing.assert_array_equal(out["train"][k], out2["train"][k])
    assert not np.array_equal(out["train"]["target_item"], out3["train"]["target_item"])
    test_pos = out["test"]["target_item"][out["test"]["label"] == 1]
    test_users = out["test"]["user"][out["test"]["label"] == 1]
    tr = out["train"]
    for u, item in zip(test_users, test_pos):
        rows = tr["user"] == u
        hist = np.concatenate([tr["long_items"][rows].ravel(), tr["session_items"][rows].ravel()])
        assert item not in hist
        assert item not in tr["target_item"][rows & (tr["label"] == 1)]


def test_split_history_chunk_timegap_short_and_overlap():
    items = np.arange(2, 12)
    cates = items + 100
    h = split_history(items, cates, SequenceOptions(long_len=4, num_sessions=2, session_len=3))
    assert h.session_items.tolist() == [[6, 7, 8], [9, 10, 11]]
    assert h.long_items.tolist() == [2, 3, 4, 5]
    assert h.session_cates[1, 2] == 111
    short = split_history(items[:4], cates[:4], SequenceOptions(long_len=3, num_sessions=2, session_len=3))
    assert short.session_items.tolist() == [[PAD_ID, PAD_ID, 2], [3, 4, 5]]
    assert short.long_items.tolist() == [PAD_ID] * 3
    overlap = split_history(items, cates, SequenceOptions(long_len=3, num_sessions=1, session_len=2, long_includes_short=True))
    assert overlap.long_items.tolist() == [9, 10, 11]
    times = np.array([0, 1, 2, 100, 101, 300, 301, 302, 303, 304])
    tg = split_history(items, cates, SequenceOptions(long_len=5, num_sessions=2, session_len=3, session_split="time_gap", session_gap_seconds=50), times)
    assert tg.session_items.tolist() == [[PAD_ID, 5, 6], [9, 10, 11]]
    assert tg.long_items.tolist() == [PAD_ID, PAD_ID, 2, 3, 4]
    with pytest.raises(ValueError, match="times is required"):
        split_history(items, cates, SequenceOptions(session_split="time_gap"))


def _write_ml(root, extra_line=""):
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(os.path.join(root, "sequences.tsv"), "w") as f:
        f.write("user_id\tmovie_ids\n")
        for u in range(1, 5):
            f.write(f"{u}\t{','.join(str(x) for x in rng.permutation(np.arange(1, 41))[:24 + u])}\n")
        f.write(extra_line)
    with open(os.path.join(root, "movies.dat"), "w") as f:
        for m in range(1, 41):
            f.write(f"{m}::Movie {m} (1999)::{['Drama', 'Comedy|Drama', 'Action'][m % 3]}\n")


def test_movielens_loader_cache_hit_and_crash_leftover(tmp_path):
    root, cache = str(tmp_path / "ml"), str(tmp_path / "cache")
    _write_ml(root)
    dm = MovieLens1MDataModule(root=root, cache_dir=cache, long_len=8, batch_size=4)
    spec = dm.feature_spec
    assert dm.cache_hit is False and spec.num_cates == 3 + 2
    sizes = {s: len(dm.split(s)) for s in ("train", "valid", "test")}
    # n = 25..28: train positions 20..n-3 -> 3,4,5,6 positions; x2 samples
    assert sizes == {"train": 2 * (3 + 4 + 5 + 6), "valid": 8, "test": 8}
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, CTRBatch) and batch.long_items.shape == (4, 8) and batch.session_items.shape == (4, 4, 5)
    assert sum(len(b) for b in dm.val_dataloader()) == 8
    # a crash of another build left an unmarked temp dir and an unmarked final dir: ignored
    os.makedirs(os.path.join(cache, ".tmp-garbage"))
    dm2 = MovieLens1MDataModule(root=root, cache_dir=cache, long_len=8, batch_size=4)
    dm2.feature_spec
    assert dm2.cache_hit is True and dm2.cache_path == dm.cache_path
    assert os.path.isdir(os.path.join(cache, ".tmp-garbage"))  # never deletes others' dirs
    os.remove(os.path.join(dm.cache_path, COMPLETE_MARKER))  # half-written: must rebuild
    dm3 = MovieLens1MDataModule(root=root, cache_dir=cache, long_len=8, batch_size=4)
    dm3.feature_spec
    assert dm3.cache_hit is False and os.path.exists(os.path.join(dm3.cache_path, COMPLETE_MARKER))
    dm4 = MovieLens1MDataModule(root=root, cache_dir=cache, long_len=9)
    dm4.feature_spec
    assert dm4.cache_hit is False and dm4.cache_path != dm.cache_path and os.path.isdir(dm.cache_path)


def test_movielens_bad_line_error_and_skip(tmp_path, caplog):
    root = str(tmp_path / "ml")
    _write_ml(root, extra_line="7\t1,x,3\n")
    path = os.path.join(root, "sequences.tsv")
    with pytest.raises(ValueError, match=rf"{path}:6: non-integer id"):
        MovieLens1MDataModule(root=root, cache_dir=str(tmp_path / "c")).feature_spec
    dm = MovieLens1MDataModule(root=root, cache_dir=str(tmp_path / "c"), on_bad_line="skip")
    with caplog.at_level("WARNING"):
        dm.feature_spec
    assert f"skipped 1 malformed line(s) in {path}" in caplog.text
    os.remove(os.path.join(root, "movies.dat"))
    with pytest.raises(FileNotFoundError, match=r"expected file 'movies.dat' at .*ml/movies.dat"):
        MovieLens1MDataModule(root=root, cache_dir=str(tmp_path / "c")).feature_spec


def test_synthetic_deterministic_shuffled_and_signal(tmp_path):
    kw = dict(num_users=60, num_items=80, num_cates=8, history_len=30, long_len=10, batch_size=16)
    a = SyntheticDataModule(cache_dir=str(tmp_path / "a"), **kw)
    b = SyntheticDataModule(cache_dir=str(tmp_path / "b"), **kw)
    ba, bb = next(iter(a.train_dataloader())), next(iter(b.train_dataloader()))
    assert a.feature_spec == b.feature_spec
    assert np.array_equal(ba.target_item.numpy(), bb.target_item.numpy())
    tr = a.split("train")[:]
    # shuffled: the first batch is not the first 16 rows
    assert not np.array_equal(ba.target_item.numpy(), tr["target_item"][:16])
    # planted signal: a positive's category appears in its history more often than a negative's
    pos, neg = tr["label"] == 1, tr["label"] == 0
    hist = np.concatenate([tr["long_cates"], tr["session_cates"].reshape(len(tr["label"]), -1)], axis=1)
    hit = (hist == tr["target_cate"][:, None]).mean(axis=1)
    assert hit[pos].mean() > 2 * hit[neg].mean()
    assert (tr["target_item"] != OOV_ID).all()


def test_test_per_user_takes_the_last_positions():
    users, seqs, cate_of = _seqs()
    out, _, _vocabularies = build_ctr_samples(users, seqs, cate_of, OPTS, seed=0, train_per_user=3, min_train_position=20, test_per_user=3)
    one, _, _vocabularies = build_ctr_samples(users, seqs, cate_of, OPTS, seed=0, train_per_user=3, min_train_position=20)
    assert len(out["test"]["label"]) == 3 * len(one["test"]["label"])
    for ui, seq in enumerate(seqs):
        positives = out["test"]["item_id"][(out["test"]["user_id"] == users[ui]) & (out["test"]["label"] == 1)]
        assert positives.tolist() == seq[-3:].tolist()
        valid = out["valid"]["item_id"][(out["valid"]["user_id"] == users[ui]) & (out["valid"]["label"] == 1)]
        assert valid.tolist() == [seq[-4]]
        train = out["train"]["item_id"][(out["train"]["user_id"] == users[ui]) & (out["train"]["label"] == 1)]
        assert set(train.tolist()).isdisjoint(seq[-4:].tolist())
    with pytest.raises(ValueError, match="test_per_user must be a positive int, got 0"):
        build_ctr_samples(users, seqs, cate_of, OPTS, seed=0, test_per_user=0)


@pytest.mark.parametrize("long_includes_short", [False, True])
@pytest.mark.parametrize("shape", [(6, 3, 2), (1, 1, 1), (20, 4, 5)])
def test_vectorised_split_equals_the_per_row_split(shape, long_includes_short) -> None:
    """split_histories over ragged rows (empty ones included) equals split_history row by row."""
    from ifusion_plugin.data.sequences import split_histories

    long_len, num_sessions, session_len = shape
    options = SequenceOptions(long_len=long_len, num_sessions=num_sessions, session_len=session_len,
                              long_includes_short=long_includes_short)
    rng = np.random.default_rng(sum(shape))
    lengths = rng.integers(0, 40, 50)
    lengths[:3] = [0, 1, num_sessions * session_len]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(2, 1000, offsets[-1])
    cates, behaviors = items % 7 + 2, items % 3 + 2
    # A slice of a larger buffer, as encode_table passes it.
    parts = split_histories(np.concatenate([[5, 5], items]), np.concatenate([[5, 5], cates]), offsets + 2, options,
                            np.concatenate([[5, 5], behaviors]))
    for row in range(len(lengths)):
        a, b = offsets[row], offsets[row + 1]
        expected = split_history(items[a:b], cates[a:b], options, behaviors=behaviors[a:b])
        for name in ("long_items", "long_cates", "session_items", "session_cates", "session_behaviors"):
            np.testing.assert_array_equal(parts[name][row], getattr(expected, name), err_msg=f"row {row} {name}")
    with pytest.raises(ValueError, match="handles session_split='chunk', got 'time_gap'"):
        split_histories(items, cates, offsets, SequenceOptions(session_split="time_gap"))
