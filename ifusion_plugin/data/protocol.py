"""The CTR sample protocol: from time-ordered user sequences to train/valid/test samples.

Protocol (DIN/DIEN, the one the peer libraries were measured on, docs/data.md): for a user's time-ordered
sequence ``s`` of length ``n``: test = position ``n-1``, valid = ``n-2``, train = the up to
``train_per_user`` latest positions ``p`` with ``min_train_position <= p <= n-3``. Each position
gives one positive (``s[p]``, label 1) and one negative (rejected while the user ever
interacted with it; fixed seed), drawn by ``negative_sampling``: ``"uniform"`` among the
source's items, or ``"popularity"`` from the list of all interactions (in proportion to how
often each item occurs, as DIEN's data script draws them: item popularity alone then no longer
separates positives from negatives; see :func:`popularity_auc`), both with history
``s[:p]`` split by :func:`~ifusion_plugin.data.sequences.split_history`. With
``test_per_user = m`` test holds the last ``m`` positions and valid the one before them. A history never
contains its own or any later position, so the test item never enters a train history.

Vocabularies: 0 pad, 1 OOV, known ids from 2 in sorted raw-id order. Items and categories are
built from what train can see (train targets, train negatives and the histories up to the last
train position); users from all users. An id unseen there maps to OOV.

Raw ids: every source also stores each sample's ``user_id`` and ``item_id`` as its files spell
them (OOV items keep their true id), read back with :meth:`CTRDataModule.raw_ids`.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
import pyarrow as pa

from ..batch import FIRST_ID, SAMPLE_COLUMNS, FeatureSpec
from .cache import RAW_ID_COLUMNS
from .sequences import SequenceOptions, split_history
from .vocabulary import Vocabularies, Vocabulary

__all__ = ["NEGATIVE_SAMPLING", "NegativeSampling", "build_ctr_samples", "check_negative_sampling"]

NegativeSampling = Literal["uniform", "popularity"]
NEGATIVE_SAMPLING: tuple[str, ...] = ("uniform", "popularity")


def check_negative_sampling(value: object) -> None:
    """Raise a ValueError naming the option unless ``value`` is one of :data:`NEGATIVE_SAMPLING`."""
    if value not in NEGATIVE_SAMPLING:
        raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {value!r}")


def build_ctr_samples(
    users: Sequence[int],
    seqs: Sequence[np.ndarray],
    cate_of: dict[int, int],
    options: SequenceOptions,
    *,
    seed: int,
    train_per_user: int = 20,
    min_train_position: int = 20,
    times: Optional[Sequence[np.ndarray]] = None,
    negative_sampling: NegativeSampling = "uniform",
    behaviors: Optional[Sequence[np.ndarray]] = None,
    num_behaviors: int = 0,
    positive: Optional[Sequence[np.ndarray]] = None,
    in_long: Optional[Sequence[np.ndarray]] = None,
    in_sessions: Optional[Sequence[np.ndarray]] = None,
    test_per_user: int = 1,
) -> tuple[dict[str, dict[str, np.ndarray]], FeatureSpec]:
    """Build the train/valid/test sample columns of the protocol described in the module doc.

    Args:
        users: raw user ids, one per sequence.
        seqs: raw item ids per user, oldest first (int arrays of shape ``(n_u,)``).
        cate_of: raw item id -> raw category id.
        options: the long/short split.
        seed: seed of negative sampling.
        times: optional unix seconds per sequence (needed by ``time_gap``).
        negative_sampling: ``"uniform"`` over the distinct items or ``"popularity"`` over the
            list of all interactions that may be positives; either rejects items the user
            interacted with in any way.
        behaviors: optional behaviour type ids per sequence (``(n_u,)``, from
            :data:`~ifusion_plugin.batch.FIRST_ID`); the sessions then carry them and the spec
            gets ``num_behaviors`` (the type vocabulary's size, padding and OOV included).
        positive: optional bool masks per sequence: the behaviours that may be a sample's
            target (default all). Test is a user's last such behaviour, valid the one before,
            train the ``train_per_user`` before those at index ``>= min_train_position``.
        in_long, in_sessions: optional bool masks per sequence, the behaviours the long-term
            sequence and the sessions may hold (see :func:`~ifusion_plugin.data.split_history`).
        test_per_user: test holds each user's last ``test_per_user`` target positions (valid
            the one before them): a larger test split shrinks the sampling noise of test AUC.

    Returns:
        per split a dict of SAMPLE_COLUMNS arrays (``(S,)``, ``(S, L)``, ``(S, K, N)``, plus
        ``session_behaviors`` with ``behaviors``) plus the raw ``user_id`` and ``item_id`` of
        each sample (int64, ``(S,)``; the negative's own raw id on negative rows), the spec, and
        the :class:`~ifusion_plugin.data.vocabulary.Vocabularies` of users, items (with their
        category through ``cate_of``) and categories; a caller whose behaviour ids have raw
        names sets ``behaviors`` on it.
    """
    check_negative_sampling(negative_sampling)
    if not isinstance(test_per_user, int) or isinstance(test_per_user, bool) or test_per_user < 1:
        raise ValueError(f"test_per_user must be a positive int, got {test_per_user!r}")
    if behaviors is not None and num_behaviors < FIRST_ID:
        raise ValueError(f"num_behaviors must be at least {FIRST_ID} when behaviors are given, got {num_behaviors}")
    eligible = [np.arange(len(s)) if positive is None else np.flatnonzero(np.asarray(positive[ui], dtype=bool))
                for ui, s in enumerate(seqs)]
    every = np.concatenate([np.asarray(s) for s in seqs]) if seqs else np.zeros(0, np.int64)
    all_items = np.unique(every)
    # One entry per interaction that may be a positive for "popularity": an item is drawn as
    # often as it is a target.
    pool = np.concatenate([np.asarray(s)[e] for s, e in zip(seqs, eligible)]) if negative_sampling == "popularity" else all_items
    rng = np.random.default_rng(seed)
    plan = []  # (user index, position, split, negative raw id)
    valid_position: dict[int, int] = {}
    for ui, s in enumerate(seqs):
        targets = eligible[ui]
        m = test_per_user
        if len(targets) < m + 1:
            continue
        rated = set(np.asarray(s).tolist())
        if len(rated) >= len(all_items):
            continue  # no never-rated item to sample a negative from
        earlier = targets[: -(m + 1)]
        train = earlier[earlier >= min_train_position][-train_per_user:] if train_per_user > 0 else earlier[:0]
        valid_position[ui] = int(targets[-(m + 1)])
        positions = ([(int(p), "train") for p in train] + [(int(targets[-(m + 1)]), "valid")]
                     + [(int(p), "test") for p in targets[-m:]])
        for p, split in positions:
            while True:
                neg = int(pool[rng.integers(len(pool))])
                if neg not in rated:
                    break
            plan.append((ui, p, split, neg))
    # Vocabularies from what train sees: histories up to each user's valid position.
    seen: set[int] = set()
    for ui, s in enumerate(seqs):
        seen.update(np.asarray(s[: valid_position.get(ui, max(0, len(s) - 2))]).tolist())
    seen.update(neg for _, _, split, neg in plan if split == "train")
    item_keys = np.array(sorted(seen), dtype=np.int64)
    cate_keys = np.array(sorted({cate_of.get(i, -1) for i in seen} - {-1}), dtype=np.int64)
    user_keys = np.array(sorted(set(int(u) for u in users)), dtype=np.int64)
    vocabularies = Vocabularies(
        users=Vocabulary.from_keys(user_keys),
        items=Vocabulary.from_keys(item_keys),
        cates=Vocabulary.from_keys(cate_keys),
        # Behaviour ids arrive encoded; identity keys until the caller names them.
        behaviors=None if behaviors is None else Vocabulary.from_keys(np.arange(FIRST_ID, num_behaviors, dtype=np.int64)),
        item_categories=pa.table({"item": pa.array(list(cate_of), pa.int64()), "cate": pa.array(list(cate_of.values()), pa.int64())}),
    )

    def encode(vocabulary: Vocabulary, values: np.ndarray) -> np.ndarray:
        # Raw ids without a category are -1 here: never a key, so OOV like any unseen id.
        return vocabulary.encode(pa.array(np.asarray(values, dtype=np.int64)))

    def categories(items: np.ndarray) -> np.ndarray:
        return np.array([cate_of.get(int(i), -1) for i in items], np.int64)

    enc_seqs = [encode(vocabularies.items, s) for s in seqs]
    enc_cates = [encode(vocabularies.cates, categories(s)) for s in seqs]  # type: ignore[arg-type]
    enc_users = encode(vocabularies.users, np.asarray(users))
    negatives = np.array([neg for _, _, _, neg in plan], dtype=np.int64)
    enc_negatives = encode(vocabularies.items, negatives)
    enc_negative_cates = encode(vocabularies.cates, categories(negatives))  # type: ignore[arg-type]
    names = list(SAMPLE_COLUMNS) + (["session_behaviors"] if behaviors is not None else [])
    cols: dict[str, dict[str, list]] = {sp: {k: [] for k in names} for sp in ("train", "valid", "test")}
    raw: dict[str, dict[str, list[int]]] = {sp: {k: [] for k in RAW_ID_COLUMNS} for sp in cols}
    for index, (ui, p, split, neg) in enumerate(plan):
        t = None if times is None else np.asarray(times[ui])[:p]
        h = split_history(
            enc_seqs[ui][:p], enc_cates[ui][:p], options, t,
            behaviors=None if behaviors is None else np.asarray(behaviors[ui])[:p],
            in_long=None if in_long is None else np.asarray(in_long[ui])[:p],
            in_sessions=None if in_sessions is None else np.asarray(in_sessions[ui])[:p],
        )
        c = cols[split]
        for target_item, target_cate, label in (
            (enc_seqs[ui][p], enc_cates[ui][p], 1),
            (enc_negatives[index], enc_negative_cates[index], 0),
        ):
            c["user"].append(enc_users[ui])
            c["target_item"].append(target_item)
            c["target_cate"].append(target_cate)
            c["long_items"].append(h.long_items)
            c["long_cates"].append(h.long_cates)
            c["session_items"].append(h.session_items)
            c["session_cates"].append(h.session_cates)
            c["label"].append(label)
            if behaviors is not None:
                c["session_behaviors"].append(h.session_behaviors)
        raw[split]["user_id"] += [int(users[ui])] * 2
        raw[split]["item_id"] += [int(seqs[ui][p]), neg]
    shapes = {"()": (), "(L,)": (options.long_len,), "(K, N)": (options.num_sessions, options.session_len)}
    shape_of = {**SAMPLE_COLUMNS, "session_behaviors": "(K, N)"}
    out = {
        sp: {
            **{k: np.asarray(v, dtype=np.int64).reshape((-1,) + shapes[shape_of[k]]) for k, v in c.items()},
            **{k: np.asarray(v, dtype=np.int64) for k, v in raw[sp].items()},
        }
        for sp, c in cols.items()
    }
    spec = FeatureSpec(
        num_users=len(user_keys) + FIRST_ID,
        num_items=len(item_keys) + FIRST_ID,
        num_cates=len(cate_keys) + FIRST_ID,
        long_len=options.long_len,
        num_sessions=options.num_sessions,
        session_len=options.session_len,
        num_behaviors=num_behaviors if behaviors is not None else 0,
    )
    return out, spec, vocabularies


def _sequences_from_log(users: np.ndarray, items: np.ndarray, times: np.ndarray):
    """Group an interaction log by user, time order (stable: file order breaks ties)."""
    order = np.lexsort((np.arange(len(users)), times, users))
    users, items, times = users[order], items[order], times[order]
    uniq, starts = np.unique(users, return_index=True)
    ends = np.append(starts[1:], len(users))
    return uniq.tolist(), [items[a:b] for a, b in zip(starts, ends)], [times[a:b] for a, b in zip(starts, ends)]
