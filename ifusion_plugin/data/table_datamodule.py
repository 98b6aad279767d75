"""A prepared-sample table (your own samples, a peer library's split, an export) as a DataModule.

:class:`TableDataModule` reads the format of :mod:`ifusion_plugin.data.table` (``train``/``valid``/
``test`` ``.parquet``/``.csv`` files in a directory, or one file with a ``split`` column), builds
the vocabularies from the train split (unseen ids -> ``OOV_ID``), splits each history with
:func:`~ifusion_plugin.data.sequences.split_history` and caches the encoded splits like every
other source. The build streams: Parquet shards are read by row-group batches of
:data:`~ifusion_plugin.data.table.STREAM_ROWS` rows, once for the vocabularies and once to
encode (the next batch read ahead in a thread), and each encoded batch is written as it is
done, so memory holds two batches and the vocabularies, not the table. See ``docs/table.md``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Literal, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..batch import FIRST_ID, FeatureSpec
from .cache import RAW_ID_COLUMNS, SplitArrays, SplitColumns
from .datamodule import CTRDataModule
from .hashing import ID_ENCODINGS, HashedIds
from .requests import RequestFeatures
from .table import (
    SPLITS,
    TableVocabularies,
    Vocabulary,
    build_vocabularies,
    column_names,
    encode_table,
    find_split_files,
    iter_split,
    split_files,
    vocabulary_sizes,
)

__all__ = ["EXPORT_META", "TableDataModule"]

#: Name of the sidecar file the exporter writes beside the split files (vocabulary sizes and
#: provenance); read by ``TableDataModule(encoded_ids=True)``.
EXPORT_META = "export.json"


class TableDataModule(CTRDataModule):
    """CTR samples from a prepared table: one row per impression with its history attached.

    Batches (:class:`~ifusion_plugin.batch.CTRBatch`): ``user``/``target_item``/``target_cate``/
    ``label`` of shape ``(B,)``, ``long_*`` ``(B, L)``, ``session_*`` ``(B, K, N)`` and, when
    ``context_columns`` is not empty, ``context`` ``(B, C)`` with ``C = len(context_columns)``
    (their vocabulary sizes are ``feature_spec.context_cardinalities``). Rows keep file order;
    :meth:`~ifusion_plugin.data.CTRDataModule.raw_ids` gives each row's ``user_id`` and
    ``item_id`` as the file holds them (integers as int64, strings as ``str``).

    Args:
        root: a directory holding ``train``, ``valid`` and ``test`` files (``.parquet`` or
            ``.csv``), or one ``.parquet``/``.csv`` file with a ``split`` column.
        context_columns: extra categorical columns given to the head as context features, in
            this order.
        list_separator: separator of the list columns in CSV files (a space by default, where
            any run of whitespace separates).
        encoded_ids: the ids are already vocabulary indices (0 pad, 1 OOV, known ids from 2),
            as ``python -m ifusion_plugin.data.export`` writes them: they are used unchanged
            instead of building vocabularies from train, with the sizes of ``root/export.json``
            when present (else the largest id over all splits + 1).
        id_encoding: ``"vocabulary"`` (the default: vocabularies of the ids train sees, unseen
            ids OOV) or ``"hash"``: users, items, categories and context values are indexed by
            a stable hash of the raw id modulo ``hash_buckets``
            (:mod:`~ifusion_plugin.data.hashing`): no vocabulary pass, no vocabulary in memory,
            for id spaces too large or too open to enumerate; colliding ids share a row, and
            serving requests must then name each candidate's category (no item catalogue is
            kept). Behaviour types keep a vocabulary.
        hash_buckets: buckets per hashed id kind (the embedding tables get ``hash_buckets + 2``
            rows); used with ``id_encoding="hash"``.
        long_len, num_sessions, session_len, session_split, session_gap_seconds,
            long_includes_short: the long/short split, see
            :class:`~ifusion_plugin.data.sequences.SequenceOptions`; ``time_gap`` needs a
            ``history_timestamps`` column.
        seed: seed of the train shuffling (seed + epoch).
        batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers: the loaders.
        shuffle_block_rows, shuffle_window_blocks: the training order (block shuffle for caches
            larger than memory; see :class:`~ifusion_plugin.data.CTRDataModule`).
        long_behaviors, session_behaviors: with a ``behavior_history`` column, the behaviour
            types (as the file spells them) the long-term sequence and the sessions may hold
            (``None``: all); the paper's heterogeneous setting takes the long-term sequence from
            one kind and the sessions from all. Batches then carry ``session_behaviors``.
        on_bad_line: a CSV line with another number of fields raises naming the file and line
            (``"error"``) or is skipped and counted in a warning (``"skip"``).
        cache_dir: where the encoded splits are cached (``None``: the base class default,
            ``$IFUSION_CACHE_DIR`` or ``~/.cache/ifusion-plugin``); the key covers every option
            above that changes content, the resolved ``root`` and the files' sizes and mtimes.

    Raises:
        FileNotFoundError: (on first use) no split files at ``root``.
        ValueError: (on first use) a file breaks the format; the message names the file.
    """

    def __init__(
        self,
        root: str,
        context_columns: Sequence[str] = (),
        list_separator: str = " ",
        encoded_ids: bool = False,
        long_behaviors: Optional[Sequence[Union[int, str]]] = None,
        session_behaviors: Optional[Sequence[Union[int, str]]] = None,
        id_encoding: Literal["vocabulary", "hash"] = "vocabulary",
        hash_buckets: int = 1 << 20,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if id_encoding not in ID_ENCODINGS:
            raise ValueError(f"id_encoding must be one of {ID_ENCODINGS}, got {id_encoding!r}")
        if isinstance(hash_buckets, bool) or not isinstance(hash_buckets, int) or hash_buckets < 1:
            raise ValueError(f"hash_buckets must be a positive int, got {hash_buckets!r}")
        if id_encoding == "hash" and encoded_ids:
            raise ValueError("id_encoding='hash' and encoded_ids=True exclude each other: encoded ids are indices already")
        for name, value in (("long_behaviors", long_behaviors), ("session_behaviors", session_behaviors)):
            if value is not None and (isinstance(value, str) or len(value) == 0):
                raise ValueError(f"{name} must be a non-empty list of behaviour types, got {value!r}")
        self.long_behaviors = None if long_behaviors is None else list(long_behaviors)
        self.session_behaviors = None if session_behaviors is None else list(session_behaviors)
        if not list_separator:
            raise ValueError("list_separator must not be empty")
        if len(set(context_columns)) != len(context_columns):
            raise ValueError(f"context_columns has duplicates: {list(context_columns)}")
        self.root = root
        self.context_columns = list(context_columns)
        self.list_separator = list_separator
        self.encoded_ids = encoded_ids
        self.id_encoding = id_encoding
        self.hash_buckets = hash_buckets

    # --- CTRDataModule hooks ---------------------------------------------------------------
    def _source_name(self) -> str:
        return "table"

    def _raw_files(self) -> list[str]:
        # Shards one by one: the cache key covers each file's size and mtime.
        files = sorted({f for path in find_split_files(self.root).values() for f in split_files(path)})
        meta = self._meta_path()
        if self.encoded_ids and meta is not None:
            files.append(meta)
        return files

    def _content_options(self) -> dict[str, object]:
        return {
            "root": os.path.abspath(self.root),
            "context_columns": self.context_columns,
            "list_separator": self.list_separator,
            "encoded_ids": self.encoded_ids,
            "long_behaviors": self.long_behaviors,
            "session_behaviors": self.session_behaviors,
            "on_bad_line": self.on_bad_line,
            **({"id_encoding": "hash", "hash_buckets": self.hash_buckets} if self.id_encoding == "hash" else {}),
        }

    def _batches(self, split: str) -> Iterator[pa.Table]:
        """The validated batches of ``split``, checked for the context columns."""
        for table in iter_split(self.root, split, self.list_separator, self.on_bad_line):
            for name in self.context_columns:
                if name not in table.column_names:
                    raise ValueError(
                        f"{find_split_files(self.root)[split]}: context_columns names {name!r}, which this file does not "
                        f"have (columns: {table.column_names})"
                    )
            yield table

    def _encoded(self, split: str, vocabularies: TableVocabularies) -> Iterator[SplitColumns]:
        for table in self._batches(split):
            yield {
                **encode_table(table, vocabularies, self.sequence_options, self.context_columns,
                               self.long_behaviors, self.session_behaviors, ragged=True),
                # Kept as written (ints or strings), so predictions name ids unseen in train too.
                **{name: table[name] for name in RAW_ID_COLUMNS},
            }

    def _vocabularies(self) -> TableVocabularies:
        if self.encoded_ids:
            return self._identity_vocabularies()
        if self.id_encoding == "vocabulary":
            return build_vocabularies(self._batches("train"), self.context_columns)
        # Hashed ids need no pass over the data, except for the (few) behaviour types.
        first = next(self._batches("train"))
        behaviors = None
        if "behavior_history" in first.column_names:
            behaviors = Vocabulary(pa.chunked_array(
                [pc.unique(pc.list_flatten(batch["behavior_history"])) for batch in self._batches("train")]))
        hashed = HashedIds(self.hash_buckets)
        return TableVocabularies(users=hashed, items=hashed, cates=hashed if "cate_id" in first.column_names else None,
                                 context={name: hashed for name in self.context_columns}, behaviors=behaviors)

    def _build(self) -> tuple[SplitArrays, FeatureSpec, TableVocabularies]:
        vocabularies = self._vocabularies()
        # Generators: the cache writes each encoded batch before the next one is read.
        splits = {split: self._encoded(split, vocabularies) for split in SPLITS}
        options = self.sequence_options
        spec = FeatureSpec(
            **vocabulary_sizes(vocabularies, self.context_columns),  # type: ignore[arg-type]
            long_len=options.long_len,
            num_sessions=options.num_sessions,
            session_len=options.session_len,
        )
        return splits, spec, vocabularies

    def request_features(self) -> RequestFeatures:
        """The table's history options, context columns and behaviour filters; history categories
        where the train split has a ``cate_history`` column."""
        train = split_files(find_split_files(self.root)["train"])[0]
        return RequestFeatures(
            sequence=self.sequence_options,
            context_columns=tuple(self.context_columns),
            long_behaviors=None if self.long_behaviors is None else tuple(self.long_behaviors),
            session_behaviors=None if self.session_behaviors is None else tuple(self.session_behaviors),
            history_categories="cate_history" in column_names(train),
        )

    # --- encoded ids -----------------------------------------------------------------------
    def _meta_path(self) -> Optional[str]:
        directory = self.root if os.path.isdir(self.root) else os.path.dirname(os.path.abspath(self.root))
        path = os.path.join(directory, EXPORT_META)
        return path if os.path.isfile(path) else None

    def _identity_vocabularies(self) -> TableVocabularies:
        """Vocabularies mapping each id ``2 <= v < size`` to itself and anything else to OOV.

        Sizes come from ``export.json`` (``feature_spec``) when present, else the largest id over
        all splits + 1.
        """
        sizes: dict[str, int] = {}
        meta = self._meta_path()
        if meta is not None:
            with open(meta, encoding="utf-8") as handle:
                spec = json.load(handle).get("feature_spec", {})
            sizes = {key: int(spec[field]) for key, field in
                     (("user_id", "num_users"), ("item_id", "num_items"), ("cate_id", "num_cates")) if field in spec}

        # One streamed pass over every split: the largest id of each column and which columns exist.
        tops: dict[str, int] = {}
        train_columns: set[str] = set()
        id_columns = ["user_id", "item_id", "item_history", "cate_id", "cate_history", "behavior_history", *self.context_columns]
        for split in SPLITS:
            for table in self._batches(split):
                if split == "train":
                    train_columns |= set(table.column_names)
                for name in id_columns:
                    if name not in table.column_names:
                        continue
                    column = table[name]
                    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                        column = pc.list_flatten(column)
                    if len(column) == 0:
                        continue
                    try:
                        value = pc.max(column.cast(pa.int64())).as_py()
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                        raise ValueError(f"encoded_ids=True needs integer ids; column {name!r}: {error}") from error
                    if value is not None:
                        tops[name] = max(tops.get(name, value), int(value))

        def largest(columns: Sequence[str]) -> int:
            return max([FIRST_ID - 1] + [tops[name] for name in columns if name in tops]) + 1

        def identity(size: int) -> Vocabulary:
            return Vocabulary(pa.array(np.arange(FIRST_ID, max(size, FIRST_ID), dtype=np.int64)))

        has_cates = "cate_id" in train_columns
        return TableVocabularies(
            users=identity(sizes.get("user_id", largest(["user_id"]))),
            items=identity(sizes.get("item_id", largest(["item_id", "item_history"]))),
            cates=identity(sizes.get("cate_id", largest(["cate_id", "cate_history"]))) if has_cates else None,
            context={name: identity(largest([name])) for name in self.context_columns},
            behaviors=identity(largest(["behavior_history"])) if "behavior_history" in train_columns else None,
        )
