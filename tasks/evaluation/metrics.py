"""Ranking and rating metrics with binary relevance.

For each user: ``recommended`` is the ordered top-k list, ``relevant`` the set
of held-out movies rated at or above the relevance threshold. Users without a
relevant held-out movie are skipped (they cannot be hit). Discount is log2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from tasks.errors import DataError

RANKING_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate")
RELEVANT_AT = 4.0  # a held-out rating at or above this is a relevant movie


def relevant_sets(held_out: pd.DataFrame, threshold: float = RELEVANT_AT) -> dict[int, set[int]]:
    """Each user's held-out movies rated at or above ``threshold`` (users without one are left
    out).
    """
    liked = held_out[held_out["rating"] >= threshold]
    out: dict[int, set[int]] = {}
    for user, movie in zip(liked["user_id"].tolist(), liked["movie_id"].tolist(), strict=True):
        out.setdefault(int(user), set()).add(int(movie))
    return out


def user_metrics(recommended: Sequence[int], relevant: set[int], k: int) -> dict[str, float]:
    """Precision, recall, NDCG, MAP and hit rate at ``k`` for one user (the readable form;
    :func:`per_user_metrics` is used).
    """
    if not relevant:
        raise ValueError("user has no relevant items; skip such users")
    top = list(recommended)[:k]
    hits = np.array([item in relevant for item in top], dtype=float)
    n_hits = hits.sum()
    discounts = 1.0 / np.log2(np.arange(2, len(top) + 2))
    ideal = (1.0 / np.log2(np.arange(2, min(len(relevant), k) + 2))).sum()
    precisions = np.cumsum(hits) / np.arange(1, len(top) + 1) if top else np.zeros(0)
    return {
        "precision": n_hits / k,
        "recall": n_hits / len(relevant),
        "ndcg": float((hits * discounts).sum() / ideal),
        "map": float((precisions * hits).sum() / min(len(relevant), k)),
        "hit_rate": float(n_hits > 0),
    }


def per_user_metrics(
    recommended: Mapping[int, Sequence[int]], relevant: Mapping[int, set[int]], k: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(users, {metric: one value per user}) over users with relevant items, users in ``relevant``
    order.

    A user with no list scores 0. What the quality gate resamples (:mod:`tasks.evaluation.gate`).
    """
    users = [u for u, rel in relevant.items() if rel]
    if not users:
        raise DataError(
            "no user has a relevant held-out item; lower the threshold or hold out more"
        )
    hits = np.zeros((len(users), k))  # the formulas of user_metrics, for every user at once
    for i, user in enumerate(users):
        top = list(recommended.get(user, []))[:k]
        hits[i, : len(top)] = [item in relevant[user] for item in top]
    n_rel = np.array([len(relevant[u]) for u in users], dtype=np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(n_rel, k).astype(np.int64) - 1]
    n_hits = hits.sum(axis=1)
    precisions = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    values = {
        "precision": n_hits / k,
        "recall": n_hits / n_rel,
        "ndcg": (hits * discounts).sum(axis=1) / ideal,
        "map": (precisions * hits).sum(axis=1) / np.minimum(n_rel, k),
        "hit_rate": (n_hits > 0).astype(np.float64),
    }
    return np.array(users, dtype=np.int64), values


def ranking_metrics(
    recommended: Mapping[int, Sequence[int]], relevant: Mapping[int, set[int]], k: int
) -> dict[str, float]:
    """Mean of :func:`user_metrics` over users with relevant items, and ``users``, how many there
    are.
    """
    users, values = per_user_metrics(recommended, relevant, k)
    out = {name: float(np.mean(v)) for name, v in values.items()}
    out["users"] = float(len(users))
    return out


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Root mean squared error (in the units of the inputs)."""
    predicted, actual = (
        np.asarray(predicted, dtype=np.float64),
        np.asarray(actual, dtype=np.float64),
    )
    if predicted.shape != actual.shape or predicted.size == 0:
        raise ValueError(
            f"rmse needs two equal, non-empty shapes, got {predicted.shape} and {actual.shape}"
        )
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def coverage(recommended: Mapping[int, Sequence[int]], catalog_size: int) -> float:
    """Share of the catalog that appears in at least one user's list."""
    if catalog_size < 1:
        raise ValueError(f"catalog_size must be >= 1, got {catalog_size}")
    return len({m for items in recommended.values() for m in items}) / catalog_size
