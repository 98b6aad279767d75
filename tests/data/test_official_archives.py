"""The files users download: MovieLens ml-1m / ml-100k archives and the Amazon review dumps
(2014 with Python-literal meta lines, 2018 JSON), written here in their exact formats."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from ifusion_plugin.data import AmazonReviewsDataModule, MovieLensDataModule
from ifusion_plugin.data.amazon_reviews import item_category
from ifusion_plugin.data.logs import iter_literal_lines
from ifusion_plugin.data.movielens import ML100K_GENRES

SMALL = dict(train_per_user=3, min_train_position=2, long_len=8, num_sessions=2, session_len=3, batch_size=8)
RNG = np.random.default_rng(0)
USERS, ITEMS = 6, 40


def _ratings() -> list[tuple[int, int, int, int]]:
    """Per user 15 distinct items at shuffled times (files are not time-sorted)."""
    rows = []
    for user in range(1, USERS + 1):
        items = RNG.choice(np.arange(1, ITEMS + 1), size=15, replace=False)
        times = 978_300_000 + RNG.permutation(15) * 4_000
        rows += [(user, int(i), int(RNG.integers(1, 6)), int(t)) for i, t in zip(items, times)]
    return rows


def _ml1m(root: Path, rows) -> Path:
    root.mkdir()
    (root / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    genres = ["Comedy|Romance", "Action", "Drama|War", "Animation|Children's|Comedy"]
    # ISO-8859-1, as GroupLens ships it (byte 0xe9 is not UTF-8).
    text = "".join(f"{i}::Caf\xe9 {i}: Part {i} (1995)::{genres[i % 4]}\n" for i in range(1, ITEMS + 1))
    (root / "movies.dat").write_bytes(text.encode("latin-1"))
    return root


def _ml100k(root: Path, rows) -> Path:
    root.mkdir()
    (root / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    lines = []
    for i in range(1, ITEMS + 1):
        flags = ["0"] * 19
        flags[1 + i % 5] = "1"  # Action .. Comedy
        flags[10] = "1"         # and Film-Noir: the first flag is the category
        lines.append(f"{i}|Caf\xe9 {i} (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?x|" + "|".join(flags))
    (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return root


def _sequence_of(module, user: int) -> list[int]:
    ratings, _ = module.read()
    mask = ratings["user"].to_numpy() == user
    items, times = ratings["item"].to_numpy()[mask], ratings["time"].to_numpy()[mask]
    return items[np.argsort(times, kind="stable")].tolist()


@pytest.mark.parametrize("archive", ["ml-1m", "ml-100k"])
def test_movielens_archives_build_time_ordered_samples(tmp_path: Path, archive: str) -> None:
    rows = _ratings()
    root = (_ml1m if archive == "ml-1m" else _ml100k)(tmp_path / archive, rows)
    module = MovieLensDataModule(root=str(root), cache_dir=str(tmp_path / "cache"), **SMALL)
    assert module.resolved_archive() == archive
    ratings, cate_of = module.read()
    assert ratings.num_rows == len(rows)
    # Category = first genre, ids in sorted genre-name order.
    if archive == "ml-1m":
        # First genres Action, Drama, Animation, Comedy; ids in sorted order Action, Animation, Comedy, Drama.
        assert [cate_of[i] for i in (1, 2, 3, 4)] == [1, 4, 2, 3]
    else:
        assert {ML100K_GENRES[1 + i % 5] for i in range(1, ITEMS + 1)} == {"Action", "Adventure", "Animation", "Children's", "Comedy"}
        assert len(set(cate_of.values())) == 5
    user_rows = sorted((t, i) for u, i, _, t in rows if u == 3)
    assert _sequence_of(module, 3) == [i for _, i in user_rows]
    spec = module.feature_spec
    assert spec.num_users == USERS + 2 and spec.long_len == 8
    train = module.split("train")
    assert len(train) == USERS * SMALL["train_per_user"] * 2
    raw = module.raw_ids("test")
    assert set(raw["user_id"].tolist()) == set(range(1, USERS + 1))


def test_movielens_min_rating_and_time_gap_sessions(tmp_path: Path) -> None:
    rows = _ratings()
    root = _ml1m(tmp_path / "ml", rows)
    kept = MovieLensDataModule(root=str(root), min_rating=4, cache_dir=str(tmp_path / "c"), **{**SMALL, "min_train_position": 1,
                                                                                                 "train_per_user": 1})
    assert kept.sequence_options.session_split == "time_gap"
    positives = {(u, i) for u, i, r, _ in rows if r >= 4}
    test = kept.split("test")
    labels = np.asarray(test["label"])
    users = kept.raw_ids("test")["user_id"][labels == 1]
    items = kept.raw_ids("test")["item_id"][labels == 1]
    assert all((int(u), int(i)) in positives for u, i in zip(users, items))
    with pytest.raises(ValueError, match="min_rating must be an int in 0..5"):
        MovieLensDataModule(root=str(root), min_rating=6)


def test_movielens_bad_line_names_file_and_line(tmp_path: Path) -> None:
    root = _ml1m(tmp_path / "ml", _ratings())
    with open(root / "ratings.dat", "a") as handle:
        handle.write("7::3::5\n")
    lines = (root / "ratings.dat").read_text().count("\n")
    module = MovieLensDataModule(root=str(root), cache_dir=str(tmp_path / "c"), **SMALL)
    with pytest.raises(ValueError, match=rf"ratings.dat, line {lines}: expected 4 fields separated by '::', got 3: '7::3::5'"):
        module.read()
    skipping = MovieLensDataModule(root=str(root), cache_dir=str(tmp_path / "c"), on_bad_line="skip", **SMALL)
    assert skipping.read()[0].num_rows == lines - 1


def test_missing_archive_names_its_files_and_where_to_download(tmp_path: Path) -> None:
    module = MovieLensDataModule(root=str(tmp_path / "none"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match=r"ratings.dat, movies.dat\)\nget the data: https://files.grouplens.org"):
        module.feature_spec


def _amazon(root: Path, edition: str, bad_meta: str = "") -> Path:
    root.mkdir(exist_ok=True)
    reviews, meta = [], []
    for user in range(USERS):
        for n, item in enumerate(RNG.choice(ITEMS, size=12, replace=False)):
            reviews.append({"reviewerID": f"A{user:03d}X", "asin": f"B{item:05d}", "overall": 5.0,
                            "unixReviewTime": 1_390_000_000 + int(RNG.integers(0, 50)) * 86_400, "reviewText": "ok", "helpful": [0, 0]})
    for item in range(ITEMS - 3):  # three items have no meta
        if edition == "2014":
            meta.append(repr({"asin": f"B{item:05d}", "categories": [["Grocery", f"Sub{item % 3}"], ["Other"]], "title": "it's"}))
        else:
            meta.append(json.dumps({"asin": f"B{item:05d}", "category": ["Grocery", f"Sub{item % 3}"], "title": "x"}))
    name = "reviews_Grocery_5.json.gz" if edition == "2014" else "Grocery_5.json.gz"
    with gzip.open(root / name, "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in reviews))
    with gzip.open(root / "meta_Grocery.json.gz", "wt") as handle:
        handle.write("\n".join(meta) + "\n" + bad_meta)
    return root


@pytest.mark.parametrize("edition", ["2014", "2018"])
def test_amazon_dumps_build_with_string_ids(tmp_path: Path, edition: str) -> None:
    root = _amazon(tmp_path / edition, edition)
    module = AmazonReviewsDataModule(root=str(root), category="Grocery", cache_dir=str(tmp_path / "c"), **SMALL)
    assert module.resolved_edition() == edition
    spec = module.feature_spec
    assert spec.num_users == USERS + 2
    assert spec.num_cates == 3 + 2  # Sub0..Sub2, padding and OOV
    raw = module.raw_ids("test")
    assert all(isinstance(u, str) and u.startswith("A") for u in raw["user_id"].tolist())
    assert all(isinstance(i, str) and i.startswith("B") for i in raw["item_id"].tolist())


def test_amazon_meta_literals_are_parsed_safely(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    attack = f"__import__('os').system('touch {marker}')\n"
    root = _amazon(tmp_path / "a", "2014", bad_meta=attack)
    module = AmazonReviewsDataModule(root=str(root), category="Grocery", cache_dir=str(tmp_path / "c"), **SMALL)
    lines = gzip.open(root / "meta_Grocery.json.gz", "rt").read().count("\n")
    with pytest.raises(ValueError, match=rf"meta_Grocery.json.gz, line {lines}: not a JSON object or Python dict literal"):
        module.feature_spec
    assert not marker.exists()
    skipping = AmazonReviewsDataModule(root=str(root), category="Grocery", cache_dir=str(tmp_path / "c2"), on_bad_line="skip", **SMALL)
    assert skipping.feature_spec.num_cates == 5 and not marker.exists()
    assert sum(1 for _ in iter_literal_lines(str(root / "meta_Grocery.json.gz"), "skip")) == ITEMS - 3


def test_amazon_bad_review_line_names_file_and_line(tmp_path: Path) -> None:
    root = _amazon(tmp_path / "a", "2018")
    path = root / "Grocery_5.json.gz"
    text = gzip.open(path, "rt").read()
    lines = text.splitlines()
    lines[4] = '{"reviewerID": "A1", "asin": 17, "unixReviewTime": 5}'
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    module = AmazonReviewsDataModule(root=str(root), category="Grocery", cache_dir=str(tmp_path / "c"), **SMALL)
    with pytest.raises(ValueError, match=r"Grocery_5.json.gz, line 5: not a JSON object with reviewerID, asin, unixReviewTime"):
        module.feature_spec


def test_item_category_reads_both_editions() -> None:
    assert item_category({"categories": [["Books", "Literature", "Poetry"], ["Kindle"]]}) == "Poetry"
    assert item_category({"category": ["Grocery", "Tea"]}) == "Tea"
    assert item_category({"categories": []}) is None and item_category({}) is None
