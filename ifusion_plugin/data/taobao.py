"""Logs in the Taobao UserBehavior format (Taobao, and our Yelp and Taobao multi-behaviour logs)."""

from __future__ import annotations

import os
from typing import Any, Literal, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..batch import FIRST_ID, OOV_ID
from .datamodule import CTRDataModule
from .logs import read_int_columns
from .protocol import NegativeSampling, build_ctr_samples, check_negative_sampling
from .requests import RequestFeatures
from .vocabulary import Vocabulary

__all__ = ["TaobaoDataModule"]


class TaobaoDataModule(CTRDataModule):
    """Taobao UserBehavior format: ``root/UserBehavior.csv``, no header,
    ``user_id,item_id,category_id,behavior_type,timestamp`` (also the format of our Yelp and
    Taobao multi-behaviour logs).

    Which behaviours play which part is set by three lists of behaviour types (the paper's
    heterogeneous setting, appendix G: the long-term interest from one kind of behaviour, the
    sessions from all kinds):

    - ``positive_behaviors``: the behaviours that become samples (the positive target, with a
      sampled negative); test is a user's last one, valid the one before;
    - ``long_behaviors``: the behaviours the long-term sequence holds (default: the positives);
    - ``session_behaviors``: the behaviours the sessions hold (default: the positives); each
      session behaviour carries its type as ``session_behaviors`` in the batch (type ids from 2
      in sorted name order, ``FeatureSpec.num_behaviors`` their count + 2).

    A history holds every earlier behaviour of these kinds; rows of other types are not read.
    Every listed type must occur in the file (a misspelt type would otherwise select nothing).
    """

    DOWNLOAD = (
        "a UserBehavior.csv in the Taobao UserBehavior format (user_id,item_id,category_id,behavior_type,timestamp); "
        "the full Taobao log: https://tianchi.aliyun.com/dataset/649"
    )

    def __init__(
        self,
        root: str = "taobao-userbehavior",
        positive_behaviors: tuple[str, ...] = ("pv", "cart", "fav", "buy"),
        long_behaviors: Optional[tuple[str, ...]] = None,
        session_behaviors: Optional[tuple[str, ...]] = None,
        train_per_user: int = 20,
        min_train_position: int = 20,
        session_gap_seconds: float = 1800.0,
        session_split: Literal["chunk", "time_gap"] = "time_gap",
        negative_sampling: NegativeSampling = "uniform",
        test_per_user: int = 1,
        **options: Any,
    ) -> None:
        super().__init__(session_split=session_split, session_gap_seconds=session_gap_seconds, **options)
        check_negative_sampling(negative_sampling)
        self.negative_sampling = negative_sampling
        self.test_per_user = test_per_user
        for name, value in (("positive_behaviors", positive_behaviors), ("long_behaviors", long_behaviors),
                            ("session_behaviors", session_behaviors)):
            if value is not None and (isinstance(value, str) or len(value) == 0):
                raise ValueError(f"{name} must be a non-empty list of behaviour types, got {value!r}")
        self.root = root
        self.positive_behaviors = tuple(sorted(positive_behaviors))
        self.long_behaviors = tuple(sorted(long_behaviors)) if long_behaviors is not None else self.positive_behaviors
        self.session_behaviors = tuple(sorted(session_behaviors)) if session_behaviors is not None else self.positive_behaviors
        self.train_per_user, self.min_train_position = train_per_user, min_train_position

    def _source_name(self) -> str:
        return "taobao"

    def _raw_files(self) -> list[str]:
        return [os.path.join(self.root, "UserBehavior.csv")]

    def _content_options(self) -> dict[str, object]:
        return {"positive_behaviors": list(self.positive_behaviors), "long_behaviors": list(self.long_behaviors),
                "session_behaviors": list(self.session_behaviors), "train_per_user": self.train_per_user,
                "min_train_position": self.min_train_position, "negative_sampling": self.negative_sampling,
                "test_per_user": self.test_per_user}

    def request_features(self) -> RequestFeatures:
        return RequestFeatures(sequence=self.sequence_options, long_behaviors=self.long_behaviors,
                               session_behaviors=self.session_behaviors)

    def _build(self):
        (path,) = self._raw_files()
        wanted = set(self.positive_behaviors) | set(self.long_behaviors) | set(self.session_behaviors)
        log = read_int_columns(path, ",", ("user", "item", "cate", "behavior", "time"), ("user", "item", "cate", "time"),
                               header=False, on_bad_line=self.on_bad_line)
        found = set(pc.unique(log["behavior"]).to_pylist())
        log = log.filter(pc.is_in(log["behavior"], value_set=pa.array(sorted(wanted), pa.string())))
        for name in ("positive_behaviors", "long_behaviors", "session_behaviors"):
            missing = sorted(set(getattr(self, name)) - found)
            if missing:
                raise ValueError(f"{name}: behaviour type(s) {missing} do not occur in {path}; its types are {sorted(found)}")
        type_id = {name: index + FIRST_ID for index, name in enumerate(self.session_behaviors)}
        behavior = log["behavior"]

        def member(kinds: Sequence[str]) -> np.ndarray:
            return pc.is_in(behavior, value_set=pa.array(list(kinds), pa.string())).to_numpy(zero_copy_only=False)

        type_ids = np.full(len(log), OOV_ID, dtype=np.int64)
        for kind, index in type_id.items():
            type_ids[pc.equal(behavior, kind).to_numpy(zero_copy_only=False)] = index
        arr = np.stack([log["user"].to_numpy(), log["item"].to_numpy(), log["cate"].to_numpy(), log["time"].to_numpy(),
                        type_ids, member(self.positive_behaviors), member(self.long_behaviors), member(self.session_behaviors)],
                       axis=1).astype(np.int64).reshape(-1, 8)
        # Grouped by user in time order (file order breaks ties), as _sequences_from_log does,
        # but keeping every per-row column (types, masks) with its row.
        grouped = arr[np.lexsort((np.arange(len(arr)), arr[:, 3], arr[:, 0]))]
        users, starts = np.unique(grouped[:, 0], return_index=True)
        parts = np.split(grouped, starts[1:]) if len(grouped) else []
        users, times = users.tolist(), [part[:, 3] for part in parts]
        cate_of = {int(i): int(c) for i, c in zip(arr[:, 1], arr[:, 2])}
        splits, spec, vocabularies = build_ctr_samples(
            users, [part[:, 1] for part in parts], cate_of, self.sequence_options, seed=self.seed,
            train_per_user=self.train_per_user, min_train_position=self.min_train_position, times=times,
            negative_sampling=self.negative_sampling, test_per_user=self.test_per_user,
            behaviors=[part[:, 4] for part in parts], num_behaviors=len(type_id) + FIRST_ID,
            positive=[part[:, 5].astype(bool) for part in parts], in_long=[part[:, 6].astype(bool) for part in parts],
            in_sessions=[part[:, 7].astype(bool) for part in parts],
        )
        vocabularies.behaviors = Vocabulary.from_keys(pa.array(list(self.session_behaviors), pa.string()))
        return splits, spec, vocabularies
