"""Offline evaluation: full-catalog ranking with seen movies excluded, against baselines.

Two splits share this code: the nightly global temporal holdout (the most
recent ratings) and the per-user temporal protocol of ``towerflow evaluate``
(the last 20% of each user's ratings). Features, scalers and the model only
ever see the training side. Baselines: most-popular (computed in the same
run) and, when the optional ``implicit`` package is installed, ALS.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import ModelConfig
from tasks.export import build_index, embed_all
from tasks.features import compute_features, temporal_holdout
from tasks.history import user_history
from tasks.metrics import coverage, ranking_metrics, rmse
from tasks.recommend import seen_csr, topk_unseen
from tasks.scalers import fit_scalers
from tasks.stages import Prepared, prepared

RELEVANT_AT = 4.0


def split_per_user(ratings: pd.DataFrame, fraction: float) -> np.ndarray:
    """Mask of each user's most recent ``fraction`` of ratings (at least one per user with 2+)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"per-user holdout fraction must be in (0, 1), got {fraction}")
    order = np.lexsort((ratings["timestamp"].to_numpy(), ratings["user_id"].to_numpy()))
    users = ratings["user_id"].to_numpy()[order]
    counts = pd.Series(users).groupby(users).transform("size").to_numpy()
    position = pd.Series(np.ones(len(users))).groupby(users).cumsum().to_numpy() - 1
    n_hold = np.where(counts >= 2, np.maximum(1, np.round(counts * fraction)), 0)
    mask = np.zeros(len(ratings), dtype=bool)
    mask[order] = position >= counts - n_hold
    return mask


@dataclass
class Fitted:
    """A model trained on one side of a split, with the scaled features it scores with."""

    model: Any
    prepared: Prepared
    best_epoch: int
    seconds: float


def fit(train: pd.DataFrame, movies: pd.DataFrame, config: ModelConfig, seed: int, inner_holdout: float = 0.1) -> Fitted:
    """Early-stop on the most recent ``inner_holdout`` of ``train``, then refit on all of ``train``."""
    started = time.perf_counter()
    users = np.sort(train["user_id"].unique())
    best_epoch = config.max_epochs
    if inner_holdout > 0 and config.patience is not None:
        hold = temporal_holdout(train["timestamp"].to_numpy(), inner_holdout)
        first, _ = _fit_once(train[~hold], train[hold], movies, users, config, seed, None)
        best_epoch = first.best_epoch
    result, scaled = _fit_once(train, None, movies, users, config, seed, best_epoch)
    return Fitted(result.model, scaled, best_epoch, time.perf_counter() - started)


def _fit_once(
    train: pd.DataFrame,
    val: pd.DataFrame | None,
    movies: pd.DataFrame,
    users: np.ndarray,
    config: ModelConfig,
    seed: int,
    epochs: int | None,
) -> tuple[Any, Prepared]:
    from tasks.train import train_model

    feats = compute_features(train, movies, users, config.features, config.shrinkage)
    hist = user_history(train, feats.user_ids, feats.movie_ids, config.history_length) if config.history_length > 0 else None
    scalers = fit_scalers(feats.user_x, feats.movie_x, train["rating"].to_numpy(), feats.user_names, feats.movie_names, config.target_scale)
    scaled = prepared(feats, scalers, hist)
    validation = scaled.triples(val) if val is not None and len(val) else None
    return train_model(scaled.train_data(train, config), config, seed, epochs=epochs, validation=validation), scaled


def _topk_lists(
    index: Any, queries: np.ndarray, query_ids: np.ndarray, item_ids: np.ndarray, train: pd.DataFrame, k: int
) -> dict[int, list[int]]:
    indptr, rows = seen_csr(train, query_ids, item_ids)
    out: dict[int, list[int]] = {}
    for q, _, items, _ in topk_unseen(index, queries, indptr, rows, k):
        for user, item in zip(query_ids[q].tolist(), item_ids[items].tolist(), strict=True):
            out.setdefault(user, []).append(item)
    return out


def popularity_lists(train: pd.DataFrame, users: np.ndarray, movie_ids: np.ndarray, k: int) -> dict[int, list[int]]:
    """Most-rated movies first (ties by id), each user's rated movies excluded."""
    counts = train["movie_id"].value_counts().reindex(movie_ids, fill_value=0).to_numpy().astype(np.float32)
    score = counts - np.argsort(np.argsort(movie_ids)).astype(np.float32) * 1e-6 / len(movie_ids)
    index = build_index(score.reshape(-1, 1))
    return _topk_lists(index, np.ones((len(users), 1), np.float32), users, movie_ids, train, k)


def als_lists(train: pd.DataFrame, users: np.ndarray, movie_ids: np.ndarray, k: int, seed: int) -> dict[int, list[int]] | None:
    """implicit's ALS (64 factors, binary interactions), or ``None`` if implicit is not installed."""
    try:
        from implicit.als import AlternatingLeastSquares
    except ImportError:
        return None
    import scipy.sparse as sp

    u = pd.Index(users).get_indexer(train["user_id"])
    m = pd.Index(movie_ids).get_indexer(train["movie_id"])
    matrix = sp.csr_matrix((np.ones(len(u), np.float32), (u, m)), shape=(len(users), len(movie_ids)))
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    with threadpool_limits(1, "blas"):  # implicit parallelizes itself and warns when BLAS threads too
        model = AlternatingLeastSquares(factors=64, iterations=15, random_state=seed)
        model.fit(matrix, show_progress=False)
        ids, _ = model.recommend(np.arange(len(users)), matrix, N=k, filter_already_liked_items=True)
    return {int(users[i]): [int(movie_ids[j]) for j in row if j >= 0] for i, row in enumerate(ids)}


def model_lists(fitted: Fitted, train: pd.DataFrame, k: int) -> dict[int, list[int]]:
    p = fitted.prepared
    user_emb, movie_emb = embed_all(fitted.model, p.user_input, p.movie_x)
    return _topk_lists(build_index(movie_emb), user_emb, p.feats.user_ids, p.feats.movie_ids, train, k)


def model_rmse(fitted: Fitted, test: pd.DataFrame) -> float:
    from tasks.train import predict_scores

    p = fitted.prepared
    u, m, _ = p.triples(test)
    known = (u >= 0) & (m >= 0)
    scores = predict_scores(fitted.model, p.user_input, p.movie_x, u[known], m[known])
    return rmse(p.scalers.target_to_rating(scores), test["rating"].to_numpy()[known])


def compare(
    train: pd.DataFrame,
    test: pd.DataFrame,
    movies: pd.DataFrame,
    models: dict[str, Fitted],
    k: int = 10,
    seed: int = 0,
    with_als: bool = True,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """One row per method: ranking metrics at ``k``, coverage, RMSE (stars) where the method predicts ratings."""
    liked = test[test["rating"] >= RELEVANT_AT]
    relevant: dict[int, set[int]] = {}
    for user, movie in zip(liked["user_id"].tolist(), liked["movie_id"].tolist(), strict=True):
        relevant.setdefault(int(user), set()).add(int(movie))
    users = np.array(sorted(relevant), dtype=np.int64)
    movie_ids = movies["movie_id"].to_numpy(dtype=np.int64)
    lists: dict[str, dict[int, list[int]]] = {"most-popular": popularity_lists(train, users, movie_ids, k)}
    if with_als:
        als = als_lists(train, np.sort(train["user_id"].unique()), movie_ids, k, seed)
        if als is None and log:
            log("ALS skipped: install the optional extra (pip install 'towerflow[als]')")
        if als is not None:
            lists["als (implicit, 64 factors)"] = als
    for name, fitted in models.items():
        lists[name] = model_lists(fitted, train, k)
    rows = []
    for name, recs in lists.items():
        row: dict[str, Any] = {"method": name, **ranking_metrics(recs, relevant, k)}
        row["coverage"] = coverage({u: recs.get(u, []) for u in users}, len(movie_ids))
        row["rmse"] = model_rmse(models[name], test) if name in models else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def over_seeds(table: pd.DataFrame, metrics: tuple[str, ...] = ("ndcg", "recall", "rmse")) -> pd.DataFrame:
    """Mean, min and max of ``metrics`` per method over the rows of several seeds (methods in first-seen order)."""
    missing = [c for c in ("method", *metrics) if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; it has {list(table.columns)}")
    stats = {f"{m}_{how}": (m, how) for m in metrics for how in ("mean", "min", "max")}
    return table.groupby("method", sort=False).agg(**stats)
