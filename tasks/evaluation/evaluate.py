"""Offline evaluation: full-catalog ranking with seen movies excluded, against baselines.

One protocol for the nightly evaluate stage and ``towerflow evaluate``: each user's most recent
ratings are held out (:func:`tasks.preparation.features.per_user_holdout`); features, scalers and
the model only ever see the rest. The model's lists come from its served vectors, popularity prior
included (:mod:`tasks.serving.popularity`), as the nightly job publishes them. Baselines are in
:mod:`tasks.evaluation.baselines`; every figure carries the number of users it rests on and NDCG@k
its bootstrap interval (:mod:`tasks.evaluation.gate`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.evaluation.baselines import als_lists, ease_lists, popularity_lists
from tasks.evaluation.gate import bootstrap, paired_difference
from tasks.evaluation.metrics import coverage, per_user_metrics, relevant_sets, rmse
from tasks.preparation.features import compute_features, per_user_holdout
from tasks.preparation.history import user_history
from tasks.preparation.phases import Prepared, prepared
from tasks.preparation.scalers import fit_scalers
from tasks.presets import ModelConfig
from tasks.serving.export import build_index, embed_all
from tasks.serving.popularity import (
    WEIGHTS,
    ServingSpace,
    movie_popularity,
    select_weight,
    sweep_users,
)
from tasks.serving.recommend import seen_csr, topk_lists

# towerflow evaluate: the share of each training user's ratings that plays the nightly holdout
INNER_HOLDOUT = 0.2


@dataclass
class Fitted:
    """A model trained on one side of a split, with the scaled features it scores with and its prior
    weight."""

    model: Any
    prepared: Prepared
    best_epoch: int
    seconds: float
    prior_weight: float = 0.0


def fit(
    train: pd.DataFrame,
    movies: pd.DataFrame,
    config: ModelConfig,
    seed: int,
    k: int = 10,
    inner_holdout: float = INNER_HOLDOUT,
) -> Fitted:
    """What a nightly run does with ``train``: validate on each user's last ``inner_holdout``, then
    refit on all.

    The validation model picks the popularity prior's weight (when ``config.popularity_prior``) and,
    with ``config.patience``, the number of epochs; the refit on all of ``train`` uses both. With
    ``config.mse_weight_alternatives`` one validation model is trained per MSE weight and the
    inner holdout keeps one, as the night's train stage does.
    """
    started = time.perf_counter()
    users = np.sort(train["user_id"].unique())
    best_epoch, weight = config.max_epochs, 0.0
    weights = (config.mse_weight, *config.mse_weight_alternatives)
    config = dataclasses.replace(config, mse_weight_alternatives=())
    if inner_holdout > 0 and (
        config.patience is not None or config.popularity_prior or len(weights) > 1
    ):
        hold = per_user_holdout(train, inner_holdout)
        relevant = relevant_sets(train[hold])
        val = train[hold] if config.patience is not None else None
        # one validation model per MSE weight, the holdout keeps one (tasks/evaluation/selection.py)
        configs = dataclasses.replace(config, mse_weight_alternatives=weights[1:]).candidates()
        fits = [_fit_once(train[~hold], val, movies, users, configs[0], seed)]
        # an alternative goes on from the first's weights, as in the night's train stage
        for one in configs[1:] if relevant else []:
            start = fits[0][0].model.get_weights()
            fits.append(_fit_once(train[~hold], val, movies, users, one, seed, None, start))
        best = 0
        if len(fits) > 1:
            asked = choice_users(relevant, seed)
            scores = [
                holdout_score(f.model, scaled, train[~hold], asked, k, config.popularity_prior)[0]
                for f, scaled in fits
            ]
            best = best_candidate(scores, seed)
        config = replace_weight(config, weights[best])
        first, scaled = fits[best]
        # an alternative's epochs count on from the first's
        best_epoch = first.best_epoch + (fits[0][0].best_epoch if best else 0)
        relevant = {
            int(u): relevant[int(u)]
            for u in sweep_users(np.array(sorted(relevant), dtype=np.int64), seed)
        }
        if config.popularity_prior and relevant:
            sweep = prior_sweep(
                Fitted(first.model, scaled, best_epoch, 0.0), train[~hold], relevant, k
            )
            weight = select_weight(
                np.column_stack([s[1]["ndcg"] for s in sweep]), WEIGHTS, seed
            ).weight
    result, scaled = _fit_once(train, None, movies, users, config, seed, best_epoch)
    return Fitted(result.model, scaled, best_epoch, time.perf_counter() - started, weight)


def replace_weight(config: ModelConfig, mse_weight: float) -> ModelConfig:
    """``config`` with this MSE weight and no alternative."""
    return dataclasses.replace(config, mse_weight=mse_weight, mse_weight_alternatives=())


def _fit_once(
    train: pd.DataFrame,
    val: pd.DataFrame | None,
    movies: pd.DataFrame,
    users: np.ndarray,
    config: ModelConfig,
    seed: int,
    epochs: int | None = None,
    start: list[Any] | None = None,
) -> tuple[Any, Prepared]:
    from tasks.modeling.train import train_model

    kind, k = config.features, config.factors
    feats = compute_features(train, movies, users, kind, config.shrinkage, factors=k)
    hist = (
        user_history(train, feats.user_ids, feats.movie_ids, config.history_length)
        if config.history_length > 0
        else None
    )
    scalers = fit_scalers(
        feats.user_x,
        feats.movie_x,
        train["rating"].to_numpy(),
        feats.user_names,
        feats.movie_names,
        config.target_scale,
    )
    scaled = prepared(feats, scalers, hist)
    validation = scaled.triples(val) if val is not None and len(val) else None
    init = None if start is None else (lambda model: model.set_weights(start))
    data = scaled.train_data(train, config)
    return train_model(data, config, seed, epochs, validation, init=init), scaled


@dataclass(frozen=True)
class ServedQueries:
    """What the lists of the same users share at every prior weight: their served vectors, the
    movies' vectors and popularity, and the movies each user has seen (as CSR rows).

    Why: a sweep of the prior's weights asks for the same users' lists once per weight; computed
    per weight, the seen rows and the popularity counts took a fifth of the sweep on a 2.5M night.
    """

    users: np.ndarray
    user_emb: np.ndarray  # the users' rows, in ``users`` order
    movie_emb: np.ndarray
    movie_ids: np.ndarray
    popularity: np.ndarray
    seen: tuple[np.ndarray, np.ndarray]

    @staticmethod
    def of(
        fitted: Fitted,
        embeddings: tuple[np.ndarray, np.ndarray],
        train: pd.DataFrame,
        users: np.ndarray,
        seen: pd.DataFrame | None = None,
    ) -> ServedQueries:
        """``users``' queries; popularity counted on ``train``; ``seen``: the ratings whose movies
        are excluded (default ``train``; any subset holding ``users``' ratings)."""
        p = fitted.prepared
        user_emb, movie_emb = embeddings
        users = np.asarray(users)
        rows = pd.Index(p.feats.user_ids).get_indexer(users)
        if (rows < 0).any():
            raise ValueError(f"user {users[rows < 0][0]} has no features in this model")
        movie_ids = p.feats.movie_ids
        csr = seen_csr(train if seen is None else seen, users, movie_ids)
        popularity = movie_popularity(train, movie_ids)
        return ServedQueries(users, user_emb[rows], movie_emb, movie_ids, popularity, csr)

    def lists(self, k: int, weight: float) -> dict[int, list[int]]:
        """Each user's top-k movie ids (best first) with prior ``weight``, seen movies excluded."""
        space = ServingSpace(self.movie_emb.shape[1], weight)
        index = build_index(space.movies(self.movie_emb, self.popularity))
        queries = space.users(self.user_emb)
        return topk_lists(index, queries, self.users, self.movie_ids, self.seen, k)


def served_lists(
    fitted: Fitted,
    embeddings: tuple[np.ndarray, np.ndarray],
    train: pd.DataFrame,
    users: np.ndarray,
    k: int,
    weight: float,
    seen: pd.DataFrame | None = None,
) -> dict[int, list[int]]:
    """Top-k of ``users`` from the served vectors with prior ``weight`` (popularity counted on
    ``train``; ``seen`` as in :meth:`ServedQueries.of`)."""
    return ServedQueries.of(fitted, embeddings, train, users, seen).lists(k, weight)


def prior_sweep(
    fitted: Fitted,
    train: pd.DataFrame,
    relevant: dict[int, set[int]],
    k: int,
    weights: tuple[float, ...] = WEIGHTS,
) -> list[tuple[dict[int, list[int]], dict[str, np.ndarray]]]:
    """For each prior weight: the relevant users' lists and their per-user metrics (users in sorted
    order)."""
    p = fitted.prepared
    embeddings = embed_all(fitted.model, p.user_input, p.movie_x)
    users = np.array(sorted(relevant), dtype=np.int64)
    queries = ServedQueries.of(fitted, embeddings, train, users)
    out = []
    for weight in weights:
        lists = queries.lists(k, weight)
        out.append((lists, per_user_metrics(lists, {u: relevant[u] for u in users.tolist()}, k)[1]))
    return out


# the users a choice rests on, at most (a seeded sample of the prior's sweep users)
CHOICE_USERS = 2_000


def choice_users(relevant: dict[int, set[int]], seed: int) -> dict[int, set[int]]:
    """The holdout users the choice is made on: a seeded sample of the prior's sweep users."""
    users = sweep_users(np.array(sorted(relevant), dtype=np.int64), seed)
    if len(users) > CHOICE_USERS:
        users = np.sort(np.random.default_rng(seed + 2).choice(users, CHOICE_USERS, replace=False))
    return {int(u): relevant[int(u)] for u in users}


def holdout_score(
    model: Any,
    phase: Prepared,
    train: pd.DataFrame,
    relevant: dict[int, set[int]],
    k: int,
    popularity_prior: bool,
) -> tuple[np.ndarray, float]:
    """(NDCG@k per user, in sorted user order; prior weight) of ``model``'s top-k on ``relevant``'s
    users, at the prior weight whose mean is best (0 without a prior)."""
    weights = WEIGHTS if popularity_prior else (0.0,)
    sweep = prior_sweep(Fitted(model, phase, 0, 0.0), train, relevant, k, weights)
    best = int(np.argmax([float(np.mean(values["ndcg"])) for _, values in sweep]))
    return np.asarray(sweep[best][1]["ndcg"], dtype=np.float64), float(weights[best])


def best_candidate(ndcg: list[np.ndarray], seed: int = 0) -> int:
    """Which candidate to keep, from each one's NDCG@k per user (the same users): the first (the
    preset's own setting) unless another is better with confidence (the whole 95% paired interval
    of its difference from the first above 0, :func:`tasks.evaluation.gate.paired_difference`);
    of those, the best mean.

    The first is kept on a tie in evidence: on ml-latest-small's 590 holdout users the two MSE
    weights' top-10 differ by 0.003 on the holdout but by 0.015 on the users' later ratings, both
    in the first's favour, so a bare comparison of means could throw the better model away.
    """
    if not ndcg:
        raise ValueError("no candidate to choose from")
    better = [i for i in range(1, len(ndcg)) if paired_difference(ndcg[i], ndcg[0], seed).low > 0]
    return max(better, key=lambda i: float(np.mean(ndcg[i])), default=0)


def model_rmse(fitted: Fitted, test: pd.DataFrame) -> tuple[float, int]:
    """RMSE in stars of the model's own dot product on ``test`` (pairs it knows), and how many
    ratings that is."""
    from tasks.modeling.train import predict_scores

    p = fitted.prepared
    u, m, _ = p.triples(test)
    known = (u >= 0) & (m >= 0)
    scores = predict_scores(fitted.model, p.user_input, p.movie_x, u[known], m[known])
    return rmse(p.scalers.target_to_rating(scores), test["rating"].to_numpy()[known]), int(
        known.sum()
    )


def method_row(
    name: str,
    lists: dict[int, list[int]],
    relevant: dict[int, set[int]],
    k: int,
    n_movies: int,
    seed: int,
) -> dict[str, Any]:
    """One table row: ranking metrics at ``k``, NDCG@k's bootstrap interval, users behind them,
    coverage."""
    users, values = per_user_metrics(lists, relevant, k)
    ndcg = bootstrap(values["ndcg"], seed)
    row: dict[str, Any] = {
        "method": name,
        **{metric: float(v.mean()) for metric, v in values.items()},
    }
    row |= {"ndcg_low": ndcg.low, "ndcg_high": ndcg.high, "users": len(users)}
    row["coverage"] = coverage({u: lists.get(u, []) for u in users.tolist()}, n_movies)
    return row


def compare(
    train: pd.DataFrame,
    test: pd.DataFrame,
    movies: pd.DataFrame,
    models: dict[str, Fitted],
    k: int = 10,
    seed: int = 0,
    with_als: bool = True,
    with_ease: bool = True,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """One row per method: ranking metrics at ``k`` with users and intervals, coverage, RMSE (stars)
    where it predicts ratings."""
    relevant = relevant_sets(test)
    users = np.array(sorted(relevant), dtype=np.int64)
    movie_ids = movies["movie_id"].to_numpy(dtype=np.int64)
    lists: dict[str, dict[int, list[int]]] = {
        "most-popular": popularity_lists(train, users, movie_ids, k)
    }
    if with_als:
        als = als_lists(train, np.sort(train["user_id"].unique()), movie_ids, k, seed)
        if als is None and log:
            log("ALS skipped: install the optional extra (pip install 'towerflow[als]')")
        if als is not None:
            lists["als (implicit, 64 factors)"] = als
    settings: dict[str, str] = {}
    if with_ease:
        lists["ease^r"], lam = ease_lists(train, users, k, log=log)
        settings["ease^r"] = f"lambda {lam:g}"
    for name, fitted in models.items():
        p = fitted.prepared
        lists[name] = served_lists(
            fitted,
            embed_all(fitted.model, p.user_input, p.movie_x),
            train,
            users,
            k,
            fitted.prior_weight,
        )
        settings[name] = f"prior weight {fitted.prior_weight:g}"
    rows = []
    for name, recs in lists.items():
        row = method_row(name, recs, relevant, k, len(movie_ids), seed)
        row["rmse"], row["rmse_ratings"] = (
            model_rmse(models[name], test) if name in models else (float("nan"), 0)
        )
        row["setting"] = settings.get(name, "")
        rows.append(row)
    return pd.DataFrame(rows)


def over_seeds(
    table: pd.DataFrame, metrics: tuple[str, ...] = ("ndcg", "recall", "rmse")
) -> pd.DataFrame:
    """Mean, min and max of ``metrics`` per method over the rows of several seeds (methods in
    first-seen order)."""
    missing = [c for c in ("method", *metrics) if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; it has {list(table.columns)}")
    stats = {f"{m}_{how}": (m, how) for m in metrics for how in ("mean", "min", "max")}
    return table.groupby("method", sort=False).agg(**stats)
