"""LightningDataModules producing :class:`~ifusion_plugin.batch.CTRBatch` from cached Arrow splits.

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

import logging
import os
import time
from typing import ClassVar, Iterator, Literal, Optional, Sequence

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..batch import FIRST_ID, OOV_ID, SAMPLE_COLUMNS, CTRBatch, FeatureSpec
from .cache import RAW_ID_COLUMNS, SPLITS, SplitArrays, cache_key, load_or_build, load_raw_ids, raw_ids_path, vocabularies_path
from .requests import RequestFeatures
from .sequences import SequenceOptions, split_history
from .vocabulary import Vocabularies, Vocabulary

__all__ = ["CTRDataModule", "SyntheticDataModule", "MovieLens1MDataModule", "AmazonGroceryDataModule", "TaobaoDataModule", "AmazonBooksDIENDataModule", "build_ctr_samples"]

log = logging.getLogger(__name__)
OnBadLine = Literal["error", "skip"]
NegativeSampling = Literal["uniform", "popularity"]
NEGATIVE_SAMPLING: tuple[str, ...] = ("uniform", "popularity")


def check_negative_sampling(value: object) -> None:
    """Raise a ValueError naming the option unless ``value`` is one of :data:`NEGATIVE_SAMPLING`."""
    if value not in NEGATIVE_SAMPLING:
        raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {value!r}")


CACHE_ENV = "IFUSION_CACHE_DIR"


def default_cache_dir() -> str:
    """The default ``cache_dir``: ``$IFUSION_CACHE_DIR`` if set (``~`` expanded), else
    ``~/.cache/ifusion-plugin``."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "ifusion-plugin"))


class _RangeBatchSampler(DistributedSampler):
    """Yields whole batches as index lists: contiguous ranges, or shuffled ranges of a
    per-epoch permutation (seeded by ``seed + epoch`` so runs repeat).

    Under ``torch.distributed`` each of the ``W`` processes takes every ``W``-th batch: a split
    is partitioned, never padded with repeats, so synced metrics count every sample once. For
    training (``shuffle``) every process gets the same number of batches (the last
    ``num_batches % W`` are dropped) so that gradient all-reduces stay in step. It subclasses
    ``DistributedSampler`` only so that Lightning keeps it instead of injecting its own, which
    would hand single indices to a dataset that reads whole batches.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int) -> None:  # noqa: D107
        # DistributedSampler.__init__ is not called: it needs a dataset and a process group.
        self.n, self.batch_size, self.shuffle, self.seed, self.epoch = n, batch_size, shuffle, seed, 0

    @staticmethod
    def _world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _num_batches(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __len__(self) -> int:
        world, rank = self._world()
        total = self._num_batches()
        if self.shuffle:
            return total // world if world > 1 else total
        return len(range(rank, total, world))

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; the next shuffle uses ``seed + epoch``."""
        self.epoch = epoch

    #: Batches to leave out at the start of the next pass (a resumed epoch); reset after use.
    skip: int = 0

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
            self.epoch += 1
        else:
            order = np.arange(self.n)
        world, rank = self._world()
        starts = list(range(0, self.n, self.batch_size))
        if self.shuffle and world > 1:
            starts = starts[: len(starts) // world * world]
        skip, self.skip = self.skip, 0
        for start in starts[rank::world][skip:]:
            yield order[start:start + self.batch_size]


class _ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in Lightning checkpoints.

    Lightning saves ``state_dict()`` of such loaders with a checkpoint and calls
    ``load_state_dict()`` before a resumed run iterates, so a run restarted from a mid-epoch
    checkpoint continues with the batch after the last one trained, in the same shuffled order,
    instead of starting the epoch over. The position counts batches handed to the consumer (the
    training loop), not the ones workers prefetched; a test kills a run and checks that the
    resumed one ends with the uninterrupted run's weights.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = 0
        self._served = 0
        self._resume_at = 0

    def __iter__(self):  # type: ignore[override]
        sampler: _RangeBatchSampler = self.sampler  # type: ignore[assignment]
        self._epoch = sampler.epoch
        self._served, self._resume_at = self._resume_at, 0
        sampler.skip = self._served
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.epoch = int(state["epoch"])  # type: ignore[attr-defined]
        self._resume_at = int(state["served"])


class _BatchDataset:
    """Map-style dataset whose ``__getitem__`` takes a whole index batch and returns a CTRBatch.

    Each column's Arrow chunks are viewed zero-copy as numpy arrays of shape ``(rows, *shape)``
    over the memory-mapped cache (fixed-size lists are one flat int64 buffer), so a batch is a
    numpy fancy-index per chunk: no per-row Python objects and no copy of the split in RAM.
    """

    def __init__(self, ds) -> None:
        self.n = len(ds)
        table = ds.data.table
        self.columns: dict[str, list[np.ndarray]] = {}
        self.offsets = None
        for name in table.column_names:
            views, starts, start = [], [], 0
            for chunk in table.column(name).chunks:
                shape = [len(chunk)]
                arr = chunk
                while pa.types.is_fixed_size_list(arr.type):
                    shape.append(arr.type.list_size)
                    arr = arr.flatten()
                views.append(arr.to_numpy(zero_copy_only=False).reshape(shape))
                starts.append(start)
                start += len(chunk)
            self.columns[name] = views
            self.offsets = np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index) -> CTRBatch:
        idx = np.asarray(index, dtype=np.int64)
        chunk_of = np.searchsorted(self.offsets, idx, side="right") - 1
        out = {}
        for name, views in self.columns.items():
            if len(views) == 1:
                out[name] = views[0][idx]
                continue
            first = views[0]
            col = np.empty((len(idx),) + first.shape[1:], dtype=first.dtype)
            for c in np.unique(chunk_of):
                sel = chunk_of == c
                col[sel] = views[c][idx[sel] - self.offsets[c]]
            out[name] = col
        out["row"] = idx  # the samples' rows in the split: predictions are placed by them
        return CTRBatch.from_columns(out)


def _identity(batch: CTRBatch) -> CTRBatch:
    return batch


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

    def encode(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        if len(keys) == 0:
            return np.full(values.shape, OOV_ID, np.int64)
        pos = np.clip(np.searchsorted(keys, values), 0, len(keys) - 1)
        return np.where(keys[pos] == values, pos + FIRST_ID, OOV_ID).astype(np.int64)

    enc_seqs = [encode(item_keys, s) for s in seqs]
    enc_cates = [encode(cate_keys, np.array([cate_of.get(int(i), -1) for i in s], np.int64)) for s in seqs]
    enc_users = encode(user_keys, np.asarray(users))
    names = list(SAMPLE_COLUMNS) + (["session_behaviors"] if behaviors is not None else [])
    cols: dict[str, dict[str, list]] = {sp: {k: [] for k in names} for sp in ("train", "valid", "test")}
    raw: dict[str, dict[str, list[int]]] = {sp: {k: [] for k in RAW_ID_COLUMNS} for sp in cols}
    for ui, p, split, neg in plan:
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
            (encode(item_keys, np.array([neg]))[0], encode(cate_keys, np.array([cate_of.get(neg, -1)]))[0], 0),
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
    vocabularies = Vocabularies(
        users=Vocabulary.from_keys(user_keys),
        items=Vocabulary.from_keys(item_keys),
        cates=Vocabulary.from_keys(cate_keys),
        # Behaviour ids arrive encoded; identity keys until the caller names them.
        behaviors=None if behaviors is None else Vocabulary.from_keys(np.arange(FIRST_ID, num_behaviors, dtype=np.int64)),
        item_categories=pa.table({"item": pa.array(list(cate_of), pa.int64()), "cate": pa.array(list(cate_of.values()), pa.int64())}),
    )
    return out, spec, vocabularies


class CTRDataModule(L.LightningDataModule):
    """Base DataModule: builds (or loads) the cached splits lazily and serves CTRBatch loaders.

    Batches: ``user``/``target_item``/``target_cate``/``label`` ``(B,)``, ``long_*`` ``(B, L)``,
    ``session_*`` ``(B, K, N)``.

    ``cache_dir`` (every subclass): where the built splits are cached; ``None`` (default) means
    ``$IFUSION_CACHE_DIR`` if set, else ``~/.cache/ifusion-plugin`` (see :func:`default_cache_dir`);
    ``~`` is expanded. Subclasses implement :meth:`_source_name`, :meth:`_raw_files`,
    :meth:`_content_options` and :meth:`_build`, and say in :attr:`DOWNLOAD` where the files come from.

    Raw ids: :meth:`raw_ids` gives each sample's ``user_id`` and ``item_id`` as the source data
    spells them, in split row order, for every built-in source; a subclass provides them by
    adding those two columns to every split its :meth:`_build` returns (:attr:`has_raw_ids`
    tells whether it did).

    ``predict_split`` (attribute, ``"test"`` by default): the split ``predict_dataloader`` serves.
    """

    #: The split served by ``predict_dataloader``: ``"train"``, ``"valid"`` or ``"test"``.
    predict_split: str = "test"

    def __init__(
        self,
        long_len: int = 100,
        num_sessions: int = 4,
        session_len: int = 5,
        session_split: Literal["chunk", "time_gap"] = "chunk",
        session_gap_seconds: float = 86_400.0,
        long_includes_short: bool = False,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        cache_dir: Optional[str] = None,
        on_bad_line: OnBadLine = "error",
    ) -> None:
        super().__init__()
        self.sequence_options = SequenceOptions(
            long_len=long_len,
            num_sessions=num_sessions,
            session_len=session_len,
            session_split=session_split,
            session_gap_seconds=session_gap_seconds,
            long_includes_short=long_includes_short,
        )
        if on_bad_line not in ("error", "skip"):
            raise ValueError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.cache_dir = default_cache_dir() if cache_dir is None else os.path.expanduser(cache_dir)
        self.on_bad_line = on_bad_line
        self._splits = None
        self._spec: Optional[FeatureSpec] = None
        self.cache_hit: Optional[bool] = None
        self.cache_path: Optional[str] = None

    #: Where a user gets the raw files (named when they are missing from ``root``).
    DOWNLOAD: ClassVar[str] = ""

    # --- subclass hooks -----------------------------------------------------------------
    def _source_name(self) -> str:
        raise NotImplementedError

    def _raw_files(self) -> list[str]:
        return []

    def _content_options(self) -> dict[str, object]:
        return {}

    def _build(self) -> tuple[SplitArrays, FeatureSpec]:
        """Per split the :data:`~ifusion_plugin.batch.SAMPLE_COLUMNS` (and ``context``) arrays,
        optionally with the raw ``user_id``/``item_id`` of each sample (``(S,)``, numpy or
        ``pyarrow`` arrays, for every split or none), and the FeatureSpec."""
        raise NotImplementedError

    # --- cache --------------------------------------------------------------------------
    def _ensure(self) -> None:
        if self._splits is not None:
            return
        files = self._raw_files()
        for path in files:
            if not os.path.exists(path):
                needs = ", ".join(os.path.basename(f) for f in files)
                raise FileNotFoundError(
                    f"{type(self).__name__}: expected file {os.path.basename(path)!r} at {path!r} "
                    f"(set --data.init_args.root to the directory holding {needs})"
                    + (f"\nget the data: {self.DOWNLOAD}" if self.DOWNLOAD else "")
                )
        options = {"source": self._source_name(), "seed": self.seed, **self.sequence_options.as_key(), **self._content_options()}
        key = cache_key(self._source_name(), options, self._raw_files())
        t0 = time.perf_counter()
        self._splits, self._spec, self.cache_hit = load_or_build(self.cache_dir, key, self._build, options)
        self.cache_path = os.path.join(self.cache_dir, key)
        log.info("%s: %s %s in %.1fs", type(self).__name__, "loaded" if self.cache_hit else "built", self.cache_path, time.perf_counter() - t0)

    @property
    def feature_spec(self) -> FeatureSpec:
        """The dataset's FeatureSpec (builds or loads the cache on first access)."""
        self._ensure()
        assert self._spec is not None
        return self._spec

    def prepare_data(self) -> None:
        self._ensure()

    def setup(self, stage: Optional[str] = None) -> None:
        self._ensure()

    def split(self, name: Literal["train", "valid", "test"]):
        """The cached ``datasets.Dataset`` of a split (numpy format)."""
        self._ensure()
        return self._splits[name]

    @property
    def has_raw_ids(self) -> bool:
        """Whether the cache holds raw ids, i.e. :meth:`raw_ids` works (builds or loads it)."""
        self._ensure()
        assert self.cache_path is not None
        # A complete cache holds raw ids for every split or for none.
        return os.path.exists(raw_ids_path(self.cache_path, "train"))

    def raw_ids(self, split: Literal["train", "valid", "test"]) -> dict[str, np.ndarray]:
        """Each sample's user and item id as the source data spells them (OOV items included).

        Read from the cache on each call, never on the training path.

        Args:
            split: ``"train"``, ``"valid"`` or ``"test"``.

        Returns:
            ``{"user_id": (S,), "item_id": (S,)}`` in the split's row order (row ``r`` belongs to
            sample ``r`` of :meth:`split`): int64 arrays for integer ids, object arrays of
            ``str`` for string ids.

        Raises:
            ValueError: ``split`` is not one of the three splits.
            LookupError: this datamodule's ``_build`` stored no raw ids (see :attr:`has_raw_ids`).
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self._ensure()
        assert self.cache_path is not None
        table = load_raw_ids(self.cache_path, split)
        if table is None:
            raise LookupError(
                f"{type(self).__name__} stored no raw ids in {self.cache_path}: its _build must add the columns "
                f"{list(RAW_ID_COLUMNS)} to every split"
            )
        return {name: table.column(name).to_numpy() for name in RAW_ID_COLUMNS}

    @property
    def has_vocabularies(self) -> bool:
        """Whether the cache holds the vocabularies, i.e. :meth:`vocabularies` works (builds or loads it)."""
        self._ensure()
        assert self.cache_path is not None
        return os.path.isdir(vocabularies_path(self.cache_path))

    def vocabularies(self) -> Vocabularies:
        """The raw-id vocabularies the samples were encoded with (what a server needs to encode
        the ids its requests spell; ``cli export`` writes them beside the programs).

        Raises:
            LookupError: this datamodule's ``_build`` returned no vocabularies.
        """
        if not self.has_vocabularies:
            raise LookupError(f"{type(self).__name__} stored no vocabularies in {self.cache_path}: its _build must "
                              "return (splits, spec, vocabularies)")
        assert self.cache_path is not None
        return Vocabularies.load(vocabularies_path(self.cache_path))

    def request_features(self) -> RequestFeatures:
        """How a raw history becomes model inputs here (sequence options, behaviour filters,
        context columns): what a server must repeat. Subclasses with filters or context extend it."""
        return RequestFeatures(sequence=self.sequence_options)

    def _loader(self, name: str, shuffle: bool, batch_size: int) -> DataLoader:
        ds = self.split(name)
        # Training loaders remember their position for mid-epoch resumption; evaluation restarts.
        loader_class = _ResumableDataLoader if shuffle else DataLoader
        return loader_class(
            _BatchDataset(ds),
            sampler=_RangeBatchSampler(len(ds), batch_size, shuffle, self.seed),
            batch_size=None,  # the sampler yields whole batches; __getitem__ builds CTRBatch
            collate_fn=_identity,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """The ``predict_split`` split (``"test"`` unless set; the CLI's ``--predict_split``), in order."""
        return self._loader(self.predict_split, False, self.eval_batch_size)


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
        num_sessions: int = 4,
        session_len: int = 5,
        session_split: Literal["chunk", "time_gap"] = "chunk",
        session_gap_seconds: float = 86_400.0,
        long_includes_short: bool = False,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        cache_dir: Optional[str] = None,
        on_bad_line: OnBadLine = "error",
        negative_sampling: NegativeSampling = "uniform",
    ) -> None:
        super().__init__(long_len, num_sessions, session_len, session_split, session_gap_seconds, long_includes_short,
                         seed, batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, cache_dir, on_bad_line)
        check_negative_sampling(negative_sampling)
        self.negative_sampling = negative_sampling
        drift_len = num_sessions * session_len if drift_len is None else drift_len
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


def _bad(path: str, lineno: int, what: str, policy: str, counter: list[int]) -> None:
    if policy == "error":
        raise ValueError(f"{path}:{lineno}: {what}")
    counter[0] += 1


def _report_skips(path: str, count: int) -> None:
    if count:
        log.warning("skipped %d malformed line(s) in %s", count, path)


class MovieLens1MDataModule(CTRDataModule):
    """MovieLens-1M from ``root/sequences.tsv`` (``user_id<TAB>movie_ids``, comma-separated,
    oldest first) and ``root/movies.dat`` (``id::title::genres``; category = first genre).
    Sessions are chunks (no timestamps)."""

    DOWNLOAD = (
        "movies.dat is in https://files.grouplens.org/datasets/movielens/ml-1m.zip; sequences.tsv is its "
        "ratings.dat as one line per user, 'user_id<TAB>movie ids oldest first' (comma-separated)"
    )

    def __init__(
        self,
        root: str = "movielens-1m",
        train_per_user: int = 20,
        min_train_position: int = 20,
        long_len: int = 100,
        num_sessions: int = 4,
        session_len: int = 5,
        session_split: Literal["chunk", "time_gap"] = "chunk",
        session_gap_seconds: float = 86_400.0,
        long_includes_short: bool = False,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        cache_dir: Optional[str] = None,
        on_bad_line: OnBadLine = "error",
        negative_sampling: NegativeSampling = "uniform",
        test_per_user: int = 1,
    ) -> None:
        if session_split != "chunk":
            raise ValueError("MovieLens-1M here has no timestamps: session_split must be 'chunk'")
        super().__init__(long_len, num_sessions, session_len, session_split, session_gap_seconds, long_includes_short,
                         seed, batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, cache_dir, on_bad_line)
        check_negative_sampling(negative_sampling)
        self.negative_sampling = negative_sampling
        self.test_per_user = test_per_user
        self.root = root
        self.train_per_user = train_per_user
        self.min_train_position = min_train_position

    def _source_name(self) -> str:
        return "movielens-1m"

    def _raw_files(self) -> list[str]:
        return [os.path.join(self.root, "sequences.tsv"), os.path.join(self.root, "movies.dat")]

    def _content_options(self) -> dict[str, object]:
        return {"train_per_user": self.train_per_user, "min_train_position": self.min_train_position,
                "negative_sampling": self.negative_sampling,
                "test_per_user": self.test_per_user}

    def read(self) -> tuple[list[int], list[np.ndarray], dict[int, int]]:
        """Users, sequences and movie -> first-genre id (1.. in sorted genre-name order)."""
        seq_path, movies_path = self._raw_files()
        users, seqs, skipped = [], [], [0]
        with open(seq_path, encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
            if header != ["user_id", "movie_ids"]:
                raise ValueError(f"{seq_path}:1: expected header 'user_id<TAB>movie_ids', got {header!r}")
            for lineno, line in enumerate(f, start=2):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2:
                    _bad(seq_path, lineno, f"expected 2 tab-separated fields, got {len(parts)}", self.on_bad_line, skipped)
                    continue
                try:
                    u = int(parts[0])
                    ids = np.array([int(x) for x in parts[1].split(",")], dtype=np.int64)
                except ValueError as e:
                    _bad(seq_path, lineno, f"non-integer id ({e})", self.on_bad_line, skipped)
                    continue
                users.append(u)
                seqs.append(ids)
        _report_skips(seq_path, skipped[0])
        first_genre: dict[int, str] = {}
        skipped = [0]
        with open(movies_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                parts = line.rstrip("\n").split("::")
                if len(parts) != 3 or not parts[0].strip().isdigit():
                    _bad(movies_path, lineno, "expected 'movie_id::title::genres'", self.on_bad_line, skipped)
                    continue
                first_genre[int(parts[0])] = parts[2].split("|")[0]
        _report_skips(movies_path, skipped[0])
        genre_id = {g: i + 1 for i, g in enumerate(sorted(set(first_genre.values())))}
        return users, seqs, {m: genre_id[g] for m, g in first_genre.items()}

    def _build(self):
        users, seqs, cate_of = self.read()
        return build_ctr_samples(users, seqs, cate_of, self.sequence_options, seed=self.seed,
                                 train_per_user=self.train_per_user, min_train_position=self.min_train_position,
                                 negative_sampling=self.negative_sampling, test_per_user=self.test_per_user)


def _sequences_from_log(users: np.ndarray, items: np.ndarray, times: np.ndarray):
    """Group an interaction log by user, time order (stable: file order breaks ties)."""
    order = np.lexsort((np.arange(len(users)), times, users))
    users, items, times = users[order], items[order], times[order]
    uniq, starts = np.unique(users, return_index=True)
    ends = np.append(starts[1:], len(users))
    return uniq.tolist(), [items[a:b] for a, b in zip(starts, ends)], [times[a:b] for a, b in zip(starts, ends)]


def _read_int_table(path: str, sep: str, ncols: int, header: Optional[list[str]], policy: str,
                    keep: Optional[callable] = None, int_cols: Optional[Sequence[int]] = None) -> list[list]:
    """Rows of ``ncols`` fields; ``int_cols`` are parsed as ints; bad lines raise or are counted."""
    rows, skipped = [], [0]
    int_cols = range(ncols) if int_cols is None else int_cols
    with open(path, encoding="utf-8") as f:
        start = 1
        if header is not None:
            got = f.readline().rstrip("\n").split(sep)
            if got != header:
                raise ValueError(f"{path}:1: expected header {header!r}, got {got!r}")
            start = 2
        for lineno, line in enumerate(f, start=start):
            parts = line.rstrip("\r\n").split(sep)
            if len(parts) != ncols:
                _bad(path, lineno, f"expected {ncols} fields separated by {sep!r}, got {len(parts)}", policy, skipped)
                continue
            try:
                for c in int_cols:
                    parts[c] = int(parts[c])
            except ValueError as e:
                _bad(path, lineno, f"non-integer field ({e})", policy, skipped)
                continue
            if keep is None or keep(parts):
                rows.append(parts)
    _report_skips(path, skipped[0])
    return rows


class AmazonGroceryDataModule(CTRDataModule):
    """Amazon Grocery (ReChorus copy): ``root/interactions.tsv`` (``user_id, item_id, time``,
    unix seconds) and ``root/item_category.tsv`` (``item_id, i_category``). ``time_gap``
    sessions use ``session_gap_days``. Same protocol as MovieLens; ``min_train_position``
    defaults to 1 because histories are short (median 5)."""

    DOWNLOAD = (
        "ReChorus's Grocery_and_Gourmet_Food (https://github.com/THUwangcy/ReChorus, data/): "
        "interactions.tsv and item_category.tsv"
    )

    def __init__(
        self,
        root: str = "amazon-grocery",
        train_per_user: int = 20,
        min_train_position: int = 1,
        session_gap_days: float = 1.0,
        long_len: int = 50,
        num_sessions: int = 4,
        session_len: int = 5,
        session_split: Literal["chunk", "time_gap"] = "time_gap",
        long_includes_short: bool = False,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        cache_dir: Optional[str] = None,
        on_bad_line: OnBadLine = "error",
        negative_sampling: NegativeSampling = "uniform",
        test_per_user: int = 1,
    ) -> None:
        super().__init__(long_len, num_sessions, session_len, session_split, session_gap_days * 86_400.0, long_includes_short,
                         seed, batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, cache_dir, on_bad_line)
        check_negative_sampling(negative_sampling)
        self.negative_sampling = negative_sampling
        self.test_per_user = test_per_user
        self.root, self.train_per_user, self.min_train_position = root, train_per_user, min_train_position

    def _source_name(self) -> str:
        return "amazon-grocery"

    def _raw_files(self) -> list[str]:
        return [os.path.join(self.root, "interactions.tsv"), os.path.join(self.root, "item_category.tsv")]

    def _content_options(self) -> dict[str, object]:
        return {"train_per_user": self.train_per_user, "min_train_position": self.min_train_position,
                "negative_sampling": self.negative_sampling,
                "test_per_user": self.test_per_user}

    def _build(self):
        inter, cats = self._raw_files()
        rows = np.array(_read_int_table(inter, "\t", 3, ["user_id", "item_id", "time"], self.on_bad_line), dtype=np.int64).reshape(-1, 3)
        cate_rows = _read_int_table(cats, "\t", 2, ["item_id", "i_category"], self.on_bad_line)
        users, seqs, times = _sequences_from_log(rows[:, 0], rows[:, 1], rows[:, 2])
        return build_ctr_samples(users, seqs, {i: c for i, c in cate_rows}, self.sequence_options, seed=self.seed,
                                 train_per_user=self.train_per_user, min_train_position=self.min_train_position, times=times,
                                 negative_sampling=self.negative_sampling, test_per_user=self.test_per_user)


class TaobaoDataModule(CTRDataModule):
    """Taobao UserBehavior format: ``root/UserBehavior.csv``, no header,
    ``user_id,item_id,category_id,behavior_type,timestamp`` (also the format of our Yelp and
    Taobao multi-behaviour logs).

    Which behaviours play which part is set by three lists of behaviour types (the paper's
    heterogeneous setting, appendix G: the long-term interest from one kind of behaviour, the
    sessions from all kinds):

    - ``positive_behaviors``: the behaviours that become samples (the positive target, with a
      sampled negative); test is a user's last one, valid the one before;
    - ``long_behaviors``: the behaviours the long-term sequence holds (default: the positives);
    - ``session_behaviors``: the behaviours the sessions hold (default: the positives); each
      session behaviour carries its type as ``session_behaviors`` in the batch (type ids from 2
      in sorted name order, ``FeatureSpec.num_behaviors`` their count + 2).

    A history holds every earlier behaviour of these kinds; rows of other types are not read.
    Every listed type must occur in the file (a misspelt type would otherwise select nothing).
    """

    DOWNLOAD = (
        "a UserBehavior.csv in the Taobao UserBehavior format (user_id,item_id,category_id,behavior_type,timestamp); "
        "the full Taobao log: https://tianchi.aliyun.com/dataset/649"
    )

    def __init__(
        self,
        root: str = "taobao-userbehavior",
        positive_behaviors: tuple[str, ...] = ("pv", "cart", "fav", "buy"),
        long_behaviors: Optional[tuple[str, ...]] = None,
        session_behaviors: Optional[tuple[str, ...]] = None,
        train_per_user: int = 20,
        min_train_position: int = 20,
        session_gap_seconds: float = 1800.0,
        long_len: int = 100,
        num_sessions: int = 4,
        session_len: int = 5,
        session_split: Literal["chunk", "time_gap"] = "time_gap",
        long_includes_short: bool = False,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        cache_dir: Optional[str] = None,
        on_bad_line: OnBadLine = "error",
        negative_sampling: NegativeSampling = "uniform",
        test_per_user: int = 1,
    ) -> None:
        super().__init__(long_len, num_sessions, session_len, session_split, session_gap_seconds, long_includes_short,
                         seed, batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, cache_dir, on_bad_line)
        check_negative_sampling(negative_sampling)
        self.negative_sampling = negative_sampling
        self.test_per_user = test_per_user
        for name, value in (("positive_behaviors", positive_behaviors), ("long_behaviors", long_behaviors),
                            ("session_behaviors", session_behaviors)):
            if value is not None and (isinstance(value, str) or len(value) == 0):
                raise ValueError(f"{name} must be a non-empty list of behaviour types, got {value!r}")
        self.root = root
        self.positive_behaviors = tuple(sorted(positive_behaviors))
        self.long_behaviors = tuple(sorted(long_behaviors)) if long_behaviors is not None else self.positive_behaviors
        self.session_behaviors = tuple(sorted(session_behaviors)) if session_behaviors is not None else self.positive_behaviors
        self.train_per_user, self.min_train_position = train_per_user, min_train_position

    def _source_name(self) -> str:
        return "taobao"

    def _raw_files(self) -> list[str]:
        return [os.path.join(self.root, "UserBehavior.csv")]

    def _content_options(self) -> dict[str, object]:
        return {"positive_behaviors": list(self.positive_behaviors), "long_behaviors": list(self.long_behaviors),
                "session_behaviors": list(self.session_behaviors), "train_per_user": self.train_per_user,
                "min_train_position": self.min_train_position, "negative_sampling": self.negative_sampling,
                "test_per_user": self.test_per_user}

    def request_features(self) -> RequestFeatures:
        return RequestFeatures(sequence=self.sequence_options, long_behaviors=self.long_behaviors,
                               session_behaviors=self.session_behaviors)

    def _build(self):
        (path,) = self._raw_files()
        wanted = set(self.positive_behaviors) | set(self.long_behaviors) | set(self.session_behaviors)
        found: set[str] = set()

        def keep(row: list) -> bool:
            found.add(row[3])
            return row[3] in wanted

        rows = _read_int_table(path, ",", 5, None, self.on_bad_line, keep=keep, int_cols=(0, 1, 2, 4))
        for name in ("positive_behaviors", "long_behaviors", "session_behaviors"):
            missing = sorted(set(getattr(self, name)) - found)
            if missing:
                raise ValueError(f"{name}: behaviour type(s) {missing} do not occur in {path}; its types are {sorted(found)}")
        type_id = {name: index + FIRST_ID for index, name in enumerate(self.session_behaviors)}
        arr = np.array([(r[0], r[1], r[2], r[4], type_id.get(r[3], OOV_ID), r[3] in self.positive_behaviors,
                         r[3] in self.long_behaviors, r[3] in self.session_behaviors) for r in rows],
                       dtype=np.int64).reshape(-1, 8)
        # Grouped by user in time order (file order breaks ties), as _sequences_from_log does,
        # but keeping every per-row column (types, masks) with its row.
        grouped = arr[np.lexsort((np.arange(len(arr)), arr[:, 3], arr[:, 0]))]
        users, starts = np.unique(grouped[:, 0], return_index=True)
        parts = np.split(grouped, starts[1:]) if len(grouped) else []
        users, times = users.tolist(), [part[:, 3] for part in parts]
        cate_of = {int(i): int(c) for i, c in zip(arr[:, 1], arr[:, 2])}
        splits, spec, vocabularies = build_ctr_samples(
            users, [part[:, 1] for part in parts], cate_of, self.sequence_options, seed=self.seed,
            train_per_user=self.train_per_user, min_train_position=self.min_train_position, times=times,
            negative_sampling=self.negative_sampling, test_per_user=self.test_per_user,
            behaviors=[part[:, 4] for part in parts], num_behaviors=len(type_id) + FIRST_ID,
            positive=[part[:, 5].astype(bool) for part in parts], in_long=[part[:, 6].astype(bool) for part in parts],
            in_sessions=[part[:, 7].astype(bool) for part in parts],
        )
        vocabularies.behaviors = Vocabulary.from_keys(pa.array(list(self.session_behaviors), pa.string()))
        return splits, spec, vocabularies


class AmazonBooksDIENDataModule(CTRDataModule):
    """Amazon Books as split by the DIEN authors: ``root/local_train_splitByUser`` and
    ``root/local_test_splitByUser``, tab-separated ``label, user, item, category, item history,
    category history`` with histories joined by byte 0x02. Vocabularies come from
    ``uid_voc.pkl``/``mid_voc.pkl``/``cat_voc.pkl`` (restricted unpickler; DIEN index ``v`` ->
    our id ``v + 2``) or, when a file is absent, are rebuilt from the train text (sorted strings
    from 2). Unknown strings -> OOV. Valid = the samples of a seeded ``valid_user_fraction`` of
    the train users (by user, so a user is never in both). Sessions are chunks (no times)."""

    DOWNLOAD = "DIEN's data script (https://github.com/mouna99/dien, prepare_data.sh) writes these files"

    def __init__(
        self,
        root: str = "amazon-books-dien",
        valid_user_fraction: float = 0.1,
        long_len: int = 100,
        num_sessions: int = 4,
        session_len: int = 5,
        long_includes_short: bool = False,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        cache_dir: Optional[str] = None,
        on_bad_line: OnBadLine = "error",
    ) -> None:
        super().__init__(long_len, num_sessions, session_len, "chunk", 86_400.0, long_includes_short,
                         seed, batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, cache_dir, on_bad_line)
        if not 0.0 < valid_user_fraction < 1.0:
            raise ValueError(f"valid_user_fraction must be in (0, 1), got {valid_user_fraction}")
        self.root, self.valid_user_fraction = root, valid_user_fraction

    def _source_name(self) -> str:
        return "amazon-books-dien"

    def _raw_files(self) -> list[str]:
        return [os.path.join(self.root, "local_train_splitByUser"), os.path.join(self.root, "local_test_splitByUser")]

    def _vocab_files(self) -> list[str]:
        return [os.path.join(self.root, n) for n in ("uid_voc.pkl", "mid_voc.pkl", "cat_voc.pkl")]

    def _content_options(self) -> dict[str, object]:
        # The optional pickles change content: their presence/size/mtime is part of the key.
        from .cache import file_fingerprint

        return {"valid_user_fraction": self.valid_user_fraction, "vocab_files": file_fingerprint(self._vocab_files())}

    def _read(self, path: str) -> list[tuple[int, str, str, str, list[str], list[str]]]:
        rows, skipped = [], [0]
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 6:
                    _bad(path, lineno, f"expected 6 tab-separated fields, got {len(parts)}", self.on_bad_line, skipped)
                    continue
                items = parts[4].split("\x02") if parts[4] else []
                cates = parts[5].split("\x02") if parts[5] else []
                if parts[0] not in ("0", "1") or len(items) != len(cates):
                    _bad(path, lineno, "label must be 0/1 and both histories of equal length", self.on_bad_line, skipped)
                    continue
                rows.append((int(parts[0]), parts[1], parts[2], parts[3], items, cates))
        _report_skips(path, skipped[0])
        return rows

    def _build(self):
        from .safe_pickle import load_vocabulary

        train_path, test_path = self._raw_files()
        train, test = self._read(train_path), self._read(test_path)
        texts = {
            0: {r[1] for r in train},
            1: {r[2] for r in train} | {i for r in train for i in r[4]},
            2: {r[3] for r in train} | {c for r in train for c in r[5]},
        }
        vocabs = []
        for k, path in enumerate(self._vocab_files()):
            if os.path.exists(path):
                vocabs.append({s: v + FIRST_ID for s, v in load_vocabulary(path).items()})
            else:
                vocabs.append({s: i + FIRST_ID for i, s in enumerate(sorted(texts[k]))})
        uv, iv, cv = vocabs
        users = sorted({r[1] for r in train})
        rng = np.random.default_rng(self.seed)
        n_valid = max(1, int(round(len(users) * self.valid_user_fraction)))
        valid_users = set(np.array(users, dtype=object)[rng.permutation(len(users))[:n_valid]].tolist())
        shapes = {"()": (), "(L,)": (self.sequence_options.long_len,),
                  "(K, N)": (self.sequence_options.num_sessions, self.sequence_options.session_len)}
        out = {}
        for split, rows in (("train", [r for r in train if r[1] not in valid_users]),
                            ("valid", [r for r in train if r[1] in valid_users]), ("test", test)):
            c = {k: [] for k in SAMPLE_COLUMNS}
            raw_ids = {"user_id": [r[1] for r in rows], "item_id": [r[2] for r in rows]}
            for label, u, item, cate, hi, hc in rows:
                h = split_history(np.array([iv.get(x, OOV_ID) for x in hi], np.int64),
                                  np.array([cv.get(x, OOV_ID) for x in hc], np.int64), self.sequence_options)
                c["user"].append(uv.get(u, OOV_ID))
                c["target_item"].append(iv.get(item, OOV_ID))
                c["target_cate"].append(cv.get(cate, OOV_ID))
                c["long_items"].append(h.long_items)
                c["long_cates"].append(h.long_cates)
                c["session_items"].append(h.session_items)
                c["session_cates"].append(h.session_cates)
                c["label"].append(label)
            out[split] = {k: np.asarray(v, np.int64).reshape((-1,) + shapes[SAMPLE_COLUMNS[k]]) for k, v in c.items()}
            out[split].update({k: pa.array(v, pa.string()) for k, v in raw_ids.items()})
        spec = FeatureSpec(num_users=max(uv.values(), default=1) + 1, num_items=max(iv.values(), default=1) + 1,
                           num_cates=max(cv.values(), default=1) + 1, **{k: self.sequence_options.as_key()[k] for k in ("long_len", "num_sessions", "session_len")})
        pairs = [(r[2], r[3]) for r in train] + [(i, c) for r in train for i, c in zip(r[4], r[5])]
        vocabularies = Vocabularies(
            users=_keys_by_index(uv, spec.num_users),
            items=_keys_by_index(iv, spec.num_items),
            cates=_keys_by_index(cv, spec.num_cates),
            item_categories=Vocabularies.catalogue(pa.array([i for i, _ in pairs], pa.string()),
                                                   pa.array([c for _, c in pairs], pa.string())),
        )
        return out, spec, vocabularies


def _keys_by_index(index_of: dict[str, int], size: int) -> Vocabulary:
    """The vocabulary of a ``raw -> index`` map whose indices start at ``FIRST_ID`` (a DIEN
    pickle's, shifted); an index no raw id holds gets a placeholder key no data spells."""
    keys = [f"\x00unused-{index}" for index in range(FIRST_ID, size)]
    for raw, index in index_of.items():
        keys[index - FIRST_ID] = raw
    return Vocabulary.from_keys(pa.array(keys, pa.string()))
