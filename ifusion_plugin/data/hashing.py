"""Hashed ids: raw ids -> a fixed number of buckets, for id spaces no vocabulary can hold.

With ``id_encoding: hash`` a source indexes users, items, categories and context values by a
stable 64-bit hash of the raw id modulo ``hash_buckets`` (plus the two reserved indices), so
no pass over the data builds a vocabulary and an id never seen in train still gets its own
embedding row (shared with the ids that collide with it). The hash does not depend on the
process, the platform or the order of the data: integers are mixed with SplitMix64's
finaliser, strings hashed with BLAKE2b (8 bytes) of their UTF-8 bytes. An integer id and its
decimal string hash differently, so keep one spelling between training and serving.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..batch import FIRST_ID, OOV_ID

__all__ = ["HashedIds", "stable_hash", "ID_ENCODINGS"]

#: The values of a source's ``id_encoding`` option.
ID_ENCODINGS = ("vocabulary", "hash")
_KIND = "hashed-ids"


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic)."""
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):  # in place: one array, no temporaries of the batch's size
        z += np.uint64(0x9E3779B97F4A7C15)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def stable_hash(values: "pa.Array | pa.ChunkedArray") -> np.ndarray:
    """A stable uint64 hash of each value (shape ``(len(values),)``); nulls hash to 0.

    Raises:
        TypeError: values that are neither integers nor strings.
    """
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_integer(array.type):
        return _mix(pc.fill_null(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False).view(np.uint64))
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        # One Python hash per distinct string of the batch, then a gather.
        encoded = pc.dictionary_encode(array)
        distinct = np.array([int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
                             for text in encoded.dictionary.to_pylist()], dtype=np.uint64)
        indices = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        return np.where(indices >= 0, distinct[np.maximum(indices, 0)] if len(distinct) else 0, 0).astype(np.uint64)
    raise TypeError(f"hashed ids must be integers or strings, got type {array.type}")


class HashedIds:
    """Indices ``FIRST_ID + hash(id) % buckets`` (nulls: ``OOV_ID``), with the interface of
    :class:`~ifusion_plugin.data.vocabulary.Vocabulary` that encoding and serving use.

    Args:
        buckets: the number of hash buckets (embedding rows besides padding and OOV).
    """

    def __init__(self, buckets: int) -> None:
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise ValueError(f"hash_buckets must be a positive int, got {buckets!r}")
        self.buckets = buckets

    def __len__(self) -> int:
        """Size of the index space, padding and OOV included."""
        return self.buckets + FIRST_ID

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HashedIds) and other.buckets == self.buckets

    def encode(self, values: "pa.Array | pa.ChunkedArray") -> np.ndarray:
        """Indices of ``values`` (int64 array of the same length)."""
        array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        if pa.types.is_null(array.type):
            return np.full(len(array), OOV_ID, dtype=np.int64)
        hashed = stable_hash(array)
        if self.buckets & (self.buckets - 1) == 0:  # a power of two: the modulo is a mask
            hashed &= np.uint64(self.buckets - 1)
        else:
            hashed %= np.uint64(self.buckets)
        indices = hashed.view(np.int64)  # below 2**63 after the modulo
        indices += FIRST_ID
        if array.null_count:
            indices[~pc.is_valid(array).to_numpy(zero_copy_only=False)] = OOV_ID
        return indices

    def save(self, path: str) -> None:
        """Write the bucket count to ``path`` (JSON)."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"kind": _KIND, "buckets": self.buckets}, handle)

    @classmethod
    def load(cls, path: str) -> "HashedIds":
        """The hashed ids saved at ``path`` by :meth:`save`.

        Raises:
            ValueError: ``path`` holds something else.
        """
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        if not isinstance(saved, dict) or saved.get("kind") != _KIND:
            raise ValueError(f"{path}: not a saved HashedIds (expected kind {_KIND!r})")
        return cls(int(saved["buckets"]))
