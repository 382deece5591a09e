"""The quality gate refuses models below the baseline or too far below the published one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.evaluate import popularity_lists, split_per_user
from tasks.quality import QualityGateError, check_gate


def _metrics(model: float, baseline: float) -> dict[str, dict[str, float]]:
    return {"two-tower": {"ndcg": model}, "most-popular": {"ndcg": baseline}}


def test_gate_passes_and_refuses() -> None:
    assert "passed" in check_gate(_metrics(0.10, 0.07), None, 0.01)
    with pytest.raises(QualityGateError, match=r"below the most-popular baseline 0\.0700"):
        check_gate(_metrics(0.05, 0.07), None, 0.01)
    previous = {"model_version": "2026-01-01-abc", "metrics": {"two-tower": {"ndcg": 0.12}}}
    assert "passed" in check_gate(_metrics(0.115, 0.07), previous, 0.01)
    with pytest.raises(QualityGateError, match=r"more than 0\.01 below the published model 2026-01-01-abc"):
        check_gate(_metrics(0.10, 0.07), previous, 0.01)


def test_split_per_user_holds_out_each_users_latest() -> None:
    ratings = pd.DataFrame({"user_id": [1] * 10 + [2] * 5, "timestamp": [*list(range(10, 0, -1)), 5, 1, 2, 3, 4]})
    mask = split_per_user(ratings, 0.2)
    assert ratings[mask].groupby("user_id").timestamp.apply(sorted).to_dict() == {1: [9, 10], 2: [5]}


def test_popularity_excludes_seen_and_orders_by_count() -> None:
    train = pd.DataFrame({"user_id": [1, 2, 2, 3, 3, 3], "movie_id": [10, 10, 20, 10, 20, 30]})
    lists = popularity_lists(train, np.array([1, 3]), np.array([10, 20, 30, 40]), k=2)
    assert lists == {1: [20, 30], 3: [40]}
