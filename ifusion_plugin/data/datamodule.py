"""The base LightningDataModule: builds (or loads) the cached splits lazily and serves
:class:`~ifusion_plugin.batch.CTRBatch` loaders. The sources are its subclasses (one module
each); the sample protocol most of them share is :mod:`ifusion_plugin.data.protocol`."""

from __future__ import annotations

import logging
import os
import time
from typing import ClassVar, Literal, Optional

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from ..batch import FeatureSpec
from .cache import (
    RAW_ID_COLUMNS,
    SPLITS,
    SplitArrays,
    cache_key,
    load_or_build,
    load_raw_ids,
    raw_ids_path,
    vocabularies_path,
)
from .loading import _BatchDataset, _identity, _RangeBatchSampler, _ResumableDataLoader
from .logs import OnBadLine
from .requests import RequestFeatures
from .sequences import SequenceOptions
from .vocabulary import Vocabularies

__all__ = ["CACHE_ENV", "CTRDataModule", "default_cache_dir"]

log = logging.getLogger(__name__)
CACHE_ENV = "IFUSION_CACHE_DIR"


def default_cache_dir() -> str:
    """The default ``cache_dir``: ``$IFUSION_CACHE_DIR`` if set (``~`` expanded), else
    ``~/.cache/ifusion-plugin``."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "ifusion-plugin"))


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

    ``shuffle_block_rows`` / ``shuffle_window_blocks`` (every subclass): the training order.
    ``0`` (default) shuffles single rows; ``R > 0`` shuffles blocks of ``R`` consecutive cached
    rows and the rows within each window of ``shuffle_window_blocks`` blocks, so that a cache
    larger than memory is read in runs, not one random page per row (``docs/data.md``).
    """

    #: The split served by ``predict_dataloader``: ``"train"``, ``"valid"`` or ``"test"``.
    predict_split: str = "test"

    def __init__(
        self,
        *,
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
        shuffle_block_rows: int = 0,
        shuffle_window_blocks: int = 8,
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
        for name, value, least in (("shuffle_block_rows", shuffle_block_rows, 0),
                                   ("shuffle_window_blocks", shuffle_window_blocks, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        # Training order: single rows (0) or blocks of rows (see loading._RangeBatchSampler).
        self.shuffle_block_rows = shuffle_block_rows
        self.shuffle_window_blocks = shuffle_window_blocks
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
        """A cached split: ``len``, ``column_names``, and ``split[rows]`` -> ``{column: array}``
        of shape ``(len(rows), *shape)`` (:class:`~ifusion_plugin.data.storage.StoredSplit`)."""
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
            sampler=_RangeBatchSampler(len(ds), batch_size, shuffle, self.seed, self.shuffle_block_rows,
                                       self.shuffle_window_blocks),
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
