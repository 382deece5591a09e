"""Metric functions against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.evaluation.metrics import coverage, per_user_metrics, ranking_metrics, rmse, user_metrics


def test_user_metrics_by_hand() -> None:
    # hits at ranks 1 and 3 of 4; 3 relevant items in all
    m = user_metrics([10, 20, 30, 40], {10, 30, 99}, k=4)
    assert m["precision"] == 0.5
    assert m["recall"] == pytest.approx(2 / 3)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg"] == pytest.approx(dcg / idcg)
    assert m["map"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m["hit_rate"] == 1.0


def test_no_hits_and_perfect() -> None:
    assert user_metrics([1, 2], {3}, k=2) == {
        "precision": 0.0,
        "recall": 0.0,
        "ndcg": 0.0,
        "map": 0.0,
        "hit_rate": 0.0,
    }
    perfect = user_metrics([5, 6], {5, 6}, k=2)
    assert perfect["ndcg"] == pytest.approx(1.0) and perfect["map"] == pytest.approx(1.0)


def test_ranking_metrics_averages_and_skips_users_without_relevant() -> None:
    out = ranking_metrics({1: [7, 8], 2: [9, 1]}, {1: {7}, 2: {4}, 3: set()}, k=2)
    assert out["users"] == 2.0
    assert out["hit_rate"] == 0.5 and out["precision"] == 0.25 and out["ndcg"] == pytest.approx(0.5)


def test_rmse_and_coverage() -> None:
    assert rmse(np.array([3.0, 5.0]), np.array([4.0, 4.0])) == 1.0
    assert coverage({1: [1, 2], 2: [2, 3]}, 10) == 0.3
    with pytest.raises(ValueError, match="equal, non-empty"):
        rmse(np.array([]), np.array([]))


def test_per_user_metrics_equal_user_metrics_for_every_user(rng: np.random.Generator) -> None:
    recommended = {
        u: rng.choice(30, size=int(rng.integers(0, 8)), replace=False).tolist() for u in range(50)
    }
    relevant = {
        u: set(rng.choice(30, size=int(rng.integers(1, 12)), replace=False).tolist())
        for u in range(60)
    }
    users, values = per_user_metrics(recommended, relevant, k=6)
    assert users.tolist() == list(range(60))  # users without a list score 0
    for i, user in enumerate(users.tolist()):
        expected = user_metrics(recommended.get(user, []), relevant[user], k=6)
        assert {name: values[name][i] for name in expected} == pytest.approx(expected)
