"""The on-disk form of a cached split: compact Arrow IPC files, memory-mapped, decoded per batch.

A split's sample columns arrive as numpy arrays of shape ``(S, *shape)`` (``S`` samples). On
disk:

- a column of shape ``(S,)`` is one int32 array (int64 where a value needs it; ``label``
  float32);
- a column of shape ``(S, *shape)`` with ``shape`` non-empty (histories, sessions, context) is a
  ragged ``list<int32>``: each sample's values flattened in C order, with the leading
  :data:`~ifusion_plugin.batch.PAD_ID` run removed. Histories are padded at the front, so a
  short history costs its length, not ``L`` int64s. Decoding right-aligns each row into
  ``prod(shape)`` zeros, which restores any int array exactly (interior zeros are kept).

A source that already holds its rows without the padding gives them as :class:`Ragged` (its
values and the per-sample shape) and no padded array is made.

Chunks (record batches) are written one at a time (:class:`SplitWriter`), so a source can stream
a split larger than memory; :func:`open_split` memory-maps the file and :class:`StoredSplit`
gathers index batches from it without reading the split into RAM. Every chunk's buffers lie in
that one mapping, so a batch is gathered from the whole file at once, whatever the number of
chunks it touches (a shuffled batch of a 20M-row split touches hundreds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Ragged", "StoredSplit", "SplitWriter", "open_split", "SPLIT_FILE"]

#: The file of one split inside a cache directory's split folder.
SPLIT_FILE = "samples.arrow"
_INT32 = np.iinfo(np.int32)


def _scalar_array(name: str, values: np.ndarray, wide: bool) -> pa.Array:
    if name == "label":
        return pa.array(values.astype(np.float32, copy=False))
    return pa.array(values.astype(np.int64 if wide else np.int32, copy=False))


def _ragged_array(values: np.ndarray) -> pa.Array:
    """Rows of ``values`` (``(S, W)`` ints) without their leading zeros, as ``list<int32>``."""
    rows, width = values.shape
    nonzero = values != 0
    has_any = nonzero.any(axis=1)
    first = np.where(has_any, nonzero.argmax(axis=1), width)  # index of the first kept value
    lengths = width - first
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    keep = np.arange(width)[None, :] >= first[:, None]
    flat = values[keep].astype(np.int32, copy=False)  # row-major: each row's kept tail in order
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


@dataclass(frozen=True)
class Ragged:
    """A column of per-sample int arrays of ``shape`` in the stored form: each sample's values,
    flattened in C order, with the leading :data:`~ifusion_plugin.batch.PAD_ID` run left out.

    Attributes:
        values: ``list<int32>`` of ``S`` rows, each at most ``prod(shape)`` long (a leading
            zero it keeps is stored as given; decoding gives the same padded array).
        shape: the per-sample shape the rows decode to, right-aligned.
    """

    values: pa.ListArray
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.shape or any(size < 1 for size in self.shape):
            raise ValueError(f"a ragged column needs a non-empty shape of positive sizes, got {self.shape}")

    def __len__(self) -> int:
        return len(self.values)


def _checked_ragged(path: str, name: str, column: Ragged) -> pa.ListArray:
    values = column.values
    if not pa.types.is_list(values.type) or not pa.types.is_int32(values.type.value_type):
        raise ValueError(f"{path}: ragged column {name!r} must be list<int32>, got {values.type}")
    width = math.prod(column.shape)
    longest = pc.max(pc.list_value_length(values)).as_py() if len(values) else 0
    if longest is not None and longest > width:
        raise ValueError(f"{path}: ragged column {name!r} has a row of {longest} values, more than its shape "
                         f"{list(column.shape)} holds ({width})")
    return values


class SplitWriter:
    """Writes one split's chunks to ``path`` (an Arrow IPC file) as they come.

    Args:
        path: the file to write (its directory must exist).

    The first chunk fixes the columns, their per-sample shapes and whether an integer column
    needs int64; a later chunk with other columns or shapes raises ``ValueError``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows = 0
        self.shapes: Optional[dict[str, list[int]]] = None
        self._wide: dict[str, bool] = {}
        self._writer: Optional[pa.ipc.RecordBatchFileWriter] = None

    def write(self, columns: Mapping[str, Union[np.ndarray, Ragged]]) -> None:
        """Append a chunk: ``columns`` maps names to arrays of shape ``(S_chunk, *shape)`` or to
        :class:`Ragged` columns of ``S_chunk`` rows."""
        arrays = {name: values if isinstance(values, Ragged) else np.asarray(values) for name, values in columns.items()}
        shapes = {name: list(values.shape if isinstance(values, Ragged) else values.shape[1:])
                  for name, values in arrays.items()}
        lengths = {len(values) for values in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"{self.path}: a chunk's columns must have one length, got "
                             + ", ".join(f"{name} {len(values)}" for name, values in arrays.items()))
        if self.shapes is None:
            self.shapes = shapes
            for name, values in arrays.items():
                if not shapes[name] and name != "label":
                    # Ids beyond int32 keep int64 for the whole split (decided on the first chunk
                    # and checked on the others).
                    self._wide[name] = bool(values.size) and (values.min() < _INT32.min or values.max() > _INT32.max)
        elif shapes != self.shapes:
            raise ValueError(f"{self.path}: a chunk's columns differ from the first chunk's, expected {self.shapes}, got {shapes}")
        batch_arrays = []
        for name, values in arrays.items():
            if isinstance(values, Ragged):
                batch_arrays.append(_checked_ragged(self.path, name, values))
                continue
            if values.dtype.kind not in "iub" and name != "label":
                raise ValueError(f"{self.path}: column {name!r} must hold integers, got dtype {values.dtype}")
            if name != "label" and values.size and not self._wide.get(name, False) and (
                    values.min() < _INT32.min or values.max() > _INT32.max):
                raise ValueError(f"{self.path}: column {name!r} holds ids outside int32 ({values.min()}..{values.max()}); "
                                 "ids must be vocabulary indices")
            if shapes[name]:
                batch_arrays.append(_ragged_array(values.reshape(len(values), math.prod(shapes[name]))))
            else:
                batch_arrays.append(_scalar_array(name, values, self._wide.get(name, False)))
        batch = pa.RecordBatch.from_arrays(batch_arrays, names=list(arrays))
        if self._writer is None:
            self._writer = pa.ipc.new_file(self.path, batch.schema)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> dict[str, list[int]]:
        """Finish the file and return the per-sample shapes (``{}`` for a split without chunks)."""
        if self._writer is None:
            raise ValueError(f"{self.path}: a split needs at least one chunk (an empty one is fine)")
        self._writer.close()
        return dict(self.shapes or {})


def open_split(path: str, shapes: Mapping[str, Sequence[int]]) -> "StoredSplit":
    """Memory-map the split file ``path`` written by :class:`SplitWriter` with these ``shapes``."""
    with pa.memory_map(path, "r") as source:
        # One buffer over the whole mapping: the table's buffers are slices of it.
        mapping = source.read_buffer()
    return StoredSplit(pa.ipc.open_file(mapping).read_all(), shapes, mapping)


@dataclass(frozen=True)
class _FileColumn:
    """Where one column's chunks lie in the file mapping, in elements of ``view``: ``data``
    ``(C,)`` the first value of each chunk (of each chunk's child values for a ragged column),
    ``offsets`` ``(C,)`` the first offset of each chunk (ragged columns only)."""

    view: np.ndarray
    data: np.ndarray
    offsets: Optional[np.ndarray]


def _element(buffer: pa.Buffer, base: int, itemsize: int, first: int) -> Optional[int]:
    """Element index of value ``first`` of ``buffer`` in a view starting at address ``base``."""
    byte = buffer.address - base + first * itemsize
    return byte // itemsize if byte % itemsize == 0 else None


class StoredSplit:
    """A cached split: decodes index batches of the compact columns to padded numpy arrays.

    Args:
        table: the split as written by :class:`SplitWriter` (memory-mapped: its buffers stay on
            disk until read).
        shapes: per column, the per-sample shape (``[]`` for one value per sample).
        mapping: the buffer of the whole file the table was read from (:func:`open_split`), in
            which every chunk's buffers lie: batches are then gathered from it at once, not
            chunk by chunk. ``None``: the per-chunk path.

    ``split[index]`` with an int array, a slice or an int returns ``{name: array}`` of shape
    ``(len(index), *shape)`` (int64; ``label`` float32); ``split[name]`` returns one whole column
    of shape ``(S, *shape)``.
    """

    def __init__(self, table: pa.Table, shapes: Mapping[str, Sequence[int]], mapping: Optional[pa.Buffer] = None) -> None:
        self.table = table
        self._mapping = mapping
        self.shapes = {name: tuple(int(s) for s in shapes[name]) for name in table.column_names}
        starts, start = [], 0
        self._chunks: dict[str, list[tuple[np.ndarray, Optional[np.ndarray]]]] = {name: [] for name in table.column_names}
        for batch in table.to_batches():
            for name in table.column_names:
                column = batch.column(name)
                if self.shapes[name]:
                    offsets = column.offsets.to_numpy()
                    # Values are read through the offsets, so a sliced chunk needs no copy.
                    self._chunks[name].append((column.values.to_numpy(), offsets))
                else:
                    self._chunks[name].append((column.to_numpy(), None))
            starts.append(start)
            start += batch.num_rows
        self._starts = np.asarray(starts + [start], dtype=np.int64)
        self._file = self._file_columns(mapping) if mapping is not None and len(starts) > 1 else {}

    def _file_columns(self, mapping: pa.Buffer) -> dict[str, _FileColumn]:
        """Per column, its chunks' places in typed views of the whole mapping (columns whose
        buffers are not aligned to their item size, which Arrow's writer never produces, keep
        the per-chunk path)."""
        views: dict[np.dtype, np.ndarray] = {}

        def view(dtype: np.dtype) -> np.ndarray:
            if dtype not in views:
                views[dtype] = np.frombuffer(mapping, dtype=dtype, count=mapping.size // dtype.itemsize)
            return views[dtype]

        base, end = mapping.address, mapping.address + mapping.size

        def place(buffer: Optional[pa.Buffer], itemsize: int, first: int) -> Optional[int]:
            if buffer is None or not base <= buffer.address <= buffer.address + buffer.size <= end:
                return None
            return _element(buffer, base, itemsize, first)

        out: dict[str, _FileColumn] = {}
        for name in self.table.column_names:
            ragged = bool(self.shapes[name])
            chunks = list(self.table.column(name).chunks)
            values = [chunk.values if ragged else chunk for chunk in chunks]
            dtype = np.dtype(values[0].type.to_pandas_dtype())
            # An empty chunk holds no row a batch can ask for: its place is never read.
            data = [place(v.buffers()[1], dtype.itemsize, v.offset) if len(c) else 0 for c, v in zip(chunks, values)]
            firsts = [place(c.buffers()[1], 4, c.offset) if len(c) else 0 for c in chunks] if ragged else data
            if None in data or None in firsts:
                continue
            out[name] = _FileColumn(view(dtype), np.asarray(data, dtype=np.int64),
                                    np.asarray(firsts, dtype=np.int64) if ragged else None)
        return out

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def column_names(self) -> list[str]:
        """The stored sample columns."""
        return list(self.table.column_names)

    def select_columns(self, names: Sequence[str]) -> "StoredSplit":
        """The same split with only ``names`` (no data is read)."""
        missing = [name for name in names if name not in self.shapes]
        if missing:
            raise KeyError(f"no column(s) {missing} in this split; it has {self.column_names}")
        return StoredSplit(self.table.select(list(names)), {name: self.shapes[name] for name in names}, self._mapping)

    def __getitem__(self, index: "str | int | slice | np.ndarray | Sequence[int]") -> "np.ndarray | dict[str, np.ndarray]":
        if isinstance(index, str):
            return self.select_columns([index])[:][index]
        if isinstance(index, slice):
            rows = np.arange(len(self))[index]
        elif np.isscalar(index):
            position = int(index)  # type: ignore[arg-type]
            if not -len(self) <= position < len(self):
                raise IndexError(f"row {position} is outside this split of {len(self)} rows")
            return {name: values[0] for name, values in self.rows(np.asarray([position % len(self)])).items()}
        else:
            rows = np.asarray(index, dtype=np.int64)
        return self.rows(rows)

    def rows(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """Decode the samples at ``index`` (int array of shape ``(B,)``, any order, repeats
        allowed) to ``{name: (B, *shape)}``."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"rows must lie in [0, {len(self)}), got {index.min()}..{index.max()}")
        chunk_of = np.searchsorted(self._starts, index, side="right") - 1
        in_chunk = index - self._starts[chunk_of]
        groups = None
        out = {}
        for name, chunks in self._chunks.items():
            shape = self.shapes[name]
            dtype = np.float32 if name == "label" else np.int64
            place = self._file.get(name)
            if place is not None and place.offsets is None:
                # The whole file at once: each row's position is its chunk's place + its row in it.
                out[name] = place.view[place.data[chunk_of] + in_chunk].astype(dtype)
                continue
            column = np.zeros((len(index), math.prod(shape)) if shape else (len(index),), dtype=dtype)
            if place is not None:
                at = place.offsets[chunk_of] + in_chunk
                begins = place.view[at].astype(np.int64)
                _fill_at(column, place.view, place.data[chunk_of] + begins, place.view[at + 1] - begins)
                out[name] = column.reshape((len(index),) + shape)
                continue
            if groups is None:
                groups = [(c, chunk_of == c) for c in np.unique(chunk_of)] if len(self._starts) > 2 else [(0, None)]
            for c, selected in groups:
                local = index - self._starts[c] if selected is None else index[selected] - self._starts[c]
                values, offsets = chunks[c]
                target = column if selected is None else column[selected]
                if offsets is None:
                    target[...] = values[local]
                else:
                    _fill_right_aligned(target, values, offsets, local)
                if selected is not None:
                    column[selected] = target
            out[name] = column.reshape((len(index),) + shape)
        return out

    def iter_chunks(self, rows: int = 65536) -> Iterator[dict[str, np.ndarray]]:
        """The whole split decoded ``rows`` samples at a time, in order."""
        for start in range(0, len(self), rows):
            yield self.rows(np.arange(start, min(start + rows, len(self))))


def _fill_right_aligned(out: np.ndarray, values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> None:
    """``out[i, -len:] = row rows[i]`` of a ragged column, for all ``i`` at once (``out`` zeroed)."""
    begins = offsets[rows].astype(np.int64)
    _fill_at(out, values, begins, offsets[rows + 1].astype(np.int64) - begins)


def _fill_at(out: np.ndarray, values: np.ndarray, begins: np.ndarray, lengths: np.ndarray) -> None:
    """``out[i, -lengths[i]:] = values[begins[i]:begins[i] + lengths[i]]`` for all ``i`` (``out`` zeroed)."""
    lengths = lengths.astype(np.int64, copy=False)
    total = int(lengths.sum())
    if total == 0:
        return
    owner = np.repeat(np.arange(len(begins)), lengths)
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[owner, out.shape[1] - lengths[owner] + within] = values[begins[owner] + within]
