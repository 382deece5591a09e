"""The quality gate refuses models below the baseline or too far below the published one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.evaluate import over_seeds, popularity_lists, split_per_user
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


def test_over_seeds_by_hand() -> None:
    table = pd.DataFrame({"method": ["pop", "model", "pop", "model"], "ndcg": [0.07, 0.10, 0.07, 0.12], "rmse": [np.nan, 0.9, np.nan, 0.8]})
    out = over_seeds(table, ("ndcg", "rmse"))
    assert list(out.index) == ["pop", "model"]  # first-seen order
    assert out.loc["model", "ndcg_mean"] == pytest.approx(0.11) and out.loc["model", "ndcg_min"] == pytest.approx(0.10)
    assert out.loc["model", "rmse_max"] == pytest.approx(0.9) and np.isnan(out.loc["pop", "rmse_mean"])
    with pytest.raises(ValueError, match=r"lacks columns \['recall'\]"):
        over_seeds(table, ("recall",))


@pytest.mark.train
def test_evaluate_command_over_two_seeds(tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On planted genre tastes the default beats most-popular and the course recipe with every seed."""
    from flows.cli import main

    ratings, movies = tiny_data
    out = tmp_path / "table.csv"
    argv = ["evaluate", "--ratings", str(ratings), "--movies", str(movies), "--max-epochs", "5", "--no-als"]
    assert main([*argv, "--preset", "default", "--preset", "lab", "--seed", "1", "--seed", "2", "--output", str(out)]) == 0
    table = pd.read_csv(out)
    methods = ("most-popular", "two-tower (default)", "two-tower (lab)")
    assert sorted(zip(table["seed"], table["method"], strict=True)) == [(s, m) for s in (1, 2) for m in sorted(methods)]
    ndcg = table.pivot(index="seed", columns="method", values="ndcg@10")
    assert (ndcg["two-tower (default)"] > ndcg["most-popular"]).all() and (ndcg["two-tower (default)"] > ndcg["two-tower (lab)"]).all()
    assert table.loc[table["method"] != "most-popular", "rmse"].between(0.3, 1.5).all()
    printed = capsys.readouterr().out
    assert "over seeds 1, 2:" in printed and "ndcg@10_mean" in printed
