"""Bring your own samples: read a prepared CTR sample table into the common batch layout.

The format (one row per impression, the behaviour history attached):

======================  ==========================  =========================================
column                  type                        meaning
======================  ==========================  =========================================
``user_id``             int or string, required     the user
``item_id``             int or string, required     the candidate item
``label``               0/1 (int, bool or float)    clicked or not, required
``item_history``        list of item ids, required  earlier behaviours, oldest first; may be empty
``cate_id``             int or string, optional     the candidate's category
``cate_history``        list, optional              categories of ``item_history``
``history_timestamps``  list of unix seconds, opt.  times of ``item_history`` (time-gap sessions)
``behavior_history``    list of ints/strings, opt.  behaviour type of each ``item_history`` entry
                                                    (click, cart, buy...): sessions carry it
``timestamp``           unix seconds, optional      time of the impression (kept, not used)
``split``               train / valid / test, opt.  when all splits are in one file
any other column        int or string               a context feature, if named in ``context_columns``
======================  ==========================  =========================================

Splits come either as separate files (``train``, ``valid``, ``test`` with the ending
``.parquet`` or ``.csv``) in one directory, or as one file with a ``split`` column. In CSV a
list column is a string of ids separated by ``list_separator`` (a space by default).

Vocabularies are built from the train split only (candidates and histories); an id unseen in
train maps to the out-of-vocabulary index ``OOV_ID`` (1) and never raises. Missing category
columns give every item the category ``OOV_ID``.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..batch import FIRST_ID, OOV_ID, PAD_ID
from .hashing import HashedIds
from .logs import OnBadLine, read_delimited
from .sequences import SequenceOptions, chunk_ranges, split_histories, split_history
from .storage import Ragged
from .vocabulary import Vocabularies, Vocabulary, distinct

__all__ = [
    "REQUIRED_COLUMNS",
    "LIST_COLUMNS",
    "SPLITS",
    "Vocabulary",
    "TableVocabularies",
    "find_split_files",
    "split_files",
    "column_names",
    "read_split_tables",
    "validate_table",
    "build_vocabularies",
    "TrainVocabularies",
    "encode_table",
    "iter_split",
]

REQUIRED_COLUMNS = ("user_id", "item_id", "label", "item_history")
LIST_COLUMNS = ("item_history", "cate_history", "history_timestamps", "behavior_history")
SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
_ENDINGS = (".parquet", ".csv")


#: The vocabularies of a table dataset (the name this module gave them before they were shared).
TableVocabularies = Vocabularies


def split_files(path: str) -> list[str]:
    """The files of one split: ``[path]`` for a file, or the shards of a directory (what Spark's
    ``df.write.parquet(dir)`` leaves: ``part-*.parquet``, sorted by name; ``_SUCCESS`` and other
    names starting with ``_`` or ``.`` are ignored).

    Raises:
        FileNotFoundError: a directory without ``.parquet`` or ``.csv`` shards, or mixing both.
    """
    if not os.path.isdir(path):
        return [path]
    shards = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(_ENDINGS) and not n.startswith(("_", ".")))
    endings = {os.path.splitext(shard)[1] for shard in shards}
    if not shards or len(endings) > 1:
        found = "both .parquet and .csv shards" if shards else "no .parquet or .csv shards"
        raise FileNotFoundError(f"split directory {path!r} must hold .parquet or .csv shards of one kind; found {found}")
    return shards


def find_split_files(root: str) -> dict[str, str]:
    """Locate the split files of a table dataset.

    Args:
        root: a directory with ``train``/``valid``/``test`` files (``.parquet`` or ``.csv``) or
            directories of shards (``train/part-*.parquet``, as a Spark job writes them; see
            :func:`split_files`), or one ``.parquet``/``.csv`` file with a ``split`` column.

    Returns:
        ``{"train": path, "valid": path, "test": path}`` (a file or a shard directory each); the
        three paths are the same file when the splits come from a ``split`` column.

    Raises:
        FileNotFoundError: nothing usable at ``root``, naming what was looked for.
    """
    if os.path.isfile(root):
        if not root.endswith(_ENDINGS):
            raise FileNotFoundError(f"root {root!r} must be a directory or a .parquet/.csv file")
        return {split: root for split in SPLITS}
    if not os.path.isdir(root):
        raise FileNotFoundError(f"root {root!r} does not exist (expected a directory with train/valid/test files)")
    found: dict[str, str] = {}
    for split in SPLITS:
        for ending in _ENDINGS:
            path = os.path.join(root, split + ending)
            if os.path.isfile(path):
                found[split] = path
                break
        else:
            if os.path.isdir(os.path.join(root, split)):
                found[split] = os.path.join(root, split)
    if len(found) == len(SPLITS):
        return found
    singles = [os.path.join(root, name) for name in sorted(os.listdir(root)) if name.endswith(_ENDINGS)]
    if not found and len(singles) == 1:
        return {split: singles[0] for split in SPLITS}
    missing = [split for split in SPLITS if split not in found]
    raise FileNotFoundError(
        f"root {root!r} must hold train, valid and test files (.parquet or .csv) or a single file with a "
        f"'split' column; missing {missing}"
    )


def _read_file(path: str, list_separator: str, on_bad_line: OnBadLine = "error") -> pa.Table:
    if path.endswith(".parquet"):
        return pq.read_table(path)
    table = read_delimited(path, ",", None, {}, on_bad_line, quoting=True)
    for name in LIST_COLUMNS:
        if name in table.column_names:
            column = table[name]
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type):
                text = pc.fill_null(column.cast(pa.string()), "")
                stripped = pc.utf8_trim_whitespace(text)
                split = pc.split_pattern(stripped, pattern=list_separator) if list_separator != " " else pc.utf8_split_whitespace(stripped)
                # An empty string is an empty history, not a list holding "".
                split = pc.if_else(pc.equal(stripped, ""), pa.scalar([], type=pa.list_(pa.string())), split)
                table = table.set_column(table.column_names.index(name), name, split)
    return table


#: Rows per batch when a split is streamed: the build holds two batches' columns at a time
#: (the one it encodes and the one read ahead).
STREAM_ROWS = 65536


def _file_batches(path: str, list_separator: str, on_bad_line: OnBadLine, rows: int) -> Iterator[pa.Table]:
    """A file's rows ``rows`` at a time: Parquet by row-group batches (never the whole file in
    memory), CSV a file at a time (a CSV shard is bounded by how its writer sharded it)."""
    if path.endswith(".parquet"):
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as error:  # a truncated or foreign file: name it
            raise ValueError(f"{path}: not a readable Parquet file ({error})") from None
        if parquet.metadata.num_rows == 0:
            yield parquet.read()  # no batches, but the columns (an empty split is still a split)
            return
        for batch in parquet.iter_batches(batch_size=rows):
            yield pa.Table.from_batches([batch])
        return
    table = _read_file(path, list_separator, on_bad_line)
    for start in range(0, max(table.num_rows, 1), rows):
        yield table.slice(start, rows)


def iter_split(root: str, split: str, list_separator: str = " ", on_bad_line: OnBadLine = "error",
               rows: Optional[int] = None) -> Iterator[pa.Table]:
    """Stream one split of a table dataset as validated tables of at most ``rows`` rows.

    Shards are read in name order, each Parquet file by row-group batches, the next batch read
    ahead in a thread while the caller works on the current one, so memory holds at most two
    batches, not the split. A row named in an error counts from the start of its file.

    Args:
        root: see :func:`find_split_files`.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        list_separator, on_bad_line: as for :func:`read_split_tables`.
        rows: rows per batch (default :data:`STREAM_ROWS`).

    Raises:
        FileNotFoundError: see :func:`find_split_files`.
        ValueError: a validation error from :func:`validate_table`, or a single file whose
            ``split`` column is missing or holds an unknown value.
    """
    return _read_ahead(_split_batches(root, split, list_separator, on_bad_line, rows))


_END = object()


def _read_ahead(batches: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``batches``, with the next one read in a thread while the caller works on the current one:
    decoding Parquet (and validating in Arrow) releases the GIL, so a build's reading overlaps its
    encoding. At most two batches are held; an error is raised where the batch would have come."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ifusion-read-ahead") as pool:
        pending = pool.submit(next, batches, _END)
        while True:
            batch = pending.result()
            if batch is _END:
                return
            pending = pool.submit(next, batches, _END)
            yield batch


def _split_batches(root: str, split: str, list_separator: str, on_bad_line: OnBadLine,
                   rows: Optional[int]) -> Iterator[pa.Table]:
    """:func:`iter_split` without the read-ahead."""
    files = find_split_files(root)
    single = len(set(files.values())) == 1
    aliases = pa.array([alias for alias, target in _SPLIT_ALIASES.items() if target == split])
    for shard in split_files(files[split]):
        first_row = 0
        for table in _file_batches(shard, list_separator, on_bad_line, rows or STREAM_ROWS):
            validate_table(table, shard, first_row=first_row)
            first_row += table.num_rows
            if single:
                table = table.filter(pc.is_in(_split_names(table, shard), value_set=aliases))
            yield table


def _split_names(table: pa.Table, path: str) -> pa.ChunkedArray:
    """The lower-cased ``split`` column of a single-file table, checked against the known names."""
    if "split" not in table.column_names:
        raise ValueError(f"{path}: a single-file table needs a 'split' column with values train/valid/test")
    names = pc.utf8_lower(table["split"].cast(pa.string()))
    unknown = pc.unique(pc.filter(names, pc.invert(pc.is_in(names, value_set=pa.array(list(_SPLIT_ALIASES))))))
    if len(unknown):
        raise ValueError(f"{path}: column 'split' must hold train/valid/test (or val/validation), got {unknown.to_pylist()[:5]}")
    return names


def column_names(path: str) -> list[str]:
    """The column names of one split file (a Parquet schema or a CSV header), without reading rows."""
    if path.endswith(".parquet"):
        return list(pq.read_schema(path).names)
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])


def read_split_tables(root: str, list_separator: str = " ", on_bad_line: OnBadLine = "error") -> dict[str, pa.Table]:
    """Read the three splits of a table dataset, validated.

    Args:
        root: see :func:`find_split_files`.
        list_separator: separator of list columns in CSV files.
        on_bad_line: a CSV line with another number of fields raises naming the file and line
            (``"error"``) or is skipped and counted in a warning (``"skip"``).

    Returns:
        ``{"train": table, "valid": table, "test": table}``.

    Raises:
        FileNotFoundError: see :func:`find_split_files`.
        ValueError: a validation error from :func:`validate_table`, or a single file whose
            ``split`` column is missing or holds an unknown value.
    """
    # The streamed reader, gathered: one reading and validation path for both.
    tables = {}
    for split in SPLITS:
        batches = list(iter_split(root, split, list_separator, on_bad_line))
        try:
            tables[split] = pa.concat_tables(batches, promote_options="default")
        except pa.ArrowInvalid as error:
            raise ValueError(f"{find_split_files(root)[split]}: the shards' schemas differ ({error})") from None
    return tables


def validate_table(table: pa.Table, source: str, *, labelled: bool = True, first_row: int = 0) -> None:
    """Check a table against the format; raise ``ValueError`` naming the file, column and row.

    Empty histories are allowed (the zero-data case). ``labelled=False`` checks serving requests,
    which have no ``label``. ``first_row``: the file row of the table's first row (a streamed
    batch), added to the rows named.
    """
    required = [name for name in REQUIRED_COLUMNS if labelled or name != "label"]
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise ValueError(
            f"{source}: missing required column(s) {missing}; required {required}, "
            f"found {table.column_names}"
        )
    for name in ("user_id", "item_id"):
        column = table[name]
        if not (pa.types.is_integer(column.type) or pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise ValueError(f"{source}: column {name!r} must hold integers or strings, got type {column.type}")
        if column.null_count:
            row = first_row + _first_row(pc.is_null(column))
            raise ValueError(f"{source}: column {name!r} has a missing value at row {row}")
    if "label" in table.column_names:
        _validate_labels(table["label"], source, first_row)
    for name in LIST_COLUMNS:
        if name not in table.column_names:
            continue
        column = table[name]
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            raise ValueError(f"{source}: column {name!r} must be a list column (a list of ids per row), got type {column.type}")
        if column.null_count:
            row = first_row + _first_row(pc.is_null(column))
            raise ValueError(f"{source}: column {name!r} is null at row {row} (write an empty list for no history)")
    lengths = pc.list_value_length(table["item_history"])
    for name in ("cate_history", "history_timestamps", "behavior_history"):
        if name in table.column_names:
            differs = pc.not_equal(pc.list_value_length(table[name]), lengths)
            if pc.any(differs).as_py():
                row = _first_row(differs)
                raise ValueError(
                    f"{source}: column {name!r} must have as many entries as 'item_history' in every row; "
                    f"row {first_row + row} has {pc.list_value_length(table[name])[row].as_py()} vs {lengths[row].as_py()}"
                )
    if "history_timestamps" in table.column_names:
        values = pc.list_flatten(table["history_timestamps"])
        if len(values) and not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
            raise ValueError(f"{source}: column 'history_timestamps' must hold numbers (unix seconds), got {values.type}")


def _validate_labels(column: pa.ChunkedArray, source: str, first_row: int = 0) -> None:
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type)):
        raise ValueError(f"{source}: column 'label' must be 0/1 numbers or booleans, got type {column.type}")
    if column.null_count:
        raise ValueError(f"{source}: column 'label' has a missing value at row {first_row + _first_row(pc.is_null(column))}")
    if pa.types.is_boolean(column.type):
        return
    outside = pc.invert(pc.is_in(column.cast(pa.float64()), value_set=pa.array([0.0, 1.0])))
    if pc.any(outside).as_py():
        row = _first_row(outside)
        raise ValueError(f"{source}: column 'label' must be 0 or 1; row {first_row + row} holds {column[row].as_py()!r}")


def _first_row(flags: pa.ChunkedArray | pa.Array) -> int:
    return int(np.flatnonzero(pc.fill_null(flags, False).to_numpy(zero_copy_only=False))[0])


def _joined(*columns: "pa.Array | pa.ChunkedArray") -> pa.ChunkedArray:
    """The columns one after the other, their chunks reused (``pa.chunked_array`` given a
    ChunkedArray converts it value by value through Python: seconds per million values)."""
    chunks = [chunk for column in columns for chunk in (column.chunks if isinstance(column, pa.ChunkedArray) else [column])]
    return pa.chunked_array(chunks, type=chunks[0].type if chunks else None)


def build_vocabularies(train: "pa.Table | Iterable[pa.Table]", context_columns: Sequence[str] = ()) -> TableVocabularies:
    """Vocabularies from the train split (a table, or its batches as :func:`iter_split` streams
    them: memory then holds the distinct ids, not the split); candidates and histories share the
    item space."""
    vocabularies = TrainVocabularies(context_columns)
    for table in [train] if isinstance(train, pa.Table) else train:
        vocabularies.add(table)
    return vocabularies.finish()


class TrainVocabularies:
    """Collects the distinct ids of the train split batch by batch (:func:`build_vocabularies`).

    Args:
        context_columns: the context columns to build vocabularies for.
    """

    def __init__(self, context_columns: Sequence[str] = ()) -> None:
        self.context_columns = list(context_columns)
        self._distinct: dict[str, list[pa.Array]] = {}
        self._catalogues: list[pa.Table] = []
        self._columns: Optional[list[str]] = None

    #: Batches' distinct ids kept apart before they are merged: memory stays near the size of
    #: the vocabularies instead of growing with the number of batches.
    MERGE_EVERY = 8

    def _keep(self, name: str, values: "pa.Array | pa.ChunkedArray", unique: bool = False) -> None:
        """Keep ``values``' distinct ids for ``name`` (``unique``: they are distinct already)."""
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        parts = self._distinct.setdefault(name, [])
        parts.append(values if unique else distinct(values))
        if len(parts) >= self.MERGE_EVERY:
            self._distinct[name] = [distinct(self._merged(name, parts))]

    @staticmethod
    def _merged(name: str, parts: list[pa.Array]) -> pa.Array:
        try:
            return pa.concat_arrays([part.cast(parts[0].type) for part in parts])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise ValueError(f"the train split's {name} ids change type between files or batches "
                             f"(first {parts[0].type}): {error}") from None

    def add(self, train: pa.Table) -> None:
        """Take in one validated batch of the train split."""
        for name in self.context_columns:
            if name not in train.column_names:
                raise ValueError(f"context_columns names {name!r}, which the table does not have (columns: {train.column_names})")
        columns = [name for name in ("cate_id", "cate_history", "behavior_history") if name in train.column_names]
        if self._columns is None:
            self._columns = columns
        elif columns != self._columns:
            raise ValueError(f"the train split's files differ in their optional columns: {self._columns} vs {columns}")
        history = pc.list_flatten(train["item_history"]).cast(train["item_id"].type)
        self._keep("users", train["user_id"])
        items_kept = False
        if "cate_id" in train.column_names:
            cates = [train["cate_id"]]
            paired_items = [train["item_id"]]
            if "cate_history" in train.column_names:
                cates.append(pc.list_flatten(train["cate_history"]).cast(train["cate_id"].type))
                paired_items.append(history)
            for values in cates:
                self._keep("cates", values)
            # Each batch's last pair per item (candidates, then histories); the batches'
            # catalogues are reduced the same way, so a later batch's pair wins.
            catalogue = Vocabularies.catalogue(_joined(*paired_items), _joined(*cates))
            self._catalogues.append(catalogue)
            if len(self._catalogues) >= self.MERGE_EVERY:
                self._catalogues = [self._catalogue()]
            # Pairing every item (candidates and histories) with a category, none null, the
            # catalogue lists the batch's distinct items: no second pass over them.
            if len(paired_items) == 2 and not any(values.null_count for values in cates):
                self._keep("items", catalogue["item"], unique=True)
                items_kept = True
        if not items_kept:
            self._keep("items", train["item_id"])
            self._keep("items", history)
        for name in self.context_columns:
            self._keep(f"context:{name}", train[name])
        if "behavior_history" in train.column_names:
            self._keep("behaviors", pc.list_flatten(train["behavior_history"]))

    def _catalogue(self) -> pa.Table:
        # The batches' catalogues in order, reduced to each item's last pair.
        catalogue = pa.concat_tables(self._catalogues, promote_options="default")
        return Vocabularies.catalogue(catalogue["item"], catalogue["cate"])

    def _vocabulary(self, name: str) -> Vocabulary:
        parts = self._distinct.get(name, [])
        return Vocabulary(self._merged(name, parts) if parts else pa.array([], type=pa.int64()))

    def finish(self) -> TableVocabularies:
        """The vocabularies of everything added."""
        columns = self._columns or []
        catalogue = self._catalogue() if self._catalogues else None
        return Vocabularies(
            users=self._vocabulary("users"),
            items=self._vocabulary("items"),
            cates=self._vocabulary("cates") if "cate_id" in columns else None,
            context={name: self._vocabulary(f"context:{name}") for name in self.context_columns},
            behaviors=self._vocabulary("behaviors") if "behavior_history" in columns else None,
            item_categories=catalogue,
        )


def encode_table(
    table: pa.Table,
    vocabularies: TableVocabularies,
    options: SequenceOptions,
    context_columns: Sequence[str] = (),
    long_behaviors: Optional[Sequence[object]] = None,
    session_behaviors: Optional[Sequence[object]] = None,
    ragged: bool = False,
) -> dict[str, "np.ndarray | Ragged"]:
    """Encode a validated table into the stored sample columns of :data:`~ifusion_plugin.batch.SAMPLE_COLUMNS`.

    Returns:
        Columns ``user``, ``target_item``, ``target_cate``, ``label`` of shape ``(R,)``,
        ``long_items``/``long_cates`` of shape ``(R, L)``, ``session_items``/``session_cates``
        of shape ``(R, K, N)``, ``context`` of shape ``(R, C)`` when ``context_columns`` is
        not empty, and ``session_behaviors`` of shape ``(R, K, N)`` when the table has a
        ``behavior_history`` column. ``long_behaviors`` and ``session_behaviors`` (raw type
        values; ``None``: all) select the history entries the long-term sequence and the
        sessions may hold, as the Taobao-format loader does. With ``ragged`` the history and
        session columns come as :class:`~ifusion_plugin.data.storage.Ragged` (the cache's
        form: each row's behaviours without the padding, no padded array made) where the split
        allows it (``chunk`` sessions, no behaviour filters), else padded as above.

    Raises:
        ValueError: ``time_gap`` sessions without a ``history_timestamps`` column, or behaviour
            filters without a ``behavior_history`` column.
    """
    rows = table.num_rows
    fast = options.session_split == "chunk" and long_behaviors is None and session_behaviors is None
    if ragged and fast:
        histories = _ragged_histories(table, vocabularies, options)
    else:
        histories = _padded_histories(table, vocabularies, options, long_behaviors, session_behaviors)
    if vocabularies.cates is not None and "cate_id" in table.column_names:
        target_cate = vocabularies.cates.encode(table["cate_id"])
    else:
        target_cate = np.full(rows, OOV_ID, dtype=np.int64)
    columns: dict[str, "np.ndarray | Ragged"] = {
        "user": vocabularies.users.encode(table["user_id"]),
        "target_item": vocabularies.items.encode(table["item_id"]),
        "target_cate": target_cate,
        **histories,
        # Requests at serving have no label.
        "label": (table["label"].cast(pa.float32()).to_numpy(zero_copy_only=False).astype(np.float32)
                  if "label" in table.column_names else np.zeros(rows, dtype=np.float32)),
    }
    if context_columns:
        columns["context"] = np.stack([vocabularies.context[name].encode(table[name]) for name in context_columns], axis=1)
    return columns


def _history_values(table: pa.Table, name: str, like: Optional[str] = None) -> pa.Array:
    """The flattened list column ``name`` (every row's values in order), cast to ``like``'s type:
    histories spell ids as the candidates do (a CSV history is text even for integer ids)."""
    flat = pc.list_flatten(table[name].combine_chunks())
    return flat.cast(table[like].type) if like is not None and len(flat) else flat


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concat(arange(s, s + n) for s, n in zip(starts, lengths))`` without a loop."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)


def _ragged_histories(table: pa.Table, vocabularies: TableVocabularies, options: SequenceOptions) -> dict[str, Ragged]:
    """The history and session columns as :class:`Ragged` slices (``chunk`` sessions, no
    behaviour filters): only the behaviours a row keeps are encoded."""
    history = table["item_history"].combine_chunks()
    offsets = history.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    long_begin, long_end, short_begin = chunk_ranges(lengths, options)
    keep_begin = np.minimum(long_begin, short_begin)
    kept = pa.array(_ranges(offsets[:-1] - offsets[0] + keep_begin, lengths - keep_begin))
    # Each row's kept behaviours, encoded once; the parts are slices of them.
    kept_lengths = lengths - keep_begin
    kept_starts = np.cumsum(kept_lengths) - kept_lengths
    jobs = {"items": (vocabularies.items, "item_history", "item_id")}
    if vocabularies.cates is not None and "cate_history" in table.column_names:
        jobs["cates"] = (vocabularies.cates, "cate_history", None)
    if "behavior_history" in table.column_names:
        assert vocabularies.behaviors is not None, "vocabularies built from a table without behavior_history"
        jobs["behaviors"] = (vocabularies.behaviors, "behavior_history", None)

    def encode_column(vocabulary: "Vocabulary | HashedIds", name: str, like: Optional[str]) -> np.ndarray:
        return vocabulary.encode(_history_values(table, name, like).take(kept)).astype(np.int32)  # the cache's width

    # The columns in threads: Arrow's take and NumPy's lookups release the GIL, so the item and
    # category columns are encoded on two cores (beside the read-ahead's decoding).
    # A pool per batch, not per process: a forked process (a DataLoader worker) must not inherit
    # a pool whose threads it does not have.
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="ifusion-encode") as pool:
        futures = {name: pool.submit(encode_column, *job) for name, job in jobs.items()}
        encoded = {name: future.result() for name, future in futures.items()}
    if "cates" not in encoded:
        encoded["cates"] = np.full(len(kept), OOV_ID, dtype=np.int32)

    def positions(begin: np.ndarray, end: np.ndarray) -> tuple[pa.Array, np.ndarray]:
        # Each row's part [begin, end) as row offsets and positions in the kept behaviours,
        # computed once per part and shared by its columns.
        counts = end - begin
        row_offsets = np.zeros(len(counts) + 1, dtype=np.int32)
        np.cumsum(counts, out=row_offsets[1:])
        return pa.array(row_offsets), _ranges(kept_starts + begin - keep_begin, counts)

    def part(values: np.ndarray, at: tuple[pa.Array, np.ndarray], shape: tuple[int, ...]) -> Ragged:
        row_offsets, taken = at
        return Ragged(pa.ListArray.from_arrays(row_offsets, pa.array(values[taken])), shape)

    long_part, session_part = positions(long_begin, long_end), positions(short_begin, lengths)
    sessions = (options.num_sessions, options.session_len)
    out = {
        "long_items": part(encoded["items"], long_part, (options.long_len,)),
        "long_cates": part(encoded["cates"], long_part, (options.long_len,)),
        "session_items": part(encoded["items"], session_part, sessions),
        "session_cates": part(encoded["cates"], session_part, sessions),
    }
    if "behaviors" in encoded:
        out["session_behaviors"] = part(encoded["behaviors"], session_part, sessions)
    return out


def _padded_histories(
    table: pa.Table,
    vocabularies: TableVocabularies,
    options: SequenceOptions,
    long_behaviors: Optional[Sequence[object]],
    session_behaviors: Optional[Sequence[object]],
) -> dict[str, np.ndarray]:
    """The history and session columns as padded arrays (see :func:`encode_table`)."""
    rows = table.num_rows
    history = table["item_history"].combine_chunks()
    offsets = history.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    flat_items = vocabularies.items.encode(_history_values(table, "item_history", "item_id"))
    if vocabularies.cates is not None and "cate_history" in table.column_names:
        flat_cates = vocabularies.cates.encode(_history_values(table, "cate_history"))
    else:
        flat_cates = np.full(len(flat_items), OOV_ID, dtype=np.int64)
    flat_times: Optional[np.ndarray] = None
    if options.session_split == "time_gap":
        if "history_timestamps" not in table.column_names:
            raise ValueError("session_split='time_gap' needs a 'history_timestamps' column; the table has none (use 'chunk')")
        flat_times = table["history_timestamps"].combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float64)

    flat_behaviors = flat_in_long = flat_in_sessions = None
    if "behavior_history" in table.column_names:
        raw_behaviors = _history_values(table, "behavior_history")
        assert vocabularies.behaviors is not None, "vocabularies built from a table without behavior_history"
        flat_behaviors = vocabularies.behaviors.encode(raw_behaviors)
        flat_in_long = _member(raw_behaviors, long_behaviors)
        flat_in_sessions = _member(raw_behaviors, session_behaviors)
    elif long_behaviors is not None or session_behaviors is not None:
        raise ValueError("long_behaviors / session_behaviors need a 'behavior_history' column; the table has none")

    if options.session_split == "chunk" and flat_in_long is None and flat_in_sessions is None:
        # The common case, vectorised over all rows (no Python loop per row).
        parts = split_histories(flat_items, flat_cates, offsets, options, flat_behaviors)
        long_items, long_cates = parts["long_items"], parts["long_cates"]
        session_items, session_cates = parts["session_items"], parts["session_cates"]
        session_behavior_ids = parts.get("session_behaviors")
    else:
        long_items, long_cates, session_items, session_cates, session_behavior_ids = _split_rows(
            rows, offsets, flat_items, flat_cates, flat_times, flat_behaviors, flat_in_long, flat_in_sessions, options)

    columns = {"long_items": long_items, "long_cates": long_cates, "session_items": session_items, "session_cates": session_cates}
    if session_behavior_ids is not None:
        columns["session_behaviors"] = session_behavior_ids
    assert PAD_ID == 0  # the zero-initialised arrays above rely on it
    return columns


def _split_rows(
    rows: int,
    offsets: np.ndarray,
    flat_items: np.ndarray,
    flat_cates: np.ndarray,
    flat_times: Optional[np.ndarray],
    flat_behaviors: Optional[np.ndarray],
    flat_in_long: Optional[np.ndarray],
    flat_in_sessions: Optional[np.ndarray],
    options: SequenceOptions,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """:func:`split_history` row by row: time-gap sessions and behaviour filters."""
    long_items = np.zeros((rows, options.long_len), dtype=np.int64)
    long_cates = np.zeros_like(long_items)
    session_items = np.zeros((rows, options.num_sessions, options.session_len), dtype=np.int64)
    session_cates = np.zeros_like(session_items)
    session_behavior_ids = None if flat_behaviors is None else np.zeros_like(session_items)
    for row in range(rows):
        begin, end = offsets[row], offsets[row + 1]
        parts = split_history(
            flat_items[begin:end],
            flat_cates[begin:end],
            options,
            times=None if flat_times is None else flat_times[begin:end],
            behaviors=None if flat_behaviors is None else flat_behaviors[begin:end],
            in_long=None if flat_in_long is None else flat_in_long[begin:end],
            in_sessions=None if flat_in_sessions is None else flat_in_sessions[begin:end],
        )
        long_items[row], long_cates[row] = parts.long_items, parts.long_cates
        session_items[row], session_cates[row] = parts.session_items, parts.session_cates
        if session_behavior_ids is not None:
            session_behavior_ids[row] = parts.session_behaviors
    return long_items, long_cates, session_items, session_cates, session_behavior_ids


def _member(values: pa.Array, allowed: Optional[Sequence[object]]) -> Optional[np.ndarray]:
    """Bool array: which ``values`` are in ``allowed`` (``None`` when every value is)."""
    if allowed is None:
        return None
    value_set = pa.array(list(allowed))
    if value_set.type != values.type:
        values, value_set = values.cast(pa.string()), value_set.cast(pa.string())
    return pc.fill_null(pc.is_in(values, value_set=value_set), False).to_numpy(zero_copy_only=False)


def vocabulary_sizes(vocabularies: TableVocabularies, context_columns: Sequence[str] = ()) -> Mapping[str, object]:
    """Sizes for a :class:`~ifusion_plugin.batch.FeatureSpec`."""
    return {
        "num_behaviors": len(vocabularies.behaviors) if vocabularies.behaviors is not None else 0,
        "num_users": len(vocabularies.users),
        "num_items": len(vocabularies.items),
        "num_cates": len(vocabularies.cates) if vocabularies.cates is not None else FIRST_ID,
        "context_cardinalities": tuple(len(vocabularies.context[name]) for name in context_columns),
    }
