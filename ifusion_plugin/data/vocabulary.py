"""Vocabularies: raw ids (as the data spells them, ints or strings) to contiguous indices.

Index 0 is padding, 1 out-of-vocabulary (OOV), known ids start at 2 (see
:mod:`ifusion_plugin.batch`). Every source builds its vocabularies from what train sees and the
cache stores them (``vocab/``), so that a serving bundle can turn the ids a request spells into
the model's inputs exactly as training did (``cli export`` copies them beside the programs).

On disk (:meth:`Vocabularies.save`): one Parquet file per vocabulary with its keys in index
order (column ``raw``: row ``r`` has index ``r + 2``) -- or, for hashed ids
(:class:`~ifusion_plugin.data.hashing.HashedIds`, ``id_encoding: hash``), a JSON file with the
bucket count --, ``item_categories.parquet`` (the raw category of each item the source knows,
columns ``item`` and ``cate``), and ``vocabularies.json`` naming the files and the context
columns in input order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..batch import FIRST_ID, OOV_ID
from .hashing import HashedIds

__all__ = ["Vocabulary", "Vocabularies", "VOCABULARIES_MANIFEST"]

#: The file of a saved :class:`Vocabularies` directory that lists its parts.
VOCABULARIES_MANIFEST = "vocabularies.json"


class Vocabulary:
    """Maps raw ids (ints or strings) to contiguous indices: 0 padding, 1 OOV, known ids from 2.

    Args:
        values: the raw ids seen in train, in any order, duplicates and nulls allowed; the
            known ids are their distinct non-null values, sorted (so the mapping does not
            depend on row order).
    """

    def __init__(self, values: Iterable[object]) -> None:
        known = pa.array(list(values)) if not isinstance(values, (pa.Array, pa.ChunkedArray)) else values
        unique = pc.unique(known.combine_chunks() if isinstance(known, pa.ChunkedArray) else known)
        unique = unique.filter(pc.is_valid(unique))
        self._keys = pc.take(unique, pc.sort_indices(unique))
        self._table: Optional[tuple[int, np.ndarray]] = None

    @classmethod
    def from_keys(cls, keys: "pa.Array | np.ndarray | Iterable[object]") -> "Vocabulary":
        """The vocabulary whose known ids are ``keys`` in the given order (``keys[i]`` gets index
        ``i + 2``); the keys must be distinct and non-null.

        Raises:
            ValueError: a key is null or repeated.
        """
        array = keys if isinstance(keys, pa.Array) else pa.array(np.asarray(keys) if isinstance(keys, np.ndarray) else list(keys))
        if array.null_count:
            raise ValueError(f"vocabulary keys must not be null; {array.null_count} are")
        if len(pc.unique(array)) != len(array):
            raise ValueError(f"vocabulary keys must be distinct; {len(array) - len(pc.unique(array))} repeat")
        vocabulary = cls.__new__(cls)
        vocabulary._keys = array
        vocabulary._table = None
        return vocabulary

    def __len__(self) -> int:
        """Size of the index space, padding and OOV included."""
        return len(self._keys) + FIRST_ID

    @property
    def keys(self) -> pa.Array:
        """The known raw ids; ``keys[i]`` has index ``i + 2``."""
        return self._keys

    def encode(self, values: "pa.Array | pa.ChunkedArray") -> np.ndarray:
        """Indices of ``values`` (int64 array of the same length); unseen or null ids give ``OOV_ID``."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if len(self._keys) and values.type != self._keys.type:
            try:
                values = values.cast(self._keys.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                # An int request against string keys (or the reverse): compare as text.
                positions = pc.index_in(values.cast(pa.string()), value_set=self._keys.cast(pa.string()))
                return _positions_to_ids(positions)
        table = self._dense_table()
        if table is not None and pa.types.is_integer(values.type):
            found = _lookup(table, values)
            if found is not None:
                return found
        positions = pc.index_in(values, value_set=self._keys)
        return _positions_to_ids(positions)

    #: Integer keys spanning at most this many values per key (or :data:`DENSE_MIN_SPAN` in all)
    #: are looked up in a dense table (one gather, about 10x faster than hashing); sparser keys,
    #: such as 64-bit hashes, keep the hash lookup.
    DENSE_SPAN_PER_KEY = 8
    DENSE_MIN_SPAN = 1 << 20

    def _dense_table(self) -> Optional[tuple[int, np.ndarray]]:
        """``(low, table)`` for integer keys in a bounded span, else ``None``: ``table[i + 1]`` is
        the index of id ``low + i``, and both ends hold OOV (ids outside the span land there)."""
        dense = None if self._table is not None else _dense_span(self._keys, self.DENSE_SPAN_PER_KEY, self.DENSE_MIN_SPAN)
        if dense is not None:
            keys, low, high = dense
            index = np.full(high - low + 3, OOV_ID, dtype=np.int64)
            index[keys - low + 1] = np.arange(FIRST_ID, FIRST_ID + len(keys), dtype=np.int64)
            self._table = (low, index)
        return self._table

    def save(self, path: str) -> None:
        """Write the keys (column ``raw``, in index order) to Parquet at ``path``."""
        pq.write_table(pa.table({"raw": self._keys}), path)

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        """The vocabulary saved at ``path`` by :meth:`save`."""
        return cls.from_keys(pq.read_table(path, columns=["raw"]).column("raw").combine_chunks())


def _positions_to_ids(positions: pa.Array) -> np.ndarray:
    # index_in's positions (null: not found) shifted to indices, in Arrow: one pass, no masks.
    return pc.fill_null(pc.add(positions.cast(pa.int64()), FIRST_ID), OOV_ID).to_numpy()


def _lookup(table: tuple[int, np.ndarray], values: pa.Array) -> Optional[np.ndarray]:
    """Indices of integer ``values`` from a dense table (``None`` if they do not fit int64)."""
    low, index = table
    try:
        values = values.cast(pa.int64())
    except pa.ArrowInvalid:  # uint64 beyond int64: outside any dense span
        return None
    # A null becomes low - 1, like any id below the span: clipped onto the table's OOV ends.
    raw = (pc.fill_null(values, low - 1) if values.null_count else values).to_numpy()
    slots = raw - (low - 1)
    if len(slots) and (slots.min() < 0 or slots.max() >= len(index)):  # two reductions cost less than a clip
        np.clip(slots, 0, len(index) - 1, out=slots)
    return index[slots]


def _dense_span(values: pa.Array, per_value: int = Vocabulary.DENSE_SPAN_PER_KEY,
                minimum: int = Vocabulary.DENSE_MIN_SPAN) -> Optional[tuple[np.ndarray, int, int]]:
    """``(values as int64, low, high)`` for integer values without nulls whose span a dense
    table may cover (at most ``per_value`` entries per value or ``minimum`` in all); ``None``
    otherwise."""
    if not pa.types.is_integer(values.type) or values.null_count or not len(values):
        return None
    try:
        raw = values.cast(pa.int64()).to_numpy()
    except pa.ArrowInvalid:  # uint64 beyond int64
        return None
    low, high = int(raw.min()), int(raw.max())
    if high - low + 1 > max(per_value * len(raw), minimum):
        return None
    return raw, low, high


def distinct(values: "pa.Array | pa.ChunkedArray") -> pa.Array:
    """The distinct values (nulls may be kept; :class:`Vocabulary` drops them): for integers in
    a bounded span by marking a dense table (sorted, about 5x faster than hashing), else by
    Arrow's hash ``unique``."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    dense = _dense_span(values)
    if dense is None:
        return pc.unique(values)
    raw, low, high = dense
    seen = np.zeros(high - low + 1, dtype=bool)
    seen[raw - low] = True
    return pa.array(np.flatnonzero(seen) + low).cast(values.type)


def _last_positions_dense(items: pa.Array) -> Optional[np.ndarray]:
    """Each distinct item's last position, in ascending item order, for integer ids without
    nulls in a bounded span (one scatter-max over a table of the span, about 10x faster than
    hashing); ``None`` otherwise."""
    dense = _dense_span(items)
    if dense is None:
        return None
    raw, low, high = dense
    last = np.full(high - low + 1, -1, dtype=np.int64)
    np.maximum.at(last, raw - low, np.arange(len(raw), dtype=np.int64))
    return last[last >= 0]


@dataclass
class Vocabularies:
    """The vocabularies of one dataset, built from what its train split sees.

    Attributes:
        users, items: user and item ids (candidates and histories share the item space); this
            and the next two may be :class:`~ifusion_plugin.data.hashing.HashedIds` instead.
        cates: category ids, ``None`` when the data has no categories (every category is then OOV).
        context: one vocabulary per context column, in the model's input order.
        behaviors: behaviour types of the session behaviours, ``None`` without types.
        item_categories: the source's catalogue, raw item id -> raw category id (columns
            ``item`` and ``cate``, one row per item, items outside the item vocabulary included:
            a new item's category is still known), for requests that name items only; ``None``
            when the source has none.
    """

    users: "Vocabulary | HashedIds"
    items: "Vocabulary | HashedIds"
    cates: "Optional[Vocabulary | HashedIds]"
    context: "dict[str, Vocabulary | HashedIds]" = field(default_factory=dict)
    behaviors: Optional[Vocabulary] = None
    item_categories: Optional[pa.Table] = None

    def __post_init__(self) -> None:
        if self.item_categories is not None:
            if self.item_categories.column_names != ["item", "cate"]:
                raise ValueError(f"item_categories must have the columns ['item', 'cate'], got {self.item_categories.column_names}")
            items = self.item_categories["item"]
            if len(pc.unique(items)) != len(items):
                raise ValueError("item_categories must hold each item once")

    @staticmethod
    def catalogue(items: "pa.Array | pa.ChunkedArray", cates: "pa.Array | pa.ChunkedArray") -> pa.Table:
        """The ``item_categories`` table of paired raw ``items`` and ``cates`` (data order): an item
        seen with several categories keeps its last; pairs with a null category are left out."""
        items = items.combine_chunks() if isinstance(items, pa.ChunkedArray) else items
        cates = cates.combine_chunks() if isinstance(cates, pa.ChunkedArray) else cates
        if cates.null_count:
            keep = pc.is_valid(cates)
            items, cates = items.filter(keep), cates.filter(keep)
        # Each item's last position, listed in item order so that the catalogue does not depend
        # on threads or on how the data was batched.
        last = _last_positions_dense(items)
        if last is None:  # by a hash aggregation (no sort of all pairs)
            positions = pa.table({"item": items, "at": pa.array(np.arange(len(items), dtype=np.int64))})
            grouped = positions.group_by("item", use_threads=False).aggregate([("at", "max")])
            last = grouped.take(pc.sort_indices(grouped, sort_keys=[("item", "ascending")]))["at_max"]
        return pa.table({"item": items.take(last), "cate": cates.take(last)})

    def categories_of(self, items: "pa.Array | pa.ChunkedArray") -> pa.Array:
        """Raw categories of raw ``items`` from :attr:`item_categories` (null for unknown items).

        Raises:
            LookupError: the vocabularies carry no item catalogue.
        """
        if self.item_categories is None:
            raise LookupError("these vocabularies carry no item -> category catalogue")
        items = items.combine_chunks() if isinstance(items, pa.ChunkedArray) else items
        known = self.item_categories["item"].combine_chunks()
        if items.type != known.type:
            items, known = items.cast(pa.string()), known.cast(pa.string())
        return self.item_categories["cate"].combine_chunks().take(pc.index_in(items, value_set=known))

    def save(self, directory: str) -> None:
        """Write every vocabulary under ``directory`` (created; existing files are replaced)."""
        os.makedirs(directory, exist_ok=True)
        parts: dict[str, object] = {"users": _save_part(directory, "users", self.users),
                                    "items": _save_part(directory, "items", self.items)}
        if self.item_categories is not None:
            parts["item_categories"] = "item_categories.parquet"
            pq.write_table(self.item_categories, os.path.join(directory, "item_categories.parquet"))
        if self.cates is not None:
            parts["cates"] = _save_part(directory, "cates", self.cates)
        if self.behaviors is not None:
            parts["behaviors"] = _save_part(directory, "behaviors", self.behaviors)
        # Column names may hold any character: files are numbered.
        parts["context"] = {name: _save_part(directory, f"context-{index}", vocabulary)
                            for index, (name, vocabulary) in enumerate(self.context.items())}
        with open(os.path.join(directory, VOCABULARIES_MANIFEST), "w", encoding="utf-8") as handle:
            json.dump(parts, handle, indent=1)

    @classmethod
    def load(cls, directory: str) -> "Vocabularies":
        """The vocabularies saved under ``directory`` by :meth:`save`.

        Raises:
            FileNotFoundError: ``directory`` holds no ``vocabularies.json``.
        """
        manifest = os.path.join(directory, VOCABULARIES_MANIFEST)
        if not os.path.isfile(manifest):
            raise FileNotFoundError(f"{directory}: no {VOCABULARIES_MANIFEST} (not a saved vocabularies directory)")
        with open(manifest, encoding="utf-8") as handle:
            parts = json.load(handle)

        def load(name: str) -> "Optional[Vocabulary | HashedIds]":
            return _load_part(directory, parts[name]) if name in parts else None

        return cls(
            users=load("users"),  # type: ignore[arg-type]
            items=load("items"),  # type: ignore[arg-type]
            cates=load("cates"),
            context={name: _load_part(directory, file) for name, file in parts.get("context", {}).items()},
            behaviors=load("behaviors"),
            item_categories=(pq.read_table(os.path.join(directory, parts["item_categories"]))
                             if "item_categories" in parts else None),
        )


def _save_part(directory: str, stem: str, vocabulary: "Vocabulary | HashedIds") -> str:
    """Save one vocabulary as ``stem.parquet`` (its keys) or ``stem.json`` (hashed ids); returns the file name."""
    name = stem + (".json" if isinstance(vocabulary, HashedIds) else ".parquet")
    vocabulary.save(os.path.join(directory, name))
    return name


def _load_part(directory: str, name: str) -> "Vocabulary | HashedIds":
    path = os.path.join(directory, name)
    return HashedIds.load(path) if name.endswith(".json") else Vocabulary.load(path)
