"""Atomic on-disk cache of processed splits.

Layout: ``cache_dir/<source>-<key>/`` holding ``train/``, ``valid/``, ``test/`` (each a
``samples.arrow`` in the compact form of :mod:`~ifusion_plugin.data.storage`: the sample
columns a batch is built from), ``raw_ids/<split>.parquet``
(the raw ``user_id``/``item_id`` of each sample, in the split's row order, when the source gave
them), ``vocab/`` (the :class:`~ifusion_plugin.data.vocabulary.Vocabularies`, when the source gave
them), ``meta.json`` (the FeatureSpec and the options) and ``COMPLETE``.
Only a directory with the ``COMPLETE`` marker is trusted; a build is written into a temporary
directory inside ``cache_dir`` and renamed into place, so a crash never leaves a trusted
half-written cache. Other keys' directories are never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..batch import FeatureSpec
from .storage import SPLIT_FILE, SplitWriter, StoredSplit, open_split
from .vocabulary import Vocabularies

__all__ = [
    "FORMAT_VERSION",
    "COMPLETE_MARKER",
    "RAW_ID_COLUMNS",
    "cache_key",
    "file_fingerprint",
    "load_or_build",
    "load_raw_ids",
    "raw_ids_path",
    "vocabularies_path",
    "SplitArrays",
    "SplitColumns",
]

#: 2: per-sample raw ids under ``raw_ids/`` (caches of version 1 have none and are rebuilt).
#: 3: the vocabularies under ``vocab/``.
#: 4: compact split files (ragged int32 histories, :mod:`~ifusion_plugin.data.storage`), not
#: ``datasets`` folders.
FORMAT_VERSION = 4
COMPLETE_MARKER = "COMPLETE"
SPLITS = ("train", "valid", "test")
RAW_IDS_DIR = "raw_ids"
VOCAB_DIR = "vocab"

#: Optional columns of a built split holding each sample's user and item id as the source data
#: spells them (ints or strings, OOV items included). They are stored apart from the sample
#: columns, so the batch builder never reads them.
RAW_ID_COLUMNS = ("user_id", "item_id")

#: One chunk of a split: column name -> stacked numpy array (first dimension = samples); the
#: :data:`RAW_ID_COLUMNS` may also be ``pyarrow`` arrays (string ids).
SplitColumns = Mapping[str, "np.ndarray | pa.Array | pa.ChunkedArray"]

#: per split, its columns in one chunk, or an iterable of chunks (a source streaming a split
#: larger than memory: each chunk is written before the next is built).
SplitArrays = Mapping[str, Union[SplitColumns, Iterable[SplitColumns]]]


def file_fingerprint(paths: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(basename, size, mtime_ns)`` of each existing raw file: a changed file changes the key."""
    out = []
    for path in paths:
        if os.path.exists(path):
            st = os.stat(path)
            out.append((os.path.basename(path), int(st.st_size), int(st.st_mtime_ns)))
    return out


def cache_key(source: str, options: Mapping[str, object], raw_files: Sequence[str]) -> str:
    """Directory name ``<source>-<sha1[:16]>`` over the format version, options and raw files."""
    payload = json.dumps(
        {"format": FORMAT_VERSION, "options": options, "files": file_fingerprint(raw_files)},
        sort_keys=True,
        default=str,
    )
    return f"{source}-{hashlib.sha1(payload.encode()).hexdigest()[:16]}"


def raw_ids_path(cache_path: str, split: str) -> str:
    """The Parquet file of ``split``'s raw ids inside the cache directory ``cache_path``."""
    return os.path.join(cache_path, RAW_IDS_DIR, f"{split}.parquet")


def _raw_id_array(values: "np.ndarray | pa.Array | pa.ChunkedArray") -> pa.Array:
    """One raw-id column as an Arrow array: integers widened to int64 (so that a predictions
    file has one integer type whatever the source wrote), anything else (strings) unchanged."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not isinstance(array, pa.Array):
        array = pa.array(np.asarray(array))
    if pa.types.is_integer(array.type):
        array = array.cast(pa.int64())
    return array


def _split_raw_ids(split: str, columns: SplitColumns) -> Optional[pa.Table]:
    """The raw-id columns of a built split as a table, ``None`` when the source gave none.

    Raises:
        ValueError: only one of :data:`RAW_ID_COLUMNS` is present, or a raw-id column's length
            differs from the split's number of samples.
    """
    present = [name for name in RAW_ID_COLUMNS if name in columns]
    if not present:
        return None
    if len(present) != len(RAW_ID_COLUMNS):
        raise ValueError(
            f"split {split!r}: raw-id columns must be given together, expected {list(RAW_ID_COLUMNS)}, got {present}"
        )
    samples = len(np.asarray(columns["label"]))
    arrays = {name: _raw_id_array(columns[name]) for name in RAW_ID_COLUMNS}  # type: ignore[arg-type]
    for name, array in arrays.items():
        if len(array) != samples:
            raise ValueError(
                f"split {split!r}: raw-id column {name!r} must have one entry per sample, expected {samples}, got {len(array)}"
            )
    return pa.table(arrays)


def vocabularies_path(cache_path: str) -> str:
    """The directory of the vocabularies inside the cache directory ``cache_path``."""
    return os.path.join(cache_path, VOCAB_DIR)


def _check_sizes(vocabularies: Vocabularies, spec: FeatureSpec) -> None:
    """A build's vocabularies must index the spaces its FeatureSpec declares."""
    sizes = {"num_users": len(vocabularies.users), "num_items": len(vocabularies.items),
             "num_cates": len(vocabularies.cates) if vocabularies.cates is not None else spec.num_cates,
             "num_behaviors": len(vocabularies.behaviors) if vocabularies.behaviors is not None else spec.num_behaviors,
             "context_cardinalities": tuple(len(v) for v in vocabularies.context.values())}
    wrong = {name: (getattr(spec, name), size) for name, size in sizes.items() if getattr(spec, name) != size}
    if wrong:
        raise ValueError("the build's vocabularies do not match its FeatureSpec (spec, vocabularies): "
                         + ", ".join(f"{name} {a} vs {b}" for name, (a, b) in wrong.items()))


def load_raw_ids(cache_path: str, split: str) -> Optional[pa.Table]:
    """The raw ids of ``split`` stored in the complete cache directory ``cache_path``.

    Returns:
        A table with the :data:`RAW_ID_COLUMNS` (each of length ``S``, the split's number of
        samples, in its row order), or ``None`` when the source stored no raw ids.
    """
    path = raw_ids_path(cache_path, split)
    return pq.read_table(path) if os.path.exists(path) else None


def _chunks(split: str, value: "SplitColumns | Iterable[SplitColumns]") -> Iterable[SplitColumns]:
    # One mapping of columns is one chunk; anything else is an iterable of chunks.
    return [value] if isinstance(value, Mapping) else value


def _write_split(directory: str, split: str, value: "SplitColumns | Iterable[SplitColumns]") -> dict[str, object]:
    """Write one split's chunks under ``directory``; returns its entry of ``meta.json``."""
    os.makedirs(os.path.join(directory, split))
    writer = SplitWriter(os.path.join(directory, split, SPLIT_FILE))
    raw_writer: Optional[pq.ParquetWriter] = None
    raw_given: Optional[bool] = None
    try:
        for chunk in _chunks(split, value):
            raw = _split_raw_ids(split, chunk)
            if raw_given is not None and raw_given != (raw is not None):
                raise ValueError(f"split {split!r}: raw ids must be given with every chunk or none")
            raw_given = raw is not None
            writer.write({name: values for name, values in chunk.items() if name not in RAW_ID_COLUMNS})  # type: ignore[misc]
            if raw is not None:
                if raw_writer is None:
                    os.makedirs(os.path.join(directory, RAW_IDS_DIR), exist_ok=True)
                    raw_writer = pq.ParquetWriter(raw_ids_path(directory, split), raw.schema)
                raw_writer.write_table(raw.cast(raw_writer.schema))
        if raw_given is None:
            raise ValueError(f"split {split!r}: the build gave no chunk (an empty chunk is fine)")
        shapes = writer.close()
    finally:
        if raw_writer is not None:
            raw_writer.close()
    return {"rows": writer.rows, "shapes": shapes, "raw_ids": bool(raw_given)}


def load_or_build(
    cache_dir: str,
    key: str,
    build: Callable[[], "tuple[SplitArrays, FeatureSpec] | tuple[SplitArrays, FeatureSpec, Optional[Vocabularies]]"],
    options: Mapping[str, object],
) -> tuple[dict[str, StoredSplit], FeatureSpec, bool]:
    """Load the cache ``cache_dir/key`` or build and store it atomically.

    Args:
        build: returns per split the sample columns (:data:`~ifusion_plugin.batch.SAMPLE_COLUMNS`
            and ``context``, first dimension ``S``) and optionally the :data:`RAW_ID_COLUMNS`
            (shape ``(S,)``, for every split or none) -- in one mapping, or as an iterable of
            such chunks written one by one --, the FeatureSpec, and optionally the
            :class:`~ifusion_plugin.data.vocabulary.Vocabularies` (a third element; stored
            under ``vocab/``, read back with :func:`vocabularies_path`).

    Returns:
        (the splits, memory-mapped, without the raw-id columns: read those with
        :func:`load_raw_ids`), the FeatureSpec, and whether it was a cache hit.
    """
    final = os.path.join(cache_dir, key)
    hit = os.path.exists(os.path.join(final, COMPLETE_MARKER))
    if not hit:
        built = build()
        splits, spec = built[0], built[1]
        vocabularies = built[2] if len(built) > 2 else None
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache_dir)
        try:
            written = {split: _write_split(tmp, split, splits[split]) for split in SPLITS}
            if len({entry["raw_ids"] for entry in written.values()}) > 1:
                given = [split for split, entry in written.items() if entry["raw_ids"]]
                raise ValueError(f"raw ids must be given for every split or none, expected {list(SPLITS)}, got {given}")
            if vocabularies is not None:
                _check_sizes(vocabularies, spec)
                vocabularies.save(vocabularies_path(tmp))
            meta = {"feature_spec": asdict(spec), "options": options, "format": FORMAT_VERSION,
                    "raw_ids": written["train"]["raw_ids"], "vocabularies": vocabularies is not None,
                    "splits": {split: {"rows": entry["rows"], "shapes": entry["shapes"]} for split, entry in written.items()}}
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                json.dump(meta, f, default=str, indent=1)
            with open(os.path.join(tmp, COMPLETE_MARKER), "w") as f:
                f.write("ok\n")
            if os.path.exists(final):
                # An untrusted (unmarked) leftover of this same key: replaced, never reused.
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    with open(os.path.join(final, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    spec = FeatureSpec(**meta["feature_spec"])
    data = {split: open_split(os.path.join(final, split, SPLIT_FILE), meta["splits"][split]["shapes"]) for split in SPLITS}
    return data, spec, hit
