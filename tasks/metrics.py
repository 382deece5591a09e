"""Ranking and rating metrics with binary relevance.

For each user: ``recommended`` is the ordered top-k list, ``relevant`` the set
of held-out movies rated at or above the relevance threshold. Users without a
relevant held-out movie are skipped (they cannot be hit). Discount is log2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RANKING_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate")


def user_metrics(recommended: Sequence[int], relevant: set[int], k: int) -> dict[str, float]:
    """Precision, recall, NDCG, MAP and hit rate at ``k`` for one user."""
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


def ranking_metrics(recommended: Mapping[int, Sequence[int]], relevant: Mapping[int, set[int]], k: int) -> dict[str, float]:
    """Mean of :func:`user_metrics` over users with relevant items; a user with no list scores 0."""
    users = [u for u, rel in relevant.items() if rel]
    if not users:
        raise ValueError("no user has a relevant held-out item; lower the threshold or hold out more")
    per_user = [user_metrics(recommended.get(u, []), relevant[u], k) for u in users]
    out = {name: float(np.mean([m[name] for m in per_user])) for name in RANKING_METRICS}
    out["users"] = float(len(users))
    return out


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Root mean squared error (in the units of the inputs)."""
    predicted, actual = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if predicted.shape != actual.shape or predicted.size == 0:
        raise ValueError(f"rmse needs two equal, non-empty shapes, got {predicted.shape} and {actual.shape}")
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def coverage(recommended: Mapping[int, Sequence[int]], catalog_size: int) -> float:
    """Share of the catalog that appears in at least one user's list."""
    if catalog_size < 1:
        raise ValueError(f"catalog_size must be >= 1, got {catalog_size}")
    return len({m for items in recommended.values() for m in items}) / catalog_size
