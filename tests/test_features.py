"""Features match hand-computed values and use only the ratings they are given."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tasks.preparation.features import (
    GENRES,
    compute_features,
    genre_matrix,
    per_user_holdout,
    unknown_genres,
)

MOVIES = pd.DataFrame(
    {
        "movie_id": [10, 20, 30],
        "title": ["A (1990)", "B (2000)", "C"],
        "genres": ["Action|Comedy", "Comedy", "(no genres listed)"],
        "year": pd.array([1990, 2000, None], dtype="Int32"),
    }
)
RATINGS = pd.DataFrame(
    {
        "user_id": [1, 1, 2],
        "movie_id": [10, 20, 10],
        "rating": [4.0, 2.0, 5.0],
        "timestamp": [1, 2, 3],
    }
)


def test_lab_features_by_hand() -> None:
    f = compute_features(RATINGS, MOVIES, np.array([1, 2, 3]), "lab")
    action, comedy = GENRES.index("Action"), GENRES.index("Comedy")
    # user 1: Action {4.0} -> 4.0 ; Comedy {4.0, 2.0} -> 3.0 ; user 3 has no ratings -> zeros
    assert f.user_x[0, action] == 4.0 and f.user_x[0, comedy] == 3.0
    assert f.user_x[1, action] == 5.0 and f.user_x[1, comedy] == 5.0
    assert not f.user_x[2].any()
    # movies: year, mean rating (unrated -> global mean 11/3), genre one-hot; missing year -> median
    # 1995
    assert f.movie_names[:2] == ["year", "mean_rating"]
    np.testing.assert_allclose(f.movie_x[:, 0], [1990, 2000, 1995])
    np.testing.assert_allclose(f.movie_x[:, 1], [4.5, 2.0, 11 / 3], rtol=1e-6)
    assert f.movie_x[2, 2:].sum() == 0  # "(no genres listed)" -> no genre


def test_confidence_features_by_hand() -> None:
    k = 10.0
    f = compute_features(RATINGS, MOVIES, np.array([1, 2]), "confidence", shrinkage=k)
    mu = 11 / 3
    names = f.user_names
    u_mean = (6.0 + k * mu) / (2 + k)
    assert f.user_x[0, names.index("log_count")] == pytest.approx(math.log1p(2))
    assert f.user_x[0, names.index("shrunk_mean")] == pytest.approx(u_mean, rel=1e-6)
    assert f.user_x[0, names.index("shrunk_mean_Comedy")] == pytest.approx(
        (6.0 + k * u_mean) / (2 + k), rel=1e-6
    )
    assert f.user_x[0, names.index("share_Action")] == pytest.approx(0.5)
    m = f.movie_names
    assert f.movie_x[0, m.index("shrunk_mean")] == pytest.approx((9.0 + k * mu) / (2 + k), rel=1e-6)
    # cold movie: the prior
    assert f.movie_x[2, m.index("shrunk_mean")] == pytest.approx(mu, rel=1e-6)
    assert f.movie_x[2, m.index("year_missing")] == 1.0


def test_features_see_only_training_ratings() -> None:
    # user 2's only rating held out, as no per-user split would do
    hold = np.array([False, False, True])
    f = compute_features(RATINGS[~hold], MOVIES, np.array([1, 2]), "lab")
    assert not f.user_x[1].any()  # user 2's only rating is held out
    assert f.movie_x[0, 1] == 4.0  # movie 10's mean ignores the held-out 5.0


def test_genre_matrix_and_unknown_genres() -> None:
    genres = pd.Series(["Action|Children's|Space Opera", "(no genres listed)", None])
    g = genre_matrix(genres)
    assert g[0].sum() == 2 and g[0, GENRES.index("Children")] == 1.0
    assert g[1:].sum() == 0
    assert unknown_genres(genres) == {"Space Opera": 1}


def test_holdout_fraction_validated() -> None:
    with pytest.raises(ValueError, match="holdout fraction must be in"):
        per_user_holdout(RATINGS, 1.0)


def test_the_holdout_is_the_same_on_the_fast_path_and_the_general_one(
    rng: np.random.Generator,
) -> None:
    n = 5000
    ratings = pd.DataFrame(
        {
            "user_id": rng.integers(1, 300, n),
            "movie_id": rng.integers(1, 900, n),
            "rating": rng.integers(1, 11, n) / 2.0,
            "timestamp": rng.integers(0, 40, n),  # many ties in time: input order decides
        }
    )
    fast = per_user_holdout(ratings, 0.2)
    shifted = ratings.assign(user_id=ratings.user_id - 10**6)  # negative ids take the general path
    assert fast.tolist() == per_user_holdout(shifted, 0.2).tolist()
    # beyond 32 bits: the general path too
    late = ratings.assign(timestamp=ratings.timestamp + 2**33)
    assert fast.tolist() == per_user_holdout(late, 0.2).tolist() and 0 < fast.sum() < n
