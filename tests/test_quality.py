"""Evaluation helpers and baselines: per-user holdout, most-popular, EASE^R, the evaluate command
over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.evaluation.baselines import ease_lists, popularity_lists
from tasks.evaluation.evaluate import over_seeds
from tasks.preparation.features import per_user_holdout


def test_split_per_user_holds_out_each_users_latest() -> None:
    ratings = pd.DataFrame(
        {"user_id": [1] * 10 + [2] * 5, "timestamp": [*list(range(10, 0, -1)), 5, 1, 2, 3, 4]}
    )
    mask = per_user_holdout(ratings, 0.2)
    assert ratings[mask].groupby("user_id").timestamp.apply(sorted).to_dict() == {
        1: [9, 10],
        2: [5],
    }


def test_ease_learns_planted_co_occurrence(rng: np.random.Generator) -> None:
    """Users who rated movie 1 also rated 2 (and 3 with 4); a user with only 1 gets 2 first, never
    what they rated.
    """
    rows = []
    for user in range(1, 61):
        pair = (1, 2) if user <= 30 else (3, 4)
        rows += [(user, pair[0]), (user, pair[1]), (user, int(rng.integers(5, 40)))]
    train = pd.DataFrame(rows, columns=["user_id", "movie_id"]).drop_duplicates()
    train["timestamp"] = np.arange(len(train))
    train["rating"] = 4.0
    ask = pd.DataFrame(
        {"user_id": [100, 101], "movie_id": [1, 3], "timestamp": [0, 0], "rating": [4.0, 4.0]}
    )
    lists, lam = ease_lists(pd.concat([train, ask]), np.array([100, 101]), k=3, lambdas=(1.0, 10.0))
    assert lists[100][0] == 2 and lists[101][0] == 4 and lam in (1.0, 10.0)
    assert 1 not in lists[100] and 3 not in lists[101]
    with pytest.raises(ValueError, match="positive lambdas"):
        ease_lists(train, np.array([1]), k=3, lambdas=(0.0,))


def test_popularity_excludes_seen_and_orders_by_count() -> None:
    train = pd.DataFrame({"user_id": [1, 2, 2, 3, 3, 3], "movie_id": [10, 10, 20, 10, 20, 30]})
    lists = popularity_lists(train, np.array([1, 3]), np.array([10, 20, 30, 40]), k=2)
    assert lists == {1: [20, 30], 3: [40]}


def test_over_seeds_by_hand() -> None:
    table = pd.DataFrame(
        {
            "method": ["pop", "model", "pop", "model"],
            "ndcg": [0.07, 0.10, 0.07, 0.12],
            "rmse": [np.nan, 0.9, np.nan, 0.8],
        }
    )
    out = over_seeds(table, ("ndcg", "rmse"))
    assert list(out.index) == ["pop", "model"]  # first-seen order
    assert out.loc["model", "ndcg_mean"] == pytest.approx(0.11) and out.loc[
        "model", "ndcg_min"
    ] == pytest.approx(0.10)
    assert out.loc["model", "rmse_max"] == pytest.approx(0.9) and out["rmse_mean"].isna()["pop"]
    with pytest.raises(ValueError, match=r"lacks columns \['recall'\]"):
        over_seeds(table, ("recall",))


@pytest.mark.train
def test_evaluate_command_over_two_seeds(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On planted genre tastes the default beats most-popular and the course recipe with every
    seed.
    """
    from flows.cli import main

    ratings, movies = tiny_data
    out = tmp_path / "table.csv"
    argv = [
        "evaluate",
        "--ratings",
        str(ratings),
        "--movies",
        str(movies),
        "--max-epochs",
        "5",
        "--no-als",
    ]
    assert (
        main(
            [
                *argv,
                "--preset",
                "default",
                "--preset",
                "lab",
                "--seed",
                "1",
                "--seed",
                "2",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    methods = ("most-popular", "ease^r", "two-tower (default)", "two-tower (lab)")
    assert sorted(zip(table["seed"], table["method"], strict=True)) == [
        (s, m) for s in (1, 2) for m in sorted(methods)
    ]
    ndcg = table.pivot(index="seed", columns="method", values="ndcg@10")
    assert (ndcg["two-tower (default)"] > ndcg["most-popular"]).all() and (
        ndcg["two-tower (default)"] > ndcg["two-tower (lab)"]
    ).all()
    assert table.loc[table["method"].str.startswith("two-tower"), "rmse"].between(0.3, 1.5).all()
    assert (table["users"] == table["users"].iloc[0]).all() and table["users"].iloc[
        0
    ] > 30  # every figure on the same users
    assert (table["ndcg_low"] <= table["ndcg@10"]).all() and (
        table["ndcg@10"] <= table["ndcg_high"]
    ).all()
    assert table.loc[table["method"] == "ease^r", "setting"].str.startswith("lambda ").all()
    printed = capsys.readouterr().out
    assert "over seeds 1, 2:" in printed and "ndcg@10_mean" in printed


def test_popularity_lists_equal_a_plain_walk_heavy_raters_included(
    rng: np.random.Generator,
) -> None:
    movie_ids = np.arange(1, 301, dtype=np.int64)
    weights = 1.0 / np.arange(1, 301)
    rows = [
        (u, int(m))
        for u in range(1, 41)
        for m in rng.choice(
            movie_ids, size=int(rng.integers(0, 60)), replace=False, p=weights / weights.sum()
        )
    ]
    rows += [(99, int(m)) for m in movie_ids[:250]]  # a heavy rater: the whole head is rated
    train = pd.DataFrame(rows, columns=["user_id", "movie_id"])
    users = np.array([*range(1, 41), 99, 123], dtype=np.int64)  # 123 has rated nothing
    counts = train["movie_id"].value_counts().reindex(movie_ids, fill_value=0)
    order = sorted(movie_ids.tolist(), key=lambda m: (-counts[m], m))
    lists = popularity_lists(train, users, movie_ids, k=10)
    for user in users.tolist():
        seen = set(train.loc[train.user_id == user, "movie_id"])
        assert lists[user] == [m for m in order if m not in seen][:10], user


def test_a_large_holdout_is_judged_on_a_bounded_sample(
    published: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past twice the sweep's users the prior is chosen on a sample and the figures rest on other
    users, at most JUDGED_USERS of them, seeded; every figure says how many users stand behind
    it."""
    import tasks.evaluation.quality as quality
    import tasks.serving.popularity as popularity
    from tasks.store.latest import read_latest

    monkeypatch.setattr(popularity, "SWEEP_USERS", 20)
    monkeypatch.setattr(quality, "JUDGED_USERS", 30)
    latest, d = read_latest(published["dir"]), published["dir"]
    model = {key: d / entry.path for key, entry in latest.model.items()}
    store = d / "store" / latest.inputs.sha256 / "ratings.parquet"
    args = (store, model["keras"].parent, model["scalers"], model["keras"], 0.2, 5)
    first, again = quality.run_evaluate(*args, seed=3), quality.run_evaluate(*args, seed=3)
    assert "skipped" not in first and "skipped" not in again
    assert first["users"] == 30 and first["prior"]["chosen_on_users"] == 20
    assert all(
        row["users"] == 30 for name, row in first["metrics"].items() if name != quality.NO_PRIOR_ROW
    )
    assert first == again  # the same seed judges the same users
