"""One batch layout for every host and every data source.

Ids are integers with ``0`` the padding index and ``1`` the out-of-vocabulary index; known ids
start at 2. Sequences are padded at the front (most recent behaviour last), and a position is
present where its id is not 0, so masks never travel separately.

This module depends on torch and numpy alone; data sources produce :class:`CTRBatch`, hosts
consume it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Mapping, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["PAD_ID", "OOV_ID", "FIRST_ID", "FeatureSpec", "CTRBatch", "SAMPLE_COLUMNS"]

PAD_ID = 0
OOV_ID = 1
FIRST_ID = 2


@dataclass(frozen=True)
class FeatureSpec:
    """Vocabulary sizes and sequence shapes of a dataset: what a host needs to build itself.

    Attributes:
        num_users: size of the user-id vocabulary, padding and OOV included.
        num_items: size of the item-id vocabulary, padding and OOV included.
        num_cates: size of the category vocabulary, padding and OOV included.
        long_len: ``L``, length of the long-term sequence.
        num_sessions: ``K``, number of short-term sessions.
        session_len: ``N``, behaviours per session.
        context_cardinalities: vocabulary size of each extra categorical column given to the
            head as a user/context feature (empty when there are none).
        num_behaviors: size of the behaviour-type vocabulary of the session behaviours
            (padding and OOV included, so at least 2 when used), or ``0`` for sources without
            behaviour types (batches then carry no ``session_behaviors``).
    """

    num_users: int
    num_items: int
    num_cates: int
    long_len: int
    num_sessions: int
    session_len: int
    context_cardinalities: tuple[int, ...] = ()
    num_behaviors: int = 0

    def __post_init__(self) -> None:
        for name in ("num_users", "num_items", "num_cates"):
            value = getattr(self, name)
            if value < FIRST_ID:
                raise ValueError(f"{name} must be at least {FIRST_ID} (padding and OOV included), got {value}")
        for name in ("long_len", "num_sessions", "session_len"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value}")
        object.__setattr__(self, "context_cardinalities", tuple(int(c) for c in self.context_cardinalities))
        if self.num_behaviors != 0 and self.num_behaviors < FIRST_ID:
            raise ValueError(
                f"num_behaviors must be 0 (no behaviour types) or at least {FIRST_ID} (padding and OOV included), "
                f"got {self.num_behaviors}"
            )


#: Column names of a stored sample (the Arrow cache) and their per-sample shapes, in terms of
#: the :class:`FeatureSpec`. Two optional columns follow them: ``context`` ``(C,)`` when the spec
#: has context columns and ``session_behaviors`` ``(K, N)`` when it has behaviour types.
SAMPLE_COLUMNS: dict[str, str] = {
    "user": "()",
    "target_item": "()",
    "target_cate": "()",
    "long_items": "(L,)",
    "long_cates": "(L,)",
    "session_items": "(K, N)",
    "session_cates": "(K, N)",
    "label": "()",
}


@dataclass
class CTRBatch:
    """A batch of CTR samples.

    Attributes:
        user: long tensor of shape ``(B,)``.
        target_item: long tensor of shape ``(B,)``, the candidate item.
        target_cate: long tensor of shape ``(B,)``, its category.
        long_items: long tensor of shape ``(B, L)``, long-term behaviour item ids, padded at the
            front, oldest first.
        long_cates: long tensor of shape ``(B, L)``, their categories.
        session_items: long tensor of shape ``(B, K, N)``, the K short-term sessions, oldest
            session first and missing sessions at the front; within a session behaviours are
            oldest first and padded at the front.
        session_cates: long tensor of shape ``(B, K, N)``, their categories.
        label: float tensor of shape ``(B,)`` with values in {0, 1}.
        context: optional long tensor of shape ``(B, C)``, extra categorical features for the head.
        session_behaviors: optional long tensor of shape ``(B, K, N)``, the behaviour type of each
            session behaviour (e.g. click, cart, buy; 0 at padding, 1 for a type unknown to the
            vocabulary), for sources whose logs carry types (``FeatureSpec.num_behaviors > 0``);
            ``None`` otherwise. The long-term sequence carries none: the heterogeneous setting of
            the paper (appendix G) draws it from one kind of behaviour.
        row: optional long tensor of shape ``(B,)``, each sample's index in its split (set by the
            built-in loaders; predictions are placed by it, whatever process scored the batch).
    """

    user: Tensor
    target_item: Tensor
    target_cate: Tensor
    long_items: Tensor
    long_cates: Tensor
    session_items: Tensor
    session_cates: Tensor
    label: Tensor
    context: Optional[Tensor] = field(default=None)
    session_behaviors: Optional[Tensor] = field(default=None)
    row: Optional[Tensor] = field(default=None)

    @property
    def long_mask(self) -> Tensor:
        """Bool tensor of shape ``(B, L)``, True at real long-term behaviours."""
        return self.long_items != PAD_ID

    @property
    def session_item_mask(self) -> Tensor:
        """Bool tensor of shape ``(B, K, N)``, True at real short-term behaviours."""
        return self.session_items != PAD_ID

    @property
    def session_mask(self) -> Tensor:
        """Bool tensor of shape ``(B, K)``, True where a session has at least one behaviour."""
        return self.session_item_mask.any(dim=-1)

    @property
    def has_long(self) -> Tensor:
        """Bool tensor of shape ``(B,)``, False for users with no long-term history."""
        return self.long_mask.any(dim=-1)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str) -> "CTRBatch":
        """A copy with every tensor on ``device``."""
        return CTRBatch(**{f.name: (None if (v := getattr(self, f.name)) is None else v.to(device)) for f in fields(self)})

    def slice(self, index: Tensor | slice) -> "CTRBatch":
        """The rows selected by ``index`` (a slice, or an index or bool tensor of shape ``(B,)``)."""
        return CTRBatch(**{f.name: (None if (v := getattr(self, f.name)) is None else v[index]) for f in fields(self)})

    @classmethod
    def from_columns(cls, columns: Mapping[str, np.ndarray | Tensor]) -> "CTRBatch":
        """Build a batch from stacked columns named as in :data:`SAMPLE_COLUMNS`.

        Args:
            columns: mapping from column name to an array whose first dimension is the batch;
                ``context``, ``session_behaviors`` and ``row`` are optional.

        Raises:
            ValueError: a required column is missing.
        """
        missing = [name for name in SAMPLE_COLUMNS if name not in columns]
        if missing:
            raise ValueError(f"columns must contain {sorted(SAMPLE_COLUMNS)}; missing {missing}")

        def as_long(value: np.ndarray | Tensor) -> Tensor:
            return torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value).long()

        context = columns.get("context")
        behaviors = columns.get("session_behaviors")
        row = columns.get("row")
        return cls(
            user=as_long(columns["user"]),
            target_item=as_long(columns["target_item"]),
            target_cate=as_long(columns["target_cate"]),
            long_items=as_long(columns["long_items"]),
            long_cates=as_long(columns["long_cates"]),
            session_items=as_long(columns["session_items"]),
            session_cates=as_long(columns["session_cates"]),
            label=torch.as_tensor(np.asarray(columns["label"]) if not isinstance(columns["label"], Tensor) else columns["label"]).float(),
            context=None if context is None else as_long(context),
            session_behaviors=None if behaviors is None else as_long(behaviors),
            row=None if row is None else as_long(row),
        )
