"""Serving requests as the data spells them (raw ids) to the model's inputs, as training encoded them.

A request row has the columns of the sample table (docs/table.md) without ``label``:
``user_id``, ``item_id`` (the candidate), ``item_history`` (earlier behaviours, oldest first),
and, where the training data had them, ``cate_id`` / ``cate_history``, ``history_timestamps``
(needed by ``time_gap`` sessions), ``behavior_history`` (behaviour types) and the context
columns. Ids are encoded with the training vocabularies (unseen ids become OOV, as in
training); the history is split into the long-term sequence and the sessions with the training
:class:`~ifusion_plugin.data.sequences.SequenceOptions` and behaviour filters.

Categories: a request may leave ``cate_id`` / ``cate_history`` out when the vocabularies know
each item's category (every built-in source, and tables that had category columns); they are
then looked up from the item, as the source's own samples were built. A history category is
read only where training read one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from ..batch import OOV_ID
from .sequences import SequenceOptions
from .table import encode_table, validate_table
from .vocabulary import Vocabularies

__all__ = ["RequestFeatures", "Rows", "as_table", "encode_candidates", "encode_requests"]

#: What :func:`encode_requests` takes: an Arrow table, a list of row dicts, or a pandas DataFrame.
Rows = Union[pa.Table, Sequence[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class RequestFeatures:
    """How a dataset turned a raw history into model inputs: what a server must repeat.

    Attributes:
        sequence: the long/short split (``long_len``, ``num_sessions``, ``session_len``,
            ``session_split``, ``session_gap_seconds``, ``long_includes_short``).
        context_columns: the context columns, in the model's input order.
        long_behaviors, session_behaviors: the behaviour types the long-term sequence and the
            sessions may hold (``None``: every type).
        history_categories: whether training histories carried categories (``False``: they were
            all OOV, and a request's ``cate_history`` is ignored).
    """

    sequence: SequenceOptions
    context_columns: tuple[str, ...] = ()
    long_behaviors: Optional[tuple[Any, ...]] = None
    session_behaviors: Optional[tuple[Any, ...]] = None
    history_categories: bool = True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``serving.json``'s ``features``)."""
        out = dataclasses.asdict(self)
        out["sequence"] = dataclasses.asdict(self.sequence)
        for name in ("context_columns", "long_behaviors", "session_behaviors"):
            out[name] = None if out[name] is None else list(out[name])
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RequestFeatures":
        """The inverse of :meth:`to_dict`."""
        tuple_or_none = lambda v: None if v is None else tuple(v)  # noqa: E731
        return cls(
            sequence=SequenceOptions(**values["sequence"]),
            context_columns=tuple(values.get("context_columns") or ()),
            long_behaviors=tuple_or_none(values.get("long_behaviors")),
            session_behaviors=tuple_or_none(values.get("session_behaviors")),
            history_categories=bool(values.get("history_categories", True)),
        )


def as_table(rows: Rows) -> pa.Table:
    """``rows`` as an Arrow table (a table is returned as is; a pandas DataFrame or a list of dicts
    is converted, list columns from Python lists)."""
    if isinstance(rows, pa.Table):
        return rows
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
        return pa.Table.from_pandas(rows, preserve_index=False)
    rows = list(rows)
    if not rows:
        raise ValueError("requests: no rows")
    return pa.Table.from_pylist(rows)


def _with_item_categories(table: pa.Table, vocabularies: Vocabularies, features: RequestFeatures) -> pa.Table:
    """Add ``cate_id`` / ``cate_history`` from the item catalogue where the request leaves them out.

    Raises:
        ValueError: the model reads categories, the request leaves them out and there is no
            catalogue to fill them (hashed ids, or encoded ids, keep none).
    """
    if vocabularies.item_categories is None:
        missing = [name for name, needed in (("cate_id", vocabularies.cates is not None),
                                             ("cate_history", vocabularies.cates is not None and features.history_categories))
                   if needed and name not in table.column_names]
        if missing:
            raise ValueError(f"requests must give {missing}: the model was trained with categories and these "
                             "vocabularies keep no item -> category catalogue to fill them (id_encoding 'hash' or encoded ids)")
        return table
    if "cate_id" not in table.column_names:
        table = table.append_column("cate_id", vocabularies.categories_of(table["item_id"]))
    if features.history_categories and "cate_history" not in table.column_names:
        history = table["item_history"].combine_chunks()
        offsets = history.offsets
        if offsets[0].as_py() != 0:  # a sliced list array
            offsets = pa.array(np.asarray(offsets) - offsets[0].as_py(), offsets.type)
        cates = vocabularies.categories_of(history.flatten())
        lists = pa.LargeListArray if pa.types.is_large_list(history.type) else pa.ListArray
        table = table.append_column("cate_history", lists.from_arrays(offsets, cates))
    return table


def encode_requests(rows: Rows, vocabularies: Vocabularies, features: RequestFeatures, *,
                    num_behaviors: int = 0) -> dict[str, np.ndarray]:
    """Encode raw request rows into the model's input columns.

    Args:
        rows: the requests (see the module doc), ``R`` rows.
        vocabularies: the training vocabularies.
        features: the training history options.
        num_behaviors: the model's behaviour-type vocabulary size (``FeatureSpec.num_behaviors``):
            when positive the requests must carry ``behavior_history``.

    Returns:
        int64 columns ``user``, ``target_item``, ``target_cate`` ``(R,)``, ``long_items``,
        ``long_cates`` ``(R, L)``, ``session_items``, ``session_cates`` ``(R, K, N)``, plus
        ``context`` ``(R, C)`` and ``session_behaviors`` ``(R, K, N)`` where the model takes them.

    Raises:
        ValueError: a required column is missing (named, with what was found), malformed, or
            the model needs behaviour types or context columns the requests do not carry.
    """
    table = as_table(rows)
    validate_table(table, "requests", labelled=False)
    missing = [name for name in features.context_columns if name not in table.column_names]
    if num_behaviors and "behavior_history" not in table.column_names:
        missing.append("behavior_history")
    if features.sequence.session_split == "time_gap" and "history_timestamps" not in table.column_names:
        missing.append("history_timestamps")
    if missing:
        raise ValueError(f"requests: missing column(s) {missing} that this model was trained with; found {table.column_names}")
    if not features.history_categories and "cate_history" in table.column_names:
        table = table.drop_columns(["cate_history"])  # training histories had OOV categories
    table = _with_item_categories(table, vocabularies, features)
    columns = encode_table(table, vocabularies, features.sequence, features.context_columns,
                           features.long_behaviors, features.session_behaviors)
    columns.pop("label")
    if not num_behaviors:
        columns.pop("session_behaviors", None)
    return columns


def encode_candidates(items: Sequence[Any], vocabularies: Vocabularies,
                      cates: Optional[Sequence[Any]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode C candidates (raw item ids, optionally their raw categories) as
    :func:`encode_requests` encodes a row's ``item_id`` / ``cate_id``.

    Returns:
        ``(target_item, target_cate)``, int64 arrays of shape ``(C,)``.

    Raises:
        ValueError: ``cates`` is given with a different length than ``items``.
    """
    item_array = pa.array(list(items))
    if cates is not None and len(cates) != len(item_array):
        raise ValueError(f"candidate categories: expected one per candidate ({len(item_array)}), got {len(cates)}")
    if vocabularies.cates is None:
        target_cate = np.full(len(item_array), OOV_ID, dtype=np.int64)
    else:
        if cates is None and vocabularies.item_categories is None:
            raise ValueError("candidate categories are needed: the model was trained with categories and these vocabularies "
                             "keep no item -> category catalogue to fill them (id_encoding 'hash' or encoded ids)")
        raw = pa.array(list(cates)) if cates is not None else vocabularies.categories_of(item_array)
        target_cate = vocabularies.cates.encode(raw)
    return vocabularies.items.encode(item_array), target_cate
