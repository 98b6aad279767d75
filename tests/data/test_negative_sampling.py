"""negative_sampling: uniform vs popularity-proportional negatives, and the popularity baseline."""

from __future__ import annotations

import numpy as np
import pytest

from ifusion_plugin.data import MovieLens1MDataModule, SequenceOptions, SyntheticDataModule, build_ctr_samples
from ifusion_plugin.data.popularity import measures_popularity, popularity_auc, popularity_scores

OPTS = SequenceOptions(long_len=6, num_sessions=2, session_len=2)


def _skewed_sequences(num_users: int = 200):
    """Users who all rate the 5 'blockbusters' 100..104 plus 25 distinct items of a long tail."""
    rng = np.random.default_rng(0)
    tail = np.arange(1000, 1000 + 4000)
    users, seqs = [], []
    for u in range(num_users):
        own = rng.choice(tail, size=25, replace=False)
        seqs.append(rng.permutation(np.concatenate([np.arange(100, 105), own])))
        users.append(u)
    cate_of = {int(i): int(i) % 7 for i in np.concatenate([np.arange(100, 105), tail])}
    return users, seqs, cate_of


def _raw_negatives(out) -> np.ndarray:
    """The raw item id of every negative, all splits (target ids decoded through the train order)."""
    return np.concatenate([out[s]["item_id"][out[s]["label"] == 0] for s in ("train", "valid", "test")])


@pytest.mark.parametrize("mode", ["uniform", "popularity"])
def test_negatives_never_rated_and_seeded(mode):
    users, seqs, cate_of = _skewed_sequences(40)
    out, _, _vocabularies = build_ctr_samples(users, seqs, cate_of, OPTS, seed=0, train_per_user=3, min_train_position=20, negative_sampling=mode)
    again, _, _vocabularies = build_ctr_samples(users, seqs, cate_of, OPTS, seed=0, train_per_user=3, min_train_position=20, negative_sampling=mode)
    other, _, _vocabularies = build_ctr_samples(users, seqs, cate_of, OPTS, seed=1, train_per_user=3, min_train_position=20, negative_sampling=mode)
    rated = {u: set(s.tolist()) for u, s in zip(users, seqs)}
    for split in ("train", "valid", "test"):
        neg = out[split]["label"] == 0
        for user, item in zip(out[split]["user_id"][neg].tolist(), out[split]["item_id"][neg].tolist()):
            assert item not in rated[user]
    np.testing.assert_array_equal(_raw_negatives(out), _raw_negatives(again))
    assert not np.array_equal(_raw_negatives(out), _raw_negatives(other))


def test_popularity_negatives_follow_interaction_counts():
    # Interactions: a tail item occurs about 200 * 25 / 4000 = 1.25 times, so the never-rated
    # tail items a user can draw are ~4000 x 1.25 entries of the pool; uniform draws pick among
    # ~4000 distinct items. The rated-by-some tail then dominates popularity draws: an item never
    # rated by anyone is never drawn under "popularity", often under "uniform".
    users, seqs, cate_of = _skewed_sequences()
    rated_by_someone = set(np.concatenate(seqs).tolist())
    out_pop, _, _vocabularies = build_ctr_samples(users, seqs, cate_of, OPTS, seed=0, train_per_user=3, negative_sampling="popularity")
    assert set(_raw_negatives(out_pop).tolist()) <= rated_by_someone
    # In proportion to counts: with every user rating the blockbusters, none is ever a negative;
    # among tail items drawn, those rated by two users come about twice as often as those rated
    # by one (checked on the pooled draws).
    counts = {}
    for item in np.concatenate(seqs).tolist():
        counts[item] = counts.get(item, 0) + 1
    drawn = _raw_negatives(out_pop)
    assert not set(drawn.tolist()) & set(range(100, 105))
    once = np.mean([counts[i] == 1 for i in drawn])
    pool_once = np.mean([c == 1 for i, c in counts.items() if i >= 1000])
    twice_or_more = 1 - once
    assert twice_or_more > 1 - pool_once  # popular tail items are over-represented vs the item list


def test_unknown_negative_sampling_is_rejected():
    users, seqs, cate_of = _skewed_sequences(5)
    with pytest.raises(ValueError, match=r"negative_sampling must be one of \('uniform', 'popularity'\), got 'pop'"):
        build_ctr_samples(users, seqs, cate_of, OPTS, seed=0, negative_sampling="pop")
    with pytest.raises(ValueError, match="negative_sampling"):
        SyntheticDataModule(negative_sampling="zipf")


def _write_movielens(root, seqs):
    root.mkdir()
    with open(root / "sequences.tsv", "w", encoding="utf-8") as handle:
        handle.write("user_id\tmovie_ids\n")
        for user, seq in enumerate(seqs):
            handle.write(f"{user + 1}\t{','.join(str(int(i)) for i in seq)}\n")
    with open(root / "movies.dat", "w", encoding="utf-8") as handle:
        for item in sorted(set(np.concatenate(seqs).tolist())):
            handle.write(f"{item}::Movie {item}::{'Drama' if item % 2 else 'Comedy'}\n")


def test_popularity_is_part_of_the_cache_key_and_removes_the_popularity_signal(tmp_path):
    # A popularity-skewed log: with uniform negatives the train-positive count separates test
    # positives from negatives almost perfectly; with popularity negatives much less.
    rng = np.random.default_rng(1)
    weights = 1.0 / np.arange(1, 301) ** 1.2
    seqs = [rng.choice(np.arange(1, 301), size=40, replace=False, p=weights / weights.sum()) for _ in range(150)]
    _write_movielens(tmp_path / "ml", seqs)
    kw = dict(root=str(tmp_path / "ml"), cache_dir=str(tmp_path / "cache"), long_len=10, train_per_user=5)
    uniform = MovieLens1MDataModule(**kw)
    popular = MovieLens1MDataModule(negative_sampling="popularity", **kw)
    uniform_auc, popular_auc = popularity_auc(uniform), popularity_auc(popular)
    assert uniform.cache_path != popular.cache_path
    assert uniform_auc > 0.7 and measures_popularity(uniform_auc)
    assert not measures_popularity(popular_auc), popular_auc


def test_popularity_scores_and_auc_reference():
    scores = popularity_scores(np.array([5, 5, 7, 5, 9]), np.array([1, 1, 1, 0, 0]), np.array([5, 7, 9, 11]))
    np.testing.assert_array_equal(scores, [2.0, 1.0, 0.0, 0.0])
    assert measures_popularity(0.39) and measures_popularity(0.61) and not measures_popularity(0.55)


def test_popularity_auc_handles_large_counts(tmp_path):
    # Counts above ~40 must not tie (torchmetrics squashes scores outside [0, 1] with a sigmoid).
    dm = SyntheticDataModule(num_users=300, num_items=40, num_cates=8, history_len=30, long_len=5,
                             train_per_user=20, cache_dir=str(tmp_path))
    from sklearn.metrics import roc_auc_score

    train, test = dm.split("train")[:], dm.split("test")[:]
    scores = popularity_scores(train["target_item"], train["label"], test["target_item"])
    assert scores.max() > 100
    assert popularity_auc(dm) == pytest.approx(roc_auc_score(test["label"], scores), abs=1e-6)


def test_synthetic_popularity_negatives_outside_history(tmp_path):
    dm = SyntheticDataModule(num_users=50, num_items=60, num_cates=6, history_len=12, long_len=12, num_sessions=1,
                             session_len=1, drift_len=0, train_per_user=3, negative_sampling="popularity", cache_dir=str(tmp_path))
    raw = dm.generate()
    assert not (raw["hist_items"] == raw["neg_item"][:, None]).any(axis=1).any()
    assert (raw["neg_item"] != raw["pos_item"]).all()
    uniform = SyntheticDataModule(num_users=50, num_items=60, num_cates=6, history_len=12, long_len=12, num_sessions=1,
                                  session_len=1, drift_len=0, train_per_user=3, cache_dir=str(tmp_path))
    assert uniform.feature_spec == dm.feature_spec and uniform.cache_path != dm.cache_path
