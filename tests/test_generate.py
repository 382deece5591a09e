"""The embedded data set is deterministic, MovieLens-shaped and has planted genre tastes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.preparation.features import genre_matrix
from tasks.sources.generate import Law, generate


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", n_users=30, n_movies=60, seed=1)
    b = generate(tmp_path / "b", n_users=30, n_movies=60, seed=1)
    assert a.ratings_csv.read_bytes() == b.ratings_csv.read_bytes()
    assert a.movies_csv.read_bytes() == b.movies_csv.read_bytes()


def test_movielens_shape_and_planted_tastes(tmp_path: Path) -> None:
    data = generate(tmp_path, n_users=150, n_movies=300, mean_ratings_per_user=40, seed=2)
    ratings, movies = pd.read_csv(data.ratings_csv), pd.read_csv(data.movies_csv)
    assert list(ratings.columns) == ["userId", "movieId", "rating", "timestamp"]
    assert list(movies.columns) == ["movieId", "title", "genres"]
    assert set(np.unique(ratings.rating * 2)) <= set(range(1, 11))
    assert ratings.groupby("userId").size().min() >= 1
    assert not ratings.duplicated(["userId", "movieId"]).any()
    assert (~movies.movieId.isin(ratings.movieId)).sum() > 0  # cold-start movies exist
    # Long tail: the top 10% of movies take at least 2.5 times their uniform share of ratings.
    counts = ratings.movieId.value_counts()
    assert counts.iloc[: len(counts) // 10].sum() > 0.25 * len(ratings)
    # Planted tastes: a user's favourite genre is over-represented versus the catalog.
    g = genre_matrix(movies.genres)
    row = pd.Index(movies.movieId).get_indexer(ratings.movieId)
    per_user = pd.DataFrame(g[row]).groupby(ratings.userId.to_numpy()).mean()
    lift = per_user.max(axis=1) / g.mean(axis=0)[per_user.to_numpy().argmax(axis=1)]
    assert lift.median() > 1.5


def _top_share_and_lift(data_dir: Path, law: str) -> tuple[float, float]:
    data = generate(data_dir, n_users=150, n_movies=300, mean_ratings_per_user=40, seed=2, law=law)
    ratings, movies = pd.read_csv(data.ratings_csv), pd.read_csv(data.movies_csv)
    counts = ratings.movieId.value_counts()
    g = genre_matrix(movies.genres)
    row = pd.Index(movies.movieId).get_indexer(ratings.movieId)
    per_user = pd.DataFrame(g[row]).groupby(ratings.userId.to_numpy()).mean()
    lift = per_user.max(axis=1) / g.mean(axis=0)[per_user.to_numpy().argmax(axis=1)]
    return counts.iloc[: len(counts) // 10].sum() / len(ratings), float(lift.median())


def test_popularity_law_concentrates_picks_and_weakens_tastes(tmp_path: Path) -> None:
    taste_top, taste_lift = _top_share_and_lift(tmp_path / "taste", "taste")
    pop_top, pop_lift = _top_share_and_lift(tmp_path / "popularity", "popularity")
    assert pop_top > taste_top and pop_lift < taste_lift


def test_unknown_law_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown law 'fashion'"):
        generate(tmp_path, n_users=5, n_movies=40, law="fashion")
    with pytest.raises(ValueError, match="taste_strength >= 0"):
        Law(taste_strength=-1.0)
