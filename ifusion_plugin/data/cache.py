"""Atomic on-disk cache of processed splits as ``datasets`` Arrow datasets.

Layout: ``cache_dir/<source>-<key>/`` holding ``train/``, ``valid/``, ``test/``
(``Dataset.save_to_disk``), ``meta.json`` (the FeatureSpec and the options) and ``COMPLETE``.
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
from typing import Callable, Mapping, Sequence

import numpy as np
from datasets import Dataset, Features, Sequence as HFSequence, Value, load_from_disk

from ..batch import FeatureSpec

__all__ = ["FORMAT_VERSION", "COMPLETE_MARKER", "cache_key", "file_fingerprint", "load_or_build", "SplitArrays"]

FORMAT_VERSION = 1
COMPLETE_MARKER = "COMPLETE"
SPLITS = ("train", "valid", "test")

#: per split, a mapping column name -> stacked numpy array (first dimension = samples)
SplitArrays = Mapping[str, Mapping[str, np.ndarray]]


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


def _to_dataset(columns: Mapping[str, np.ndarray]) -> Dataset:
    # Fixed-shape columns as nested int64 lists: with_format("numpy") returns stacked arrays.
    feats = {}
    data = {}
    for name, arr in columns.items():
        arr = np.asarray(arr, dtype=np.int64)
        if arr.ndim == 1:
            feats[name] = Value("int64")
        elif arr.ndim == 2:
            feats[name] = HFSequence(Value("int64"), length=arr.shape[1])
        else:
            feats[name] = HFSequence(HFSequence(Value("int64"), length=arr.shape[2]), length=arr.shape[1])
        data[name] = arr
    import pyarrow as pa

    arrays = {}
    for name, arr in data.items():
        flat = pa.array(arr.reshape(-1))
        for size in reversed(arr.shape[1:]):
            flat = pa.FixedSizeListArray.from_arrays(flat, size)
        arrays[name] = flat
    table = pa.table(arrays)
    return Dataset(table.cast(Features(feats).arrow_schema))


def load_or_build(
    cache_dir: str,
    key: str,
    build: Callable[[], tuple[SplitArrays, FeatureSpec]],
    options: Mapping[str, object],
) -> tuple[dict[str, Dataset], FeatureSpec, bool]:
    """Load the cache ``cache_dir/key`` or build and store it atomically.

    Returns:
        (datasets per split, memory-mapped, ``numpy`` format), the FeatureSpec, and whether
        it was a cache hit.
    """
    final = os.path.join(cache_dir, key)
    hit = os.path.exists(os.path.join(final, COMPLETE_MARKER))
    if not hit:
        splits, spec = build()
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache_dir)
        try:
            for split in SPLITS:
                _to_dataset(splits[split]).save_to_disk(os.path.join(tmp, split))
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                json.dump({"feature_spec": asdict(spec), "options": options, "format": FORMAT_VERSION}, f, default=str, indent=1)
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
    data = {split: load_from_disk(os.path.join(final, split)).with_format("numpy") for split in SPLITS}
    return data, spec, hit
