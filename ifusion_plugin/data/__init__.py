"""Data sources, the Arrow cache and the LightningDataModules (imports lightning and pyarrow)."""

from .amazon_books_dien import AmazonBooksDIENDataModule
from .amazon_grocery import AmazonGroceryDataModule
from .amazon_reviews import AmazonReviewsDataModule
from .datamodule import CTRDataModule
from .movielens import MovieLens1MDataModule, MovieLensDataModule
from .protocol import build_ctr_samples
from .sequences import SequenceOptions, split_history
from .synthetic import SyntheticDataModule
from .table_datamodule import TableDataModule
from .taobao import TaobaoDataModule

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
