"""Data sources, the Arrow cache and the LightningDataModules (imports lightning and datasets)."""

from .datamodule import (
    AmazonBooksDIENDataModule,
    AmazonGroceryDataModule,
    CTRDataModule,
    MovieLens1MDataModule,
    SyntheticDataModule,
    TaobaoDataModule,
    build_ctr_samples,
)
from .amazon_reviews import AmazonReviewsDataModule
from .movielens import MovieLensDataModule
from .sequences import SequenceOptions, split_history
from .table_datamodule import TableDataModule

__all__ = [
    "AmazonBooksDIENDataModule",
    "AmazonGroceryDataModule",
    "AmazonReviewsDataModule",
    "CTRDataModule",
    "MovieLens1MDataModule",
    "MovieLensDataModule",
    "SequenceOptions",
    "SyntheticDataModule",
    "TableDataModule",
    "TaobaoDataModule",
    "build_ctr_samples",
    "split_history",
]
