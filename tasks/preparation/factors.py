"""Collaborative factors: who watched what together, as feature columns of both towers.

Why: the confidence features show the towers content only (genres, year, rating counts and means,
per-genre tastes), so two movies of the same genres and era look alike to them even when different
people watch them; that co-occurrence is what EASE^R and ALS live on. Every night a truncated SVD of
the binary user x movie matrix of the phase's ratings (PureSVD, Cremonesi et al. 2010: X ~ U S V^T)
gives each movie ``k`` factors, its row of V. A movie nobody rated gets the factors its content
predicts (:func:`content_factors`: a ridge regression from its genres and year, fitted every night
on the rated movies' rows), so the towers place it among the rated movies like it. With zeros
instead, cold start (issue 19's hidden movies, three draws) scored 0.1337, against 0.1437 with the
prediction and 0.1440 for the content-only towers. A user's factors are a projection of their
ratings onto the movie factors, so a new or changed user folds in without retraining, from the
published movie factors:

- ``seen``:  sum of V_j over the movies j they rated, / sqrt(n)  (PureSVD's fold-in x V)
- ``liked``: sum of (r_j - their shrunk mean) V_j, / sqrt(n)     (what they liked more than usual)

The formulas take an array namespace (numpy here, ``keras.ops`` in a training step), so
:mod:`tasks.preparation.loo` recomputes them per training example without its own rating, on both
sides, as it does for the means: the rating is taken out of the user's sums, and the user out of the
movie's factors. Since V = X^T U S^-1 and X V = U S, user u's share of movie i's factors is
U_u / s = (sum of V_j over u's movies) / s^2. Without it a movie with few ratings would carry its
raters' own direction into training (they would all look like a match); with it a movie with a
single rating trains on zero factors. Training it on its content's prediction instead, as an unrated
movie is served, scored lower on cold start (0.1397 against 0.1437, the same three draws) and was
not kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from tasks.errors import ConfigError

Pair = tuple[np.ndarray, np.ndarray]
MOVIE_PREFIX = "factor_"  # movie columns factor_0 .. factor_<k-1>
USER_PREFIXES = ("seen_factor_", "liked_factor_")  # user columns: all seen_, then all liked_
# Ridge penalty of the content -> factors regression of unrated movies (on standardized content)
CONTENT_RIDGE = 1.0
# Power iterations of the randomized SVD (Halko et al. 2011), each two passes over the ratings:
# scikit-learn's "auto" would take 7 here; 4 is what was measured (benchmarks/README.md).
POWER_ITERATIONS = 4


def factor_names(k: int) -> tuple[list[str], list[str]]:
    """The (user, movie) column names of ``k`` factors."""
    user = [f"{p}{i}" for p in USER_PREFIXES for i in range(k)]
    return user, [f"{MOVIE_PREFIX}{i}" for i in range(k)]


def movie_factors(u: np.ndarray, m: np.ndarray, n_users: int, n_movies: int, k: int) -> Pair:
    """(V, s): ``k`` factors per movie (n_movies, k), the singular values (k,) of the binary matrix.

    ``u``/``m`` are the row and column of each rating (a duplicate counts once).
    Deterministic: the randomized SVD is seeded, and each factor's sign is fixed (its largest entry
    positive). Factors beyond the matrix's rank, and movies without a rating, are zeros.
    """
    return movie_factors_of(sp.csr_matrix((np.ones(len(u)), (u, m)), shape=(n_users, n_movies)), k)


def movie_factors_of(matrix: sp.csr_matrix, k: int) -> Pair:
    """:func:`movie_factors` of the (users x movies) matrix of ratings' pairs (any nonzero value
    counts as one: a duplicate pair counts once)."""
    if k < 1:
        raise ConfigError(f"movie factors need k >= 1, got {k}")
    n_users, n_movies = matrix.shape
    v = np.zeros((n_movies, k), dtype=np.float64)
    s = np.zeros(k, dtype=np.float64)
    if matrix.nnz == 0:
        return v.astype(np.float32), s.astype(np.float32)
    x = sp.csr_matrix((np.ones(matrix.nnz), matrix.indices, matrix.indptr), shape=matrix.shape)
    rank = min(k, n_users, n_movies)
    from sklearn.utils.extmath import randomized_svd

    _, sv, vt = randomized_svd(x, rank, n_iter=POWER_ITERATIONS, random_state=0, flip_sign=False)
    keep = sv > 1e-8 * max(float(sv[0]), 1e-300)
    vt = vt[keep]
    sign = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    v[:, : len(vt)] = (vt * sign[:, None]).T
    s[: len(vt)] = sv[keep]
    return v.astype(np.float32), s.astype(np.float32)


def content_factors(
    content: np.ndarray, v: np.ndarray, rated: np.ndarray, alpha: float = CONTENT_RIDGE
) -> np.ndarray:
    """``v`` (n_movies, k) with the rows of unrated movies (``~rated``) predicted from their
    ``content`` (n_movies, c: year, genres) by a ridge regression fitted on the rated movies' rows
    (standardized content, an intercept).

    Unchanged when every movie or none is rated. Deterministic (a closed-form solve).
    """
    rated = np.asarray(rated, dtype=bool)
    if rated.all() or not rated.any() or v.shape[1] == 0:
        return v
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(content, dtype=np.float64)
    fit = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x[rated], v[rated])
    out = np.array(v, dtype=np.float32, copy=True)
    out[~rated] = fit.predict(x[~rated]).astype(np.float32)
    return out


def user_factor_columns(xp: Any, cnt: Any, seen_sum: Any, rated_sum: Any, mean: Any) -> Any:
    """User columns ``seen_factor_<i>..., liked_factor_<i>...`` from sums over the user's movies.

    ``cnt`` (n,): ratings; ``seen_sum`` (n, k): sum of their movies' factors; ``rated_sum`` (n, k):
    the same weighted by the rating; ``mean`` (n,): the mean their ratings are centred on. ``xp`` is
    ``numpy`` or ``keras.ops``. A user without ratings gets zeros.
    """
    norm = xp.expand_dims(xp.sqrt(xp.maximum(cnt, 1.0)), -1)
    liked = rated_sum - xp.expand_dims(mean, -1) * seen_sum
    return xp.concatenate([seen_sum / norm, liked / norm], axis=-1)


def user_sums(seen: sp.csr_matrix, rated: sp.csr_matrix, v: np.ndarray) -> Pair:
    """(sum of V_j, sum of r_j V_j) over each user's rated movies, float64 (n_u, k) each, from the
    (users x movies) matrices of ones and of ratings
    (:func:`tasks.preparation.sparse.rating_matrices`)."""
    vd = v.astype(np.float64)
    return np.asarray(seen @ vd), np.asarray(rated @ vd)
