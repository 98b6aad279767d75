"""Amazon Grocery as ReChorus ships it (``interactions.tsv`` + ``item_category.tsv``)."""

from __future__ import annotations

import os
from typing import Any, Literal

from .datamodule import CTRDataModule
from .logs import read_int_columns
from .protocol import (
    NegativeSampling,
    _sequences_from_log,
    build_ctr_samples,
    check_negative_sampling,
)

__all__ = ["AmazonGroceryDataModule"]


class AmazonGroceryDataModule(CTRDataModule):
    """Amazon Grocery (ReChorus copy): ``root/interactions.tsv`` (``user_id, item_id, time``,
    unix seconds) and ``root/item_category.tsv`` (``item_id, i_category``). ``time_gap``
    sessions use ``session_gap_days``. Same protocol as MovieLens; ``min_train_position``
    defaults to 1 because histories are short (median 5)."""

    DOWNLOAD = (
        "ReChorus's Grocery_and_Gourmet_Food (https://github.com/THUwangcy/ReChorus, data/): "
        "interactions.tsv and item_category.tsv"
    )

    def __init__(
        self,
        root: str = "amazon-grocery",
        train_per_user: int = 20,
        min_train_position: int = 1,
        session_gap_days: float = 1.0,
        long_len: int = 50,
        session_split: Literal["chunk", "time_gap"] = "time_gap",
        negative_sampling: NegativeSampling = "uniform",
        test_per_user: int = 1,
        **options: Any,
    ) -> None:
        super().__init__(long_len=long_len, session_split=session_split, session_gap_seconds=session_gap_days * 86_400.0, **options)
        check_negative_sampling(negative_sampling)
        self.negative_sampling = negative_sampling
        self.test_per_user = test_per_user
        self.root, self.train_per_user, self.min_train_position = root, train_per_user, min_train_position

    def _source_name(self) -> str:
        return "amazon-grocery"

    def _raw_files(self) -> list[str]:
        return [os.path.join(self.root, "interactions.tsv"), os.path.join(self.root, "item_category.tsv")]

    def _content_options(self) -> dict[str, object]:
        return {"train_per_user": self.train_per_user, "min_train_position": self.min_train_position,
                "negative_sampling": self.negative_sampling,
                "test_per_user": self.test_per_user}

    def _build(self):
        inter, cats = self._raw_files()
        columns = ("user_id", "item_id", "time")
        rows = read_int_columns(inter, "\t", columns, columns, header=True, on_bad_line=self.on_bad_line)
        cate_rows = read_int_columns(cats, "\t", ("item_id", "i_category"), ("item_id", "i_category"), header=True,
                                     on_bad_line=self.on_bad_line)
        users, seqs, times = _sequences_from_log(*(rows[name].to_numpy() for name in columns))
        cate_of = dict(zip(cate_rows["item_id"].to_pylist(), cate_rows["i_category"].to_pylist()))
        return build_ctr_samples(users, seqs, cate_of, self.sequence_options, seed=self.seed,
                                 train_per_user=self.train_per_user, min_train_position=self.min_train_position, times=times,
                                 negative_sampling=self.negative_sampling, test_per_user=self.test_per_user)
