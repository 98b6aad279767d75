"""Amazon review dumps as McAuley's group ships them, 2014 and 2018 editions.

- 2014: ``reviews_<Category>_5.json.gz`` (JSON lines: ``reviewerID, asin, unixReviewTime, ...``)
  and ``meta_<Category>.json.gz``, whose lines are Python literals (``{'asin': ..., 'categories':
  [[...]]}``), read with :func:`ast.literal_eval` (literals only, never ``eval``).
- 2018: ``<Category>_5.json.gz`` and ``meta_<Category>.json.gz``, true JSON (``category`` list).

Every review is an implicit positive (the DIN/DIEN protocol), ordered by review time per user,
ties in file order. An item's category is the last (most specific) entry of its first category
path (2014, as DIEN's script takes it) or of its ``category`` list (2018); items without meta get
none. User and item ids stay the strings of the dump (``predict`` writes them).
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional

import numpy as np
import pyarrow as pa

from .datamodule import CTRDataModule
from .logs import iter_literal_lines, read_json_lines
from .protocol import (
    NegativeSampling,
    _sequences_from_log,
    build_ctr_samples,
    check_negative_sampling,
)
from .vocabulary import Vocabulary

__all__ = ["AmazonReviewsDataModule", "item_category"]

_REVIEW_FIELDS = {"reviewerID": pa.string(), "asin": pa.string(), "unixReviewTime": pa.int64()}


def item_category(record: dict) -> Optional[str]:
    """The category of one meta record: the last entry of the 2014 ``categories[0]`` path or of
    the 2018 ``category`` list; ``None`` when it has neither (or they are empty)."""
    paths = record.get("categories")
    if isinstance(paths, list) and paths and isinstance(paths[0], list) and paths[0]:
        return str(paths[0][-1])
    flat = record.get("category")
    if isinstance(flat, list) and flat:
        return str(flat[-1])
    return None


class AmazonReviewsDataModule(CTRDataModule):
    """One category of the Amazon review dumps (2014 or 2018), files as downloaded in ``root``.

    Args:
        root: directory of the review and meta files (gzipped or not).
        category: the dump's category name, e.g. ``"Grocery_and_Gourmet_Food"`` or ``"Books"``.
        edition: ``"2014"``, ``"2018"`` or ``"auto"`` (whichever review file ``root`` holds).
        session_split: ``"time_gap"`` (default; review times are days) or ``"chunk"``.
        session_gap_days: the gap that starts a new session.
        Other arguments: as :class:`~ifusion_plugin.data.AmazonGroceryDataModule`.
    """

    DOWNLOAD = ("https://jmcauley.ucsd.edu/data/amazon/ (2014: reviews_<Category>_5.json.gz + meta_<Category>.json.gz) "
                "or https://nijianmo.github.io/amazon/ (2018: <Category>_5.json.gz + meta_<Category>.json.gz)")

    def __init__(
        self,
        root: str = "amazon",
        category: str = "Grocery_and_Gourmet_Food",
        edition: Literal["auto", "2014", "2018"] = "auto",
        train_per_user: int = 20,
        min_train_position: int = 1,
        session_gap_days: float = 1.0,
        long_len: int = 50,
        session_split: Literal["chunk", "time_gap"] = "time_gap",
        negative_sampling: NegativeSampling = "popularity",
        test_per_user: int = 1,
        **options: Any,
    ) -> None:
        if edition not in ("auto", "2014", "2018"):
            raise ValueError(f"edition must be one of auto, 2014, 2018, got {edition!r}")
        if not category or "/" in category:
            raise ValueError(f"category must be a dump's category name such as 'Books', got {category!r}")
        super().__init__(long_len=long_len, session_split=session_split, session_gap_seconds=session_gap_days * 86_400.0, **options)
        check_negative_sampling(negative_sampling)
        self.root, self.category, self.edition = root, category, edition
        self.train_per_user, self.min_train_position = train_per_user, min_train_position
        self.negative_sampling, self.test_per_user = negative_sampling, test_per_user

    def _candidates(self, edition: str) -> tuple[str, str]:
        review = f"reviews_{self.category}_5.json" if edition == "2014" else f"{self.category}_5.json"
        return review, f"meta_{self.category}.json"

    def _existing(self, name: str) -> Optional[str]:
        for path in (os.path.join(self.root, name + ".gz"), os.path.join(self.root, name)):
            if os.path.exists(path):
                return path
        return None

    def resolved_edition(self) -> str:
        """The given edition, or the one whose review file ``root`` holds (2014 when neither)."""
        if self.edition != "auto":
            return self.edition
        return "2018" if self._existing(self._candidates("2018")[0]) and not self._existing(self._candidates("2014")[0]) else "2014"

    def _source_name(self) -> str:
        return f"amazon-{self.resolved_edition()}-{self.category}"

    def _raw_files(self) -> list[str]:
        # The gzipped name is expected (and named when missing) unless a plain file is there.
        return [self._existing(name) or os.path.join(self.root, name + ".gz") for name in self._candidates(self.resolved_edition())]

    def _content_options(self) -> dict[str, object]:
        return {"edition": self.resolved_edition(), "category": self.category, "train_per_user": self.train_per_user,
                "min_train_position": self.min_train_position, "negative_sampling": self.negative_sampling,
                "test_per_user": self.test_per_user}

    def _build(self):
        reviews_path, meta_path = self._raw_files()
        reviews = read_json_lines(reviews_path, _REVIEW_FIELDS, self.on_bad_line)
        for name in _REVIEW_FIELDS:
            if reviews[name].null_count:
                raise ValueError(f"{reviews_path}: {reviews[name].null_count} review(s) without {name!r}")
        user_names, users = np.unique(reviews["reviewerID"].to_numpy(zero_copy_only=False).astype(str), return_inverse=True)
        item_names, items = np.unique(reviews["asin"].to_numpy(zero_copy_only=False).astype(str), return_inverse=True)
        item_index = {name: i for i, name in enumerate(item_names)}
        category_of_item: dict[int, str] = {}
        for record in iter_literal_lines(meta_path, self.on_bad_line):
            index = item_index.get(str(record.get("asin")))
            name = item_category(record) if index is not None else None
            if name is not None:
                category_of_item[index] = name
        category_id = {name: n + 1 for n, name in enumerate(sorted(set(category_of_item.values())))}
        cate_of = {item: category_id[name] for item, name in category_of_item.items()}
        order_users, seqs, times = _sequences_from_log(users.astype(np.int64), items.astype(np.int64),
                                                       reviews["unixReviewTime"].to_numpy())
        splits, spec, vocabularies = build_ctr_samples(
            order_users, seqs, cate_of, self.sequence_options, seed=self.seed, times=times,
            train_per_user=self.train_per_user, min_train_position=self.min_train_position,
            negative_sampling=self.negative_sampling, test_per_user=self.test_per_user)
        # The protocol works on int codes; predictions and the vocabularies carry the dump's own
        # string ids (and category names).
        for columns in splits.values():
            columns["user_id"] = pa.array(user_names[columns["user_id"]])
            columns["item_id"] = pa.array(item_names[columns["item_id"]])
        category_names = np.array(sorted(category_id, key=category_id.get), dtype=object)
        vocabularies.users = Vocabulary.from_keys(pa.array(user_names[vocabularies.users.keys.to_numpy()]))
        vocabularies.items = Vocabulary.from_keys(pa.array(item_names[vocabularies.items.keys.to_numpy()]))
        vocabularies.item_categories = pa.table({
            "item": pa.array(item_names[list(category_of_item)], pa.string()),
            "cate": pa.array(list(category_of_item.values()), pa.string()),
        })
        if vocabularies.cates is not None:
            vocabularies.cates = Vocabulary.from_keys(
                pa.array(category_names[vocabularies.cates.keys.to_numpy() - 1].astype(str), pa.string()))
        return splits, spec, vocabularies
