"""The peers the two-tower model is measured against: most-popular, ALS (implicit) and EASE^R.

Each returns, for the users asked about, their top-k movie ids with the movies they rated in
``train`` excluded. Most-popular is the nightly gate's baseline; ALS (an optional extra) and EASE^R
are the stronger peers of ``towerflow evaluate``. EASE^R is written here because no installed
library has it: it is one closed form (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019) on
the binary user x movie matrix X: P = (X^T X + lambda I)^-1, B = -P / diag(P) with diag(B) = 0,
scores = X B.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.linalg import lapack

from tasks.evaluation.metrics import ranking_metrics, relevant_sets
from tasks.preparation.features import per_user_holdout
from tasks.serving.recommend import seen_csr

EASE_LAMBDAS: tuple[float, ...] = (100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0)
# the most-rated movies EASE^R covers: its inverse costs movies^3 (8,000: about 7 s on 2 cores)
EASE_MAX_MOVIES = 8000
EASE_INNER_HOLDOUT = 0.2  # lambda is chosen on each user's last 20% of the training ratings
_SCORE_ROWS = 1024


def popularity_lists(
    train: pd.DataFrame, users: np.ndarray, movie_ids: np.ndarray, k: int
) -> dict[int, list[int]]:
    """Most-rated movies first (ties by smaller id), each user's rated movies excluded.

    One global order: each user takes the first ``k`` of its top ``k + 64`` that they have not rated
    (a users x (k + 64) mask); the few heavy raters who have rated most of those walk the whole
    order.
    """
    movie_ids = np.asarray(movie_ids, dtype=np.int64)
    counts = train["movie_id"].value_counts().reindex(movie_ids, fill_value=0).to_numpy()
    order = np.lexsort((movie_ids, -counts))  # catalog rows, most rated first
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    indptr, rows = seen_csr(train, np.asarray(users), movie_ids)
    lengths = np.diff(indptr)
    top = min(len(order), k + 64)
    seen_at = position[rows]
    owner = np.repeat(np.arange(len(users)), lengths)
    near = seen_at < top
    free = np.ones((len(users), top), dtype=bool)
    free[owner[near], seen_at[near]] = False
    take = free & (np.cumsum(free, axis=1) <= k)
    enough = (
        free.sum(axis=1) >= np.minimum(k, len(order) - lengths)
        if top < len(order)
        else np.ones(len(users), dtype=bool)
    )
    head = movie_ids[order[:top]]
    out: dict[int, list[int]] = {}
    for i, user in enumerate(np.asarray(users).tolist()):
        if enough[i]:
            out[int(user)] = head[take[i]].tolist()
        else:  # rated most of the head: walk the whole order
            seen = set(rows[indptr[i] : indptr[i + 1]].tolist())
            out[int(user)] = [int(movie_ids[j]) for j in order if j not in seen][:k]
    return out


def als_lists(
    train: pd.DataFrame, users: np.ndarray, movie_ids: np.ndarray, k: int, seed: int
) -> dict[int, list[int]] | None:
    """implicit's ALS (64 factors, binary interactions), or ``None`` if implicit is not
    installed.
    """
    try:
        from implicit.als import AlternatingLeastSquares
    except ImportError:
        return None
    u = pd.Index(users).get_indexer(train["user_id"])
    m = pd.Index(movie_ids).get_indexer(train["movie_id"])
    matrix = sp.csr_matrix(
        (np.ones(len(u), np.float32), (u, m)), shape=(len(users), len(movie_ids))
    )
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # implicit parallelizes itself and warns when BLAS threads too
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=64, iterations=15, random_state=seed)
        model.fit(matrix, show_progress=False)
        ids, _ = model.recommend(
            np.arange(len(users)), matrix, N=k, filter_already_liked_items=True
        )
    return {int(users[i]): [int(movie_ids[j]) for j in row if j >= 0] for i, row in enumerate(ids)}


class _Ease:
    """EASE^R's inputs on one set of ratings: the binary matrix over the most-rated movies and its
    Gram matrix.
    """

    def __init__(self, ratings: pd.DataFrame, max_movies: int) -> None:
        counts = ratings["movie_id"].value_counts()
        self.movies = np.sort(counts.index.to_numpy()[:max_movies].astype(np.int64))
        self.users = np.sort(ratings["user_id"].unique().astype(np.int64))
        u = pd.Index(self.users).get_indexer(pd.Index(ratings["user_id"]))
        m = pd.Index(self.movies).get_indexer(pd.Index(ratings["movie_id"]))
        keep = m >= 0
        shape = (len(self.users), len(self.movies))
        self.x = sp.csr_matrix(
            (np.ones(int(keep.sum()), np.float32), (u[keep], m[keep])), shape=shape
        )
        self.gram = (self.x.T @ self.x).toarray().astype(np.float32)

    def weights(self, lam: float) -> np.ndarray:
        """B = -P / diag(P), diag(B) = 0, with P = (X^T X + lam I)^-1 (a Cholesky inverse in
        float32).
        """
        g = self.gram.copy()
        g[np.diag_indices_from(g)] += np.float32(lam)
        factor, info = lapack.spotrf(g, lower=False, overwrite_a=True)
        if info == 0:
            factor, info = lapack.spotri(factor, lower=False, overwrite_c=True)
        if info != 0:
            raise ValueError(
                f"EASE^R: X^T X + {lam} I is not positive definite (LAPACK info {info}); use "
                "a larger lambda"
            )
        p = np.triu(factor) + np.triu(factor, 1).T
        b = p / -np.diag(p)[np.newaxis, :]
        np.fill_diagonal(b, 0.0)
        return np.asarray(b, dtype=np.float32)

    def lists(self, b: np.ndarray, users: np.ndarray, k: int) -> dict[int, list[int]]:
        """Top-k of ``users`` (those without ratings get none), movies they rated excluded."""
        rows = pd.Index(self.users).get_indexer(pd.Index(np.asarray(users)))
        asked = np.asarray(users)[rows >= 0]
        rows = rows[rows >= 0]
        kk = min(k, len(self.movies))
        out: dict[int, list[int]] = {}
        for lo in range(0, len(rows), _SCORE_ROWS):
            x = self.x[rows[lo : lo + _SCORE_ROWS]]
            scores = np.asarray(x @ b)
            scores[x.nonzero()] = -np.inf
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            for user, row, best in zip(
                asked[lo : lo + _SCORE_ROWS].tolist(),
                top,
                np.take_along_axis(scores, top, axis=1),
                strict=True,
            ):
                out[int(user)] = self.movies[row[np.isfinite(best)]].tolist()
        return out


def ease_lists(
    train: pd.DataFrame,
    users: np.ndarray,
    k: int,
    lambdas: tuple[float, ...] = EASE_LAMBDAS,
    max_movies: int = EASE_MAX_MOVIES,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[int, list[int]], float]:
    """EASE^R's top-k for ``users`` and the lambda it used, chosen by NDCG@k on an inner per-user
    split of ``train``.
    """
    if not lambdas or min(lambdas) <= 0:
        raise ValueError(f"EASE^R needs positive lambdas, got {lambdas}")
    inner = per_user_holdout(train, EASE_INNER_HOLDOUT)
    relevant = relevant_sets(train[inner])
    best = lambdas[0]
    if len(lambdas) > 1 and relevant:
        fit = _Ease(train[~inner], max_movies)
        asked = np.array(sorted(relevant), dtype=np.int64)
        ndcg = {
            lam: ranking_metrics(fit.lists(fit.weights(lam), asked, k), relevant, k)["ndcg"]
            for lam in lambdas
        }
        best = max(ndcg, key=lambda lam: ndcg[lam])
        if log is not None:
            log(
                "EASE^R lambda on the inner split: "
                + ", ".join(f"{lam:g} {v:.4f}" for lam, v in ndcg.items())
                + f" -> {best:g}"
            )
    full = _Ease(train, max_movies)
    return full.lists(full.weights(best), users, k), best
