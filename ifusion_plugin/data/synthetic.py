"""Synthetic data with a planted long/short structure: the recipes' default, and the tests'."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ..batch import FIRST_ID, FeatureSpec
from .datamodule import CTRDataModule
from .protocol import NegativeSampling, check_negative_sampling
from .sequences import split_history
from .vocabulary import Vocabularies, Vocabulary

__all__ = ["SyntheticDataModule"]


class SyntheticDataModule(CTRDataModule):
    """Generated users with planted long-term preferences and a short-term drift.

    Each user has ``long_pref_per_user`` preferred categories. Categories have a popularity
    ``1 / (c + 1) ** cate_skew`` (``c`` the category id; 0 gives uniform): preferences and drift
    categories are drawn with these weights, so popular categories are liked by more users while
    negatives stay uniform items. Every sample has its own history
    of ``history_len`` behaviours (hourly timestamps): the latest ``drift_len`` behaviours
    (default ``num_sessions * session_len``, i.e. the sessions) belong to the sample's drift
    category, one category outside the user's preferences; the older ones to the user's
    preferences; each behaviour is instead of a uniformly random category with probability
    ``noise``. The positive's category is one of the user's preferences with probability
    ``1 - drift_prob`` and the drift category otherwise; the negative is a uniformly random item.
    With the defaults the preferences show only in the long-term part and the drift only in the
    sessions, so a model needs both parts to do best. Items are ``0 .. num_items - 1``; item ``i``
    has category ``i % num_cates``.

    Per user ``train_per_user`` train samples, one valid and one test sample, each a positive
    followed by its negative (same history). Everything is drawn with vectorised numpy from
    ``seed`` alone, so the data are deterministic by seed.
    """

    def __init__(
        self,
        num_users: int = 1000,
        num_items: int = 500,
        num_cates: int = 20,
        history_len: int = 40,
        long_pref_per_user: int = 2,
        drift_len: Optional[int] = None,
        drift_prob: float = 0.5,
        noise: float = 0.1,
        cate_skew: float = 1.0,
        train_per_user: int = 10,
        long_len: int = 50,
        negative_sampling: NegativeSampling = "uniform",
        **options: Any,
    ) -> None:
        super().__init__(long_len=long_len, **options)
        check_negative_sampling(negative_sampling)
        self.negative_sampling = negative_sampling
        short = self.sequence_options.num_sessions * self.sequence_options.session_len
        drift_len = short if drift_len is None else drift_len
        if num_users <= 0 or train_per_user <= 0 or history_len <= 0:
            raise ValueError("num_users, train_per_user and history_len must be positive")
        if num_items < num_cates or num_cates < long_pref_per_user + 1 or long_pref_per_user <= 0:
            raise ValueError("need num_items >= num_cates > long_pref_per_user > 0")
        if not 0 <= drift_len <= history_len:
            raise ValueError(f"drift_len must be in [0, history_len], got {drift_len}")
        if not (0.0 <= drift_prob <= 1.0 and 0.0 <= noise <= 1.0):
            raise ValueError("drift_prob and noise must be probabilities")
        self.gen = dict(num_users=num_users, num_items=num_items, num_cates=num_cates, history_len=history_len,
                        long_pref_per_user=long_pref_per_user, drift_len=drift_len, drift_prob=drift_prob,
                        noise=noise, cate_skew=float(cate_skew), train_per_user=train_per_user, version=2)

    def _source_name(self) -> str:
        return "synthetic"

    def _content_options(self) -> dict[str, object]:
        return {**self.gen, "negative_sampling": self.negative_sampling}

    def generate(self) -> dict[str, np.ndarray]:
        """Raw samples (ids from 0): ``user (S,)``, ``split (S,)`` (0 train, 1 valid, 2 test),
        ``hist_items``/``hist_cates (S, history_len)`` oldest first, ``pos_item``,
        ``neg_item (S,)``; ``S = num_users * (train_per_user + 2)``, users' samples contiguous."""
        g = self.gen
        rng = np.random.default_rng(self.seed)
        U, C, I, H = g["num_users"], g["num_cates"], g["num_items"], g["history_len"]
        P, per = g["long_pref_per_user"], g["train_per_user"] + 2
        # Category popularity ~ 1 / (rank + 1) ** cate_skew (rank = category id): preferences and
        # drift categories are drawn without replacement with these weights (Gumbel top-k).
        log_w = -g["cate_skew"] * np.log1p(np.arange(C))
        prefs = np.argsort(-(log_w + rng.gumbel(size=(U, C))), axis=1)[:, :P]
        user = np.repeat(np.arange(U), per)
        split = np.tile(np.r_[np.zeros(per - 2, np.int64), 1, 2], U)
        S = len(user)
        # Drift: a category outside the user's preferences, per sample.
        is_pref = np.zeros((U, C), bool)
        np.put_along_axis(is_pref, prefs, True, axis=1)
        drift = np.argmax(np.where(is_pref[user], -np.inf, log_w + rng.gumbel(size=(S, C))), axis=1)
        pick = prefs[user[:, None], rng.integers(P, size=(S, H))]
        recent = np.arange(H) >= H - g["drift_len"]
        cates = np.where(recent[None, :], drift[:, None], pick)
        cates = np.where(rng.random((S, H)) < g["noise"], rng.integers(C, size=(S, H)), cates)
        pos_cate = np.where(rng.random(S) < g["drift_prob"], drift, prefs[user, rng.integers(P, size=S)])

        def item_of(cate: np.ndarray) -> np.ndarray:
            # Item i has category i % C: category c owns c, c + C, ... below I.
            count = (I - 1 - cate) // C + 1
            return cate + C * np.floor(rng.random(cate.shape) * count).astype(np.int64)

        neg = rng.integers(I, size=S)
        hist_items, pos_item = item_of(cates), item_of(pos_cate)
        if self.negative_sampling == "popularity":
            neg = _popularity_negatives(rng, hist_items, pos_item)
        return {"user": user, "split": split, "hist_items": hist_items, "hist_cates": cates,
                "pos_item": pos_item, "neg_item": neg}

    def _build(self):
        g = self.gen
        raw = self.generate()
        C, S, H = g["num_cates"], len(raw["user"]), g["history_len"]
        opts = self.sequence_options
        times = np.arange(H, dtype=np.int64) * 3600  # hourly, for time_gap
        long_i = np.zeros((S, opts.long_len), np.int64)
        long_c = np.zeros_like(long_i)
        sess_i = np.zeros((S, opts.num_sessions, opts.session_len), np.int64)
        sess_c = np.zeros_like(sess_i)
        items, cates = raw["hist_items"] + FIRST_ID, raw["hist_cates"] + FIRST_ID
        for k in range(S):
            h = split_history(items[k], cates[k], opts, times)
            long_i[k], long_c[k], sess_i[k], sess_c[k] = h.long_items, h.long_cates, h.session_items, h.session_cates
        two = lambda a: np.repeat(a, 2, axis=0)  # noqa: E731  (positive, negative) rows per sample
        target = np.stack([raw["pos_item"], raw["neg_item"]], axis=1).reshape(-1)
        cols = {
            "user": two(raw["user"] + FIRST_ID),
            "target_item": target + FIRST_ID,
            "target_cate": target % C + FIRST_ID,
            "long_items": two(long_i), "long_cates": two(long_c),
            "session_items": two(sess_i), "session_cates": two(sess_c),
            "label": np.tile(np.array([1, 0], np.int64), S),
            # The generator's own ids (from 0) are the raw ids: encoded = raw + FIRST_ID.
            "user_id": two(raw["user"]),
            "item_id": target,
        }
        split = two(raw["split"])
        out = {name: {k: np.ascontiguousarray(v[split == code]) for k, v in cols.items()}
               for code, name in enumerate(("train", "valid", "test"))}
        spec = FeatureSpec(num_users=g["num_users"] + FIRST_ID, num_items=g["num_items"] + FIRST_ID,
                           num_cates=C + FIRST_ID, long_len=opts.long_len, num_sessions=opts.num_sessions,
                           session_len=opts.session_len)
        # The generator's ids are the raw ids (encoded = raw + FIRST_ID); item i is of category i % C.
        vocabularies = Vocabularies(
            users=Vocabulary.from_keys(np.arange(g["num_users"], dtype=np.int64)),
            items=Vocabulary.from_keys(np.arange(g["num_items"], dtype=np.int64)),
            cates=Vocabulary.from_keys(np.arange(C, dtype=np.int64)),
            item_categories=pa.table({"item": np.arange(g["num_items"], dtype=np.int64),
                                      "cate": np.arange(g["num_items"], dtype=np.int64) % C}),
        )
        return out, spec, vocabularies


def _popularity_negatives(rng: np.random.Generator, hist_items: np.ndarray, pos_item: np.ndarray) -> np.ndarray:
    """One negative per sample drawn from the list of all interactions (every history entry and
    positive), redrawn while it is in the sample's own history or is its positive.

    Args:
        hist_items: ``(S, H)`` history items; pos_item: ``(S,)`` positives.

    Returns:
        ``(S,)`` negatives. Rows whose every draw stays rejected after 100 rounds (a history that
        covers the whole pool) raise, rather than keep a positive as a negative.
    """
    pool = np.concatenate([hist_items.reshape(-1), pos_item])
    neg = pool[rng.integers(len(pool), size=len(pos_item))]
    for _ in range(100):
        bad = (hist_items == neg[:, None]).any(axis=1) | (neg == pos_item)
        if not bad.any():
            return neg
        neg[bad] = pool[rng.integers(len(pool), size=int(bad.sum()))]
    raise ValueError("negative_sampling='popularity': some histories cover every item of the pool; use 'uniform'")
