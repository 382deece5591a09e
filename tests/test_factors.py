"""Collaborative factors: the SVD's movie factors, users' projections, their leave-one-out rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.errors import ConfigError
from tasks.preparation.factors import (
    content_factors,
    factor_names,
    movie_factors,
    user_factor_columns,
)
from tasks.preparation.features import compute_features
from tasks.preparation.loo import example_rows, leave_one_out
from tasks.preparation.phases import prepared
from tasks.preparation.scalers import fit_scalers
from tasks.presets import preset

K = 2
MOVIES = pd.DataFrame(
    {
        "movie_id": [10, 20, 30, 40, 50],
        "title": ["A (1990)", "B (2000)", "C", "D (1970)", "E (2001)"],
        "genres": ["Action|Comedy", "Comedy", "(no genres listed)", "Drama|Action", "Drama"],
        "year": pd.array([1990, 2000, None, 1970, 2001], dtype="Int32"),
    }
)
# two groups that watch apart (users 1, 2: movies 10, 20; users 3, 4: movies 30, 40); movie 50
# has one rating
RATINGS = pd.DataFrame(
    {
        "user_id": [1, 1, 2, 2, 3, 3, 4, 4, 4],
        "movie_id": [10, 20, 10, 20, 30, 40, 30, 40, 50],
        "rating": [4.0, 2.0, 5.0, 3.0, 1.0, 4.5, 3.0, 3.5, 5.0],
        "timestamp": np.arange(9),
    }
)
USERS = np.array([1, 2, 3, 4])


def _rows(ratings: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    u = pd.Index(USERS).get_indexer(ratings["user_id"])
    m = pd.Index(MOVIES["movie_id"]).get_indexer(ratings["movie_id"])
    return u, m


def test_movie_factors_are_the_svd_of_who_rated_what() -> None:
    u, m = _rows(RATINGS)
    v, s = movie_factors(u, m, len(USERS), len(MOVIES), K)
    x = np.zeros((len(USERS), len(MOVIES)))
    x[u, m] = 1.0
    want = np.linalg.svd(x, compute_uv=False)[:K]
    np.testing.assert_allclose(s, want, rtol=1e-4)
    np.testing.assert_allclose(v.T @ v, np.eye(K), atol=1e-5)  # orthonormal columns
    # the two groups' movies load on different factors; the same call gives the same numbers
    assert abs(float(v[0] @ v[2])) < 1e-5
    assert np.array_equal(v, movie_factors(u, m, len(USERS), len(MOVIES), K)[0])
    assert (v[np.abs(v).argmax(axis=0), np.arange(K)] > 0).all()  # signs fixed: largest entry > 0


def test_no_ratings_and_more_factors_than_the_rank_give_zeros() -> None:
    v, s = movie_factors(np.array([], np.int64), np.array([], np.int64), 3, 4, K)
    assert v.shape == (4, K) and not v.any() and not s.any()
    v, s = movie_factors(np.array([0, 1]), np.array([0, 0]), 3, 4, 3)  # rank 1
    assert s[1:].tolist() == [0.0, 0.0] and not v[:, 1:].any() and not v[1:].any()
    with pytest.raises(ConfigError, match="k >= 1, got 0"):
        movie_factors(np.array([0]), np.array([0]), 1, 1, 0)


def test_user_columns_by_hand() -> None:
    seen, rated = np.array([[1.0, 2.0]]), np.array([[4.0, 6.0]])
    cols = user_factor_columns(np, np.array([4.0]), seen, rated, np.array([3.0]))
    np.testing.assert_allclose(cols, [[0.5, 1.0, 0.5, 0.0]])  # seen / 2; (rated - 3 seen) / 2
    assert not user_factor_columns(np, np.array([0.0]), 0 * seen, 0 * rated, np.array([3.0])).any()


def test_features_carry_the_factors_last_and_fold_in_onto_given_ones() -> None:
    feats = compute_features(RATINGS, MOVIES, USERS, "confidence", shrinkage=3.0, factors=K)
    user_names, movie_names = factor_names(K)
    assert feats.user_names[-2 * K :] == user_names and feats.movie_names[-K:] == movie_names
    v = feats.movie_x[:, -K:]
    # one user's ratings alone, projected onto the night's factors, give that user's row
    mu = float(RATINGS["rating"].mean())
    one = RATINGS[RATINGS.user_id == 3].assign(user_id=0)
    rows = pd.Index(MOVIES["movie_id"]).get_indexer(one["movie_id"])
    catalog = MOVIES.iloc[rows]
    alone = compute_features(one, catalog, np.array([0]), "confidence", 3.0, mu, K, v[rows])
    np.testing.assert_allclose(alone.user_x[0], feats.user_x[2], atol=1e-6)
    with pytest.raises(ValueError, match=r"movie factors of shape \(2, 2\) for 5 movies"):
        compute_features(RATINGS, MOVIES, USERS, "confidence", factors=K, movie_factors=v[:2])
    with pytest.raises(ConfigError, match="confidence features"):
        compute_features(RATINGS, MOVIES, USERS, "lab", factors=K)
    with pytest.raises(ConfigError, match="factors must be >= 0"):
        preset("lab", factors=4)


def test_an_unrated_movie_gets_the_factors_its_content_predicts(rng: np.random.Generator) -> None:
    # factors that are a linear function of the content: the ridge recovers them for unrated rows
    content = rng.normal(size=(200, 4))
    truth = content @ rng.normal(size=(4, 3)) + 0.5
    rated = np.arange(200) >= 20
    v = np.where(rated[:, None], truth, 0.0).astype(np.float32)
    out = content_factors(content, v, rated, alpha=1e-6)
    np.testing.assert_array_equal(out[rated], v[rated])
    np.testing.assert_allclose(out[~rated], truth[~rated], atol=1e-3)
    assert np.all(v[~rated] == 0.0)  # the input is left as it was
    for all_or_none in (np.ones(200, bool), np.zeros(200, bool)):
        assert content_factors(content, v, all_or_none) is v
    # in the night's features: the unrated catalog movie 60 (Action, 1995) is placed beside the
    # rated ones from its genres and year, not at zero
    catalog = pd.concat(
        [
            MOVIES,
            pd.DataFrame(
                {"movie_id": [60], "title": ["F (1995)"], "genres": ["Action"], "year": [1995]}
            ).astype({"year": "Int32"}),
        ],
        ignore_index=True,
    )
    feats = compute_features(RATINGS, catalog, USERS, "confidence", shrinkage=3.0, factors=K)
    alone = compute_features(RATINGS, MOVIES, USERS, "confidence", shrinkage=3.0, factors=K)
    np.testing.assert_allclose(feats.movie_x[:5], alone.movie_x, atol=1e-6)
    assert np.abs(feats.movie_x[5, -K:]).sum() > 1e-3


def test_leave_one_out_takes_the_rating_out_of_the_user_and_the_user_out_of_the_movie() -> None:
    feats = compute_features(RATINGS, MOVIES, USERS, "confidence", shrinkage=3.0, factors=K)
    stars = RATINGS["rating"].to_numpy()
    scalers = fit_scalers(feats.user_x, feats.movie_x, stars, feats.user_names, feats.movie_names)
    full = prepared(feats, scalers)
    loo = leave_one_out(RATINGS, feats, scalers, shrinkage=3.0)
    assert loo.factors == K
    u, m, y = full.triples(RATINGS)
    rows = example_rows(loo, loo.tensors(), full.movie_x[m], u, m, y.astype(np.float32))
    user_rows, movie_rows = (np.asarray(a) for a in rows)
    v = feats.movie_x[:, -K:]
    for i in range(len(RATINGS)):
        # the user's side: their row from the other ratings, on the same factors
        others = RATINGS.drop(index=i)
        without = compute_features(others, MOVIES, USERS, "confidence", 3.0, loo.mu, K, v)
        want = scalers.user.transform(without.user_x[u[i] : u[i] + 1])[0]
        np.testing.assert_allclose(user_rows[i], want, rtol=1e-4, atol=1e-4)
    # movie 50's only rater taken out: its factors are an unrated movie's zeros
    only = int(np.flatnonzero(RATINGS.movie_id == 50)[0])
    unscaled = movie_rows[only, -K:] * scalers.movie.scale_[-K:] + scalers.movie.mean_[-K:]
    np.testing.assert_allclose(unscaled, 0.0, atol=1e-5)


@pytest.mark.parametrize("duplicates", [False, True])
def test_rating_matrices_are_scipys_own(rng: np.random.Generator, duplicates: bool) -> None:
    """One sort of the pairs gives, for every value array, the matrix scipy builds from them."""
    import scipy.sparse as sp

    from tasks.preparation.sparse import rating_matrices

    shape = (30, 40)
    pairs = rng.choice(shape[0] * shape[1], 300, replace=duplicates)
    u, m = pairs // shape[1], pairs % shape[1]
    assert (len(np.unique(pairs)) < len(pairs)) == duplicates
    values = [rng.normal(size=len(u)), np.ones(len(u))]
    for ours, v in zip(rating_matrices(u, m, shape, *values), values, strict=True):
        theirs = sp.csr_matrix((v, (u, m)), shape=shape)
        np.testing.assert_array_equal(ours.indptr, theirs.indptr)
        np.testing.assert_array_equal(ours.indices, theirs.indices)
        np.testing.assert_array_equal(ours.data, theirs.data)
