"""MovieLens as GroupLens ships it: ml-1m (``ratings.dat`` + ``movies.dat``) and ml-100k
(``u.data`` + ``u.item``), with their timestamps, so sessions can be split by time gap.

Every rating is an implicit positive (the DIN/DIEN protocol), optionally only ratings
``>= min_rating``; each user's ratings are ordered by timestamp, ties in file order. An item's
category is its first genre. Samples follow :func:`~ifusion_plugin.data.build_ctr_samples`, the
protocol of every built-in source.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .datamodule import CTRDataModule
from .logs import _bad, _report_skips, read_delimited
from .protocol import (
    NegativeSampling,
    _sequences_from_log,
    build_ctr_samples,
    check_negative_sampling,
)

__all__ = ["ML100K_GENRES", "MovieLens1MDataModule", "MovieLensDataModule"]

#: The 19 genre flags of ml-100k's ``u.item``, in file order (its ``u.genre``).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
#: Files of each archive: (ratings, titles).
_FILES = {"ml-1m": ("ratings.dat", "movies.dat"), "ml-100k": ("u.data", "u.item")}
_INT = pa.int64()


class MovieLensDataModule(CTRDataModule):
    """The official MovieLens archives (GroupLens), unpacked in ``root``.

    Args:
        root: the unpacked archive: ``ratings.dat`` and ``movies.dat`` (ml-1m,
            ``UserID::MovieID::Rating::Timestamp``, ``MovieID::Title::Genres`` in ISO-8859-1),
            or ``u.data`` and ``u.item`` (ml-100k, tab-separated ``user item rating timestamp``,
            pipe-separated items with 19 genre flags).
        archive: ``"ml-1m"``, ``"ml-100k"``, or ``"auto"`` (whichever files ``root`` holds).
        min_rating: keep ratings ``>= min_rating`` as positives (0 keeps all, the usual
            implicit-feedback reading).
        session_split: ``"time_gap"`` (default: the timestamps allow it) or ``"chunk"``.
        session_gap_seconds: the gap that starts a new session.
        Other arguments: as :class:`~ifusion_plugin.data.MovieLens1MDataModule`.
    """

    DOWNLOAD = ("https://files.grouplens.org/datasets/movielens/ml-1m.zip or .../ml-100k.zip, unzipped "
                "(ratings.dat + movies.dat, or u.data + u.item)")

    def __init__(
        self,
        root: str = "ml-1m",
        archive: Literal["auto", "ml-1m", "ml-100k"] = "auto",
        min_rating: int = 0,
        train_per_user: int = 20,
        min_train_position: int = 20,
        session_split: Literal["chunk", "time_gap"] = "time_gap",
        session_gap_seconds: float = 3_600.0,
        negative_sampling: NegativeSampling = "popularity",
        test_per_user: int = 1,
        **options: Any,
    ) -> None:
        if archive not in ("auto", *_FILES):
            raise ValueError(f"archive must be one of auto, {', '.join(_FILES)}, got {archive!r}")
        if not isinstance(min_rating, int) or isinstance(min_rating, bool) or not 0 <= min_rating <= 5:
            raise ValueError(f"min_rating must be an int in 0..5, got {min_rating!r}")
        super().__init__(session_split=session_split, session_gap_seconds=session_gap_seconds, **options)
        check_negative_sampling(negative_sampling)
        self.root, self.archive, self.min_rating = root, archive, min_rating
        self.train_per_user, self.min_train_position = train_per_user, min_train_position
        self.negative_sampling, self.test_per_user = negative_sampling, test_per_user

    def resolved_archive(self) -> str:
        """``"ml-1m"`` or ``"ml-100k"``: the given archive, or the one whose files ``root`` holds
        (ml-1m when neither is complete, so that the missing-file error names its files)."""
        if self.archive != "auto":
            return self.archive
        for name, files in _FILES.items():
            if all(os.path.exists(os.path.join(self.root, f)) for f in files):
                return name
        return "ml-1m"

    def _source_name(self) -> str:
        return f"movielens-{self.resolved_archive()}"

    def _raw_files(self) -> list[str]:
        return [os.path.join(self.root, f) for f in _FILES[self.resolved_archive()]]

    def _content_options(self) -> dict[str, object]:
        return {"archive": self.resolved_archive(), "min_rating": self.min_rating, "train_per_user": self.train_per_user,
                "min_train_position": self.min_train_position, "negative_sampling": self.negative_sampling,
                "test_per_user": self.test_per_user}

    def read(self) -> tuple[pa.Table, dict[int, int]]:
        """The ratings (``user, item, rating, time``) and movie id -> genre id (1.., in sorted
        genre-name order; a movie without a genre gets none)."""
        ratings_path, items_path = self._raw_files()
        columns = ("user", "item", "rating", "time")
        types = {name: _INT for name in columns}
        if self.resolved_archive() == "ml-1m":
            ratings = read_delimited(ratings_path, "::", columns, types, self.on_bad_line)
            movies = read_delimited(items_path, "::", ("item", "title", "genres"), {"item": _INT}, self.on_bad_line,
                                    encoding="latin-1")
            genre = {int(i): g.split("|")[0] for i, g in zip(movies["item"].to_numpy(), movies["genres"].to_pylist()) if g}
        else:
            ratings = read_delimited(ratings_path, "\t", columns, types, self.on_bad_line)
            names = ("item", "title", "release", "video_release", "url", *ML100K_GENRES)
            movies = read_delimited(items_path, "|", names, {"item": _INT, **{g: _INT for g in ML100K_GENRES}},
                                    self.on_bad_line, encoding="latin-1")
            flags = np.stack([movies[g].to_numpy() for g in ML100K_GENRES], axis=1)
            first = np.argmax(flags > 0, axis=1)
            genre = {int(i): ML100K_GENRES[f] for i, f, any_flag in zip(movies["item"].to_numpy(), first, flags.any(axis=1))
                     if any_flag}
        genre_id = {g: n + 1 for n, g in enumerate(sorted(set(genre.values())))}
        return ratings, {item: genre_id[g] for item, g in genre.items()}

    def _build(self):
        ratings, cate_of = self.read()
        if self.min_rating > 0:
            ratings = ratings.filter(pc.greater_equal(ratings["rating"], self.min_rating))
        if ratings.num_rows == 0:
            raise ValueError(f"{self._raw_files()[0]}: no ratings >= min_rating={self.min_rating}")
        users, seqs, times = _sequences_from_log(*(ratings[c].to_numpy() for c in ("user", "item", "time")))
        return build_ctr_samples(users, seqs, cate_of, self.sequence_options, seed=self.seed, times=times,
                                 train_per_user=self.train_per_user, min_train_position=self.min_train_position,
                                 negative_sampling=self.negative_sampling, test_per_user=self.test_per_user)


class MovieLens1MDataModule(CTRDataModule):
    """MovieLens-1M from ``root/sequences.tsv`` (``user_id<TAB>movie_ids``, comma-separated,
    oldest first) and ``root/movies.dat`` (``id::title::genres``; category = first genre).
    Sessions are chunks (no timestamps)."""

    DOWNLOAD = (
        "movies.dat is in https://files.grouplens.org/datasets/movielens/ml-1m.zip; sequences.tsv is its "
        "ratings.dat as one line per user, 'user_id<TAB>movie ids oldest first' (comma-separated)"
    )

    def __init__(
        self,
        root: str = "movielens-1m",
        train_per_user: int = 20,
        min_train_position: int = 20,
        negative_sampling: NegativeSampling = "uniform",
        test_per_user: int = 1,
        **options: Any,
    ) -> None:
        if options.get("session_split", "chunk") != "chunk":
            raise ValueError("MovieLens-1M here has no timestamps: session_split must be 'chunk'")
        super().__init__(**options)
        check_negative_sampling(negative_sampling)
        self.negative_sampling = negative_sampling
        self.test_per_user = test_per_user
        self.root = root
        self.train_per_user = train_per_user
        self.min_train_position = min_train_position

    def _source_name(self) -> str:
        return "movielens-1m"

    def _raw_files(self) -> list[str]:
        return [os.path.join(self.root, "sequences.tsv"), os.path.join(self.root, "movies.dat")]

    def _content_options(self) -> dict[str, object]:
        return {"train_per_user": self.train_per_user, "min_train_position": self.min_train_position,
                "negative_sampling": self.negative_sampling,
                "test_per_user": self.test_per_user}

    def read(self) -> tuple[list[int], list[np.ndarray], dict[int, int]]:
        """Users, sequences and movie -> first-genre id (1.. in sorted genre-name order)."""
        seq_path, movies_path = self._raw_files()
        users, seqs, skipped = [], [], [0]
        with open(seq_path, encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
            if header != ["user_id", "movie_ids"]:
                raise ValueError(f"{seq_path}:1: expected header 'user_id<TAB>movie_ids', got {header!r}")
            for lineno, line in enumerate(f, start=2):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2:
                    _bad(seq_path, lineno, f"expected 2 tab-separated fields, got {len(parts)}", self.on_bad_line, skipped)
                    continue
                try:
                    u = int(parts[0])
                    ids = np.array([int(x) for x in parts[1].split(",")], dtype=np.int64)
                except ValueError as e:
                    _bad(seq_path, lineno, f"non-integer id ({e})", self.on_bad_line, skipped)
                    continue
                users.append(u)
                seqs.append(ids)
        _report_skips(seq_path, skipped[0])
        first_genre: dict[int, str] = {}
        skipped = [0]
        with open(movies_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                parts = line.rstrip("\n").split("::")
                if len(parts) != 3 or not parts[0].strip().isdigit():
                    _bad(movies_path, lineno, "expected 'movie_id::title::genres'", self.on_bad_line, skipped)
                    continue
                first_genre[int(parts[0])] = parts[2].split("|")[0]
        _report_skips(movies_path, skipped[0])
        genre_id = {g: i + 1 for i, g in enumerate(sorted(set(first_genre.values())))}
        return users, seqs, {m: genre_id[g] for m, g in first_genre.items()}

    def _build(self):
        users, seqs, cate_of = self.read()
        return build_ctr_samples(users, seqs, cate_of, self.sequence_options, seed=self.seed,
                                 train_per_user=self.train_per_user, min_train_position=self.min_train_position,
                                 negative_sampling=self.negative_sampling, test_per_user=self.test_per_user)
