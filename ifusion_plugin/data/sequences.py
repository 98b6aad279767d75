"""Split one behaviour history into a long-term sequence and K short-term sessions.

Every data source (MovieLens, Amazon, Taobao, the prepared-sample table, the synthetic
generator) calls :func:`split_history` with the same :class:`SequenceOptions`, so the long/short
protocol is defined once.

Protocol:
- ``chunk``: the latest ``K * N`` behaviours form the sessions, cut from the end into chunks of
  ``N`` (the latest chunk is session ``K``; a short history gives fewer, and the first present
  session may hold fewer than ``N``).
- ``time_gap``: a new session starts where two consecutive behaviours are more than
  ``session_gap_seconds`` apart; the latest ``K`` sessions are kept, each with its latest ``N``
  behaviours (older behaviours of an over-long session are not in the short part).
- The long-term sequence is the history before the earliest kept session (its latest ``L``
  behaviours), so the two parts are disjoint, as the paper splits them; with
  ``long_includes_short`` it is the latest ``L`` behaviours of the whole history instead, as
  FuxiCTR's long-sequence models read it.
- Heterogeneous behaviours (the paper's appendix G: long-term interest from one kind of
  behaviour, sessions from all kinds): ``in_long`` and ``in_sessions`` say which behaviours each
  part may hold. Sessions are cut from the ``in_sessions`` behaviours alone; the long-term
  sequence keeps the ``in_long`` behaviours before the earliest kept session (or all of them
  with ``long_includes_short``). ``behaviors`` gives each session behaviour its type id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np

from ..batch import PAD_ID

__all__ = ["SequenceOptions", "SplitHistory", "chunk_ranges", "split_histories", "split_history"]


@dataclass(frozen=True)
class SequenceOptions:
    """How a history becomes a long-term sequence and sessions.

    Attributes:
        long_len: ``L``, the most long-term behaviours kept.
        num_sessions: ``K``, the most short-term sessions kept.
        session_len: ``N``, the most behaviours per session.
        session_split: ``"chunk"`` (fixed-size chunks) or ``"time_gap"`` (needs timestamps).
        session_gap_seconds: the gap that starts a new session in ``time_gap`` mode.
        long_includes_short: let the long-term sequence overlap the sessions.
    """

    long_len: int = 100
    num_sessions: int = 4
    session_len: int = 5
    session_split: Literal["chunk", "time_gap"] = "chunk"
    session_gap_seconds: float = 86_400.0
    long_includes_short: bool = False

    def __post_init__(self) -> None:
        for name in ("long_len", "num_sessions", "session_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.session_split not in ("chunk", "time_gap"):
            raise ValueError(f"session_split must be 'chunk' or 'time_gap', got {self.session_split!r}")
        if self.session_gap_seconds <= 0:
            raise ValueError(f"session_gap_seconds must be positive, got {self.session_gap_seconds!r}")

    def as_key(self) -> dict[str, object]:
        """The options as a plain dict, for cache keys."""
        return asdict(self)


@dataclass
class SplitHistory:
    """Fixed-shape arrays of one sample's behaviours (int64, ``PAD_ID`` where empty).

    Attributes:
        long_items, long_cates: shape ``(L,)``, padded at the front.
        session_items, session_cates: shape ``(K, N)``; missing sessions at the front, each
            session padded at the front.
        session_behaviors: shape ``(K, N)`` like the sessions, the behaviour type ids, or
            ``None`` when no ``behaviors`` were given.
    """

    long_items: np.ndarray
    long_cates: np.ndarray
    session_items: np.ndarray
    session_cates: np.ndarray
    session_behaviors: Optional[np.ndarray] = None


def _pad_front(values: np.ndarray, length: int) -> np.ndarray:
    out = np.full(length, PAD_ID, dtype=np.int64)
    if len(values):
        tail = values[-length:]
        out[length - len(tail):] = tail
    return out


def _session_bounds(
    length: int, times: Optional[np.ndarray], options: SequenceOptions
) -> list[tuple[int, int]]:
    """Half-open index ranges of the kept sessions, oldest first (at most K)."""
    if length == 0:
        return []
    if options.session_split == "chunk":
        short = min(length, options.num_sessions * options.session_len)
        start = length - short
        bounds = []
        end = length
        while end > start:
            begin = max(start, end - options.session_len)
            bounds.append((begin, end))
            end = begin
        return bounds[::-1]
    assert times is not None
    breaks = np.flatnonzero(np.diff(times) > options.session_gap_seconds) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [length]])
    kept = list(zip(starts.tolist(), ends.tolist()))[-options.num_sessions:]
    return kept


def split_history(
    items: np.ndarray,
    cates: np.ndarray,
    options: SequenceOptions,
    times: Optional[np.ndarray] = None,
    behaviors: Optional[np.ndarray] = None,
    in_long: Optional[np.ndarray] = None,
    in_sessions: Optional[np.ndarray] = None,
) -> SplitHistory:
    """Split a time-ordered history (oldest first) into the long-term part and sessions.

    Args:
        items: int array of shape ``(H,)``, vocabulary ids (``>= 2``), oldest first.
        cates: int array of shape ``(H,)``, their category ids.
        options: the split protocol.
        times: optional array of shape ``(H,)``, unix seconds, non-decreasing; required by
            ``session_split="time_gap"``.
        behaviors: optional int array of shape ``(H,)``, each behaviour's type id (``>= 2``);
            the sessions then carry them.
        in_long: optional bool array of shape ``(H,)``, the behaviours the long-term sequence
            may hold (default all).
        in_sessions: optional bool array of shape ``(H,)``, the behaviours the sessions may
            hold (default all).

    Returns:
        :class:`SplitHistory` with arrays of shapes ``(L,)`` and ``(K, N)``.

    Raises:
        ValueError: mismatched lengths, or ``time_gap`` without ``times``.
    """
    items = np.asarray(items, dtype=np.int64)
    cates = np.asarray(cates, dtype=np.int64)
    if items.shape != cates.shape or items.ndim != 1:
        raise ValueError(f"items and cates must be 1-d of equal length, got shapes {items.shape} and {cates.shape}")
    for name, value in (("behaviors", behaviors), ("in_long", in_long), ("in_sessions", in_sessions)):
        if value is not None and np.shape(value) != items.shape:
            raise ValueError(f"{name} must have shape {items.shape} like items, got {np.shape(value)}")
    if options.session_split == "time_gap":
        if times is None:
            raise ValueError("times is required when session_split='time_gap' (this source has no timestamps: use 'chunk')")
        times = np.asarray(times)
        if times.shape != items.shape:
            raise ValueError(f"times must have shape {items.shape} like items, got {times.shape}")
    # The sessions are cut from the behaviours they may hold; `where` maps back to history rows.
    where = np.arange(len(items)) if in_sessions is None else np.flatnonzero(np.asarray(in_sessions, dtype=bool))
    short_times = None if times is None else times[where]
    num_sessions, session_len = options.num_sessions, options.session_len
    bounds = _session_bounds(len(where), short_times, options)
    session_items = np.full((num_sessions, session_len), PAD_ID, dtype=np.int64)
    session_cates = np.full((num_sessions, session_len), PAD_ID, dtype=np.int64)
    session_behaviors = None if behaviors is None else np.full((num_sessions, session_len), PAD_ID, dtype=np.int64)
    offset = num_sessions - len(bounds)
    for row, (begin, end) in enumerate(bounds, start=offset):
        rows = where[begin:end]
        session_items[row] = _pad_front(items[rows], session_len)
        session_cates[row] = _pad_front(cates[rows], session_len)
        if session_behaviors is not None:
            session_behaviors[row] = _pad_front(np.asarray(behaviors, dtype=np.int64)[rows], session_len)
    long_end = len(items) if options.long_includes_short or not bounds else int(where[bounds[0][0]])
    long_rows = np.arange(long_end)
    if in_long is not None:
        long_rows = long_rows[np.asarray(in_long, dtype=bool)[:long_end]]
    return SplitHistory(
        long_items=_pad_front(items[long_rows], options.long_len),
        long_cates=_pad_front(cates[long_rows], options.long_len),
        session_items=session_items,
        session_cates=session_cates,
        session_behaviors=session_behaviors,
    )


def split_histories(
    items: np.ndarray,
    cates: np.ndarray,
    offsets: np.ndarray,
    options: SequenceOptions,
    behaviors: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """:func:`split_history` of many rows at once, without a Python loop per row.

    For ``session_split="chunk"`` with every behaviour allowed in both parts (no ``in_long`` /
    ``in_sessions``): both parts are contiguous runs of each row (:func:`chunk_ranges`), so
    the whole batch is one gather per array. Equal to :func:`split_history` row by row (a test
    compares them).

    Args:
        items, cates: int arrays of shape ``(T,)``, every row's history concatenated (oldest
            first within a row).
        offsets: int array of shape ``(R + 1,)``, row ``r`` is ``items[offsets[r]:offsets[r + 1]]``.
        options: the split protocol; ``session_split`` must be ``"chunk"``.
        behaviors: optional int array of shape ``(T,)``, the behaviour type ids.

    Returns:
        ``long_items``, ``long_cates`` of shape ``(R, L)``; ``session_items``, ``session_cates``
        (and ``session_behaviors`` with ``behaviors``) of shape ``(R, K, N)``.

    Raises:
        ValueError: ``session_split`` is not ``"chunk"`` (time gaps need each row's times: use
            :func:`split_history`).
    """
    if options.session_split != "chunk":
        raise ValueError(f"split_histories handles session_split='chunk', got {options.session_split!r}")
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    # The parts are contiguous runs of each row (chunk_ranges), right-aligned into the padding.
    long_begin, long_end, short_begin = chunk_ranges(lengths, options)
    flat = {"items": items, "cates": cates, **({"behaviors": behaviors} if behaviors is not None else {})}
    long_parts = {name: _right_aligned(values, offsets[:-1] + long_begin, long_end - long_begin, options.long_len)
                  for name, values in flat.items() if name != "behaviors"}
    width = options.num_sessions * options.session_len
    shape = (len(lengths), options.num_sessions, options.session_len)
    session_parts = {name: _right_aligned(values, offsets[:-1] + short_begin, lengths - short_begin, width).reshape(shape)
                     for name, values in flat.items()}
    out = {"long_items": long_parts["items"], "long_cates": long_parts["cates"],
           "session_items": session_parts["items"], "session_cates": session_parts["cates"]}
    if behaviors is not None:
        out["session_behaviors"] = session_parts["behaviors"]
    return out


def _right_aligned(values: np.ndarray, starts: np.ndarray, counts: np.ndarray, width: int) -> np.ndarray:
    """``(R, width)`` int64: row ``r`` holds ``values[starts[r]:starts[r] + counts[r]]`` at its end,
    :data:`~ifusion_plugin.batch.PAD_ID` before it (``counts <= width``)."""
    values = np.asarray(values, dtype=np.int64)
    column = np.arange(width)
    present = column[None, :] >= (width - counts)[:, None]
    index = starts[:, None] + column[None, :] - (width - counts)[:, None]
    if not len(values):
        return np.full((len(starts), width), PAD_ID, dtype=np.int64)
    return np.where(present, values[np.clip(index, 0, len(values) - 1)], PAD_ID)

def chunk_ranges(lengths: np.ndarray, options: SequenceOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each row's parts lie in its history, for ``session_split="chunk"`` with every
    behaviour allowed in both parts.

    The ``(L,)`` long-term array of :func:`split_history` is ``history[long_begin:long_end]``
    padded at the front, and its ``(K, N)`` sessions, flattened, are ``history[short_begin:]``
    padded at the front: both are contiguous runs of the history. A store that keeps rows
    without their leading padding (the cache does) can take them as slices, with no padded
    array in between.

    Args:
        lengths: int array of shape ``(R,)``, each row's history length.
        options: the split protocol; ``session_split`` must be ``"chunk"``.

    Returns:
        ``long_begin``, ``long_end``, ``short_begin``: int64 arrays of shape ``(R,)``,
        positions within each row (the sessions end where the row ends).
    """
    if options.session_split != "chunk":
        raise ValueError(f"chunk_ranges handles session_split='chunk', got {options.session_split!r}")
    lengths = np.asarray(lengths, dtype=np.int64)
    short_begin = lengths - np.minimum(lengths, options.num_sessions * options.session_len)
    long_end = lengths if options.long_includes_short else short_begin
    long_begin = np.maximum(long_end - options.long_len, 0)
    return long_begin, long_end, short_begin
