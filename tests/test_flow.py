"""End to end: the nightly flow under a Prefect test server publishes tables that keep the
contract.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from tasks.serving.export import read_embeddings

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_harness")]
K = 5  # the k of the session-scoped `published` run in conftest.py


def test_latest_json_names_everything(published: dict[str, Any]) -> None:
    latest, d = published["latest"], published["dir"]
    assert latest["run_date"] == "2026-01-02" and latest["schema_version"] == "2"
    assert latest["model_version"].startswith("2026-01-02-")
    for key in (
        "index",
        "index_ids",
        "movie_embeddings",
        "user_embeddings",
        "keras",
        "scalers",
        "serving",
    ):
        assert (d / latest["model"][key]["path"]).is_file()
    for name in ("recommendations", "similar_movies", "metrics"):
        info = latest["tables"][name]
        assert info["path"] == f"outputs/{name}/run_date=2026-01-02"
        assert all(
            Path(f).parent == Path(info["path"]) and Path(f).name.startswith("part-")
            for f in info["files"]
        )
        assert sum(pq.ParquetFile(d / f).metadata.num_rows for f in info["files"]) == info["rows"]
        assert sorted(p.name for p in (d / info["path"]).glob("*.parquet")) == sorted(
            Path(f).name for f in info["files"]
        )
    # the published run is sharded (conftest: --shard-size 40): one part per user shard and per
    # movie shard
    assert (
        len(latest["tables"]["recommendations"]["files"]) == 3
        and len(latest["tables"]["similar_movies"]["files"]) == 5
    )
    assert {"train", "recommend", "ingest"} <= set(latest["timings"])
    assert not (d / "work" / latest["model_version"]).exists()
    # --no-loss-choice: one validation model, at the default's first MSE weight
    assert latest["training"]["loss_choice"] is None
    assert latest["config"]["mse_weight"] == 40.0
    assert latest["config"]["mse_weight_alternatives"] == []


def test_recommendations_keep_the_contract(published: dict[str, Any]) -> None:
    d, ratings = published["dir"], published["ratings"]
    table = ds.dataset(
        d / "outputs" / "recommendations", format="parquet", partitioning="hive"
    ).to_table()
    recs = table.to_pandas()
    assert (
        table.schema.field("rank").type == "int32" and table.schema.field("score").type == "float"
    )
    assert set(recs.user_id) == set(ratings.userId)
    assert (recs.groupby("user_id").size() == K).all()
    assert (recs.model_version == published["latest"]["model_version"]).all()
    seen = set(zip(ratings.userId, ratings.movieId, strict=True))
    assert not any((u, m) in seen for u, m in zip(recs.user_id, recs.movie_id, strict=True))
    recs = recs.sort_values(["user_id", "rank"])
    assert (recs.groupby("user_id").score.diff().dropna() <= 1e-7).all()
    assert (
        recs.groupby("user_id")["rank"].apply(list).map(lambda r: r == list(range(1, K + 1))).all()
    )
    assert recs.predicted_rating.between(0.5, 5.0).all()
    # score = inner product of the published, L2-normalized embeddings
    latest = published["latest"]
    uid, uemb = read_embeddings(d / latest["model"]["user_embeddings"]["path"], "user")
    mid, memb = read_embeddings(d / latest["model"]["movie_embeddings"]["path"], "movie")
    np.testing.assert_allclose(np.linalg.norm(memb, axis=1), 1.0, atol=1e-5)
    u = pd.Index(uid).get_indexer(recs.user_id)
    m = pd.Index(mid).get_indexer(recs.movie_id)
    np.testing.assert_allclose(np.einsum("ij,ij->i", uemb[u], memb[m]), recs.score, atol=1e-5)


def test_similar_movies_cover_catalog_including_cold(published: dict[str, Any]) -> None:
    d, movies, ratings = published["dir"], published["movies"], published["ratings"]
    sim = (
        ds.dataset(d / "outputs" / "similar_movies", format="parquet", partitioning="hive")
        .to_table()
        .to_pandas()
    )
    assert set(sim.movie_id) == set(movies.movieId)
    assert (sim.groupby("movie_id").size() == K).all()
    assert not (sim.movie_id == sim.similar_movie_id).any()
    cold = set(movies.movieId) - set(ratings.movieId)
    assert cold and cold <= set(sim.movie_id)


def test_predict_scores_pairs_with_cold_start(
    published: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, movies, ratings = published["dir"], published["movies"], published["ratings"]
    cold = sorted(set(movies.movieId) - set(ratings.movieId))[0]
    pairs = pd.DataFrame(
        {"userId": [1, 1, 999999, 2], "movieId": [int(ratings.movieId.iloc[0]), cold, 1, 424242]}
    )
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    assert (
        main(
            [
                "predict",
                "--data-dir",
                str(d),
                "--pairs",
                str(tmp_path / "pairs.csv"),
                "--output",
                str(tmp_path / "p.parquet"),
            ]
        )
        == 0
    )
    out = pq.read_table(tmp_path / "p.parquet").to_pandas()
    assert out.predicted_rating[:2].between(0.5, 5.0).all() and out.error[:2].isna().all()
    assert out.predicted_rating[2:].isna().all()
    assert "unknown user 999999" in out.error[2] and "unknown movie 424242" in out.error[3]
    assert "2 pairs have no prediction" in capsys.readouterr().err


def test_predict_agrees_with_published_recommendations(
    published: dict[str, Any], tmp_path: Path
) -> None:
    d = published["dir"]
    recs = (
        ds.dataset(d / "outputs" / "recommendations", partitioning="hive")
        .to_table()
        .to_pandas()
        .head(20)
    )
    recs[["user_id", "movie_id"]].to_csv(tmp_path / "pairs.csv", index=False)
    assert (
        main(
            [
                "predict",
                "--data-dir",
                str(d),
                "--pairs",
                str(tmp_path / "pairs.csv"),
                "--output",
                str(tmp_path / "p.parquet"),
            ]
        )
        == 0
    )
    out = pq.read_table(tmp_path / "p.parquet").to_pandas()
    np.testing.assert_allclose(out.predicted_rating, recs.predicted_rating, atol=1e-4)


def test_bad_input_fails_cleanly_and_keeps_latest(
    published: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = published["dir"]
    before = (d / "outputs" / "latest.json").read_bytes()
    bad = tmp_path / "ratings.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,four,11\n")
    movies = tmp_path / "movies.csv"
    published["movies"].to_csv(movies, index=False)
    code = main(
        [
            "run",
            "--ratings",
            str(bad),
            "--movies",
            str(movies),
            "--data-dir",
            str(d),
            "--run-date",
            "2026-01-03",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("towerflow run failed: stage ingest failed:")
    assert f"{bad}: line 3, column 'rating': 'four' is not a number" in err[-1]
    assert (d / "outputs" / "latest.json").read_bytes() == before
    assert not (d / "outputs" / "recommendations" / "run_date=2026-01-03").exists()


def test_metrics_published_beside_tables(published: dict[str, Any]) -> None:
    d, latest = published["dir"], published["latest"]
    metrics = latest["metrics"]
    assert set(metrics) == {"two-tower", "most-popular", "two-tower without popularity prior"}
    model = metrics["two-tower"]
    assert (
        0.0 <= model["ndcg_low"] <= model["ndcg"] <= model["ndcg_high"] <= 1.0 and model["rmse"] > 0
    )
    users = published["ratings"].groupby("userId").size()
    # figures say how many stand behind them
    assert 30 < model["users"] <= len(users) and model["rmse_ratings"] > model["users"]
    assert model["prior_weight"] == latest["popularity_prior"]["weight"]
    table = pq.read_table(d / latest["tables"]["metrics"]["path"]).to_pandas()
    value = table[(table.model == "two-tower") & (table.metric == "ndcg")].value.iloc[0]
    assert value == pytest.approx(model["ndcg"])
    gate = latest["gate"]  # the session's run has --no-gate: a verdict recorded, not enforced
    assert gate["verdict"] in {"passed", "undecided", "refused"} and gate["enforced"] is False
    assert gate["users"] == model["users"] and gate["comparisons"][0]["against"] == "most-popular"


def _run(data: tuple[Path, Path], data_dir: Path, *extra: str) -> int:
    ratings, movies = data
    return main(
        [
            "run",
            "--ratings",
            str(ratings),
            "--movies",
            str(movies),
            "--data-dir",
            str(data_dir),
            "--k",
            str(K),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def popularity_led(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small data set whose picks follow popularity (weak genre tastes): 400 users, 300 movies."""
    from tasks.sources.generate import generate

    data = generate(
        tmp_path_factory.mktemp("popular"),
        n_users=400,
        n_movies=300,
        mean_ratings_per_user=40,
        seed=9,
        law="popularity",
    )
    return data.ratings_csv, data.movies_csv


def test_quality_gate_refuses_and_keeps_latest(
    published: dict[str, Any], popularity_led: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The course recipe (no popularity prior, one epoch) on popularity-led picks: most-popular is
    better with confidence.
    """
    d = published["dir"]
    before = (d / "outputs" / "latest.json").read_bytes()
    assert (
        _run(popularity_led, d, "--run-date", "2026-01-04", "--preset", "lab", "--max-epochs", "1")
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        "stage quality-gate failed: quality gate refused: most-popular is better with confidence"
        in err
    )
    assert "users" in err and "not published" in err
    assert (d / "outputs" / "latest.json").read_bytes() == before
    assert not (d / "outputs" / "recommendations" / "run_date=2026-01-04").exists()


def test_tiny_holdout_is_undecided_and_publishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tasks.evaluation.gate import MIN_USERS
    from tasks.sources.generate import generate

    data = generate(tmp_path / "data", n_users=20, n_movies=60, mean_ratings_per_user=25, seed=5)
    inputs = (data.ratings_csv, data.movies_csv)
    assert _run(inputs, tmp_path / "run", "--max-epochs", "2", "--no-loss-choice") == 0
    gate = json.loads((tmp_path / "run" / "outputs" / "latest.json").read_text())["gate"]
    assert gate["verdict"] == "undecided" and gate["users"] < MIN_USERS and gate["enforced"] is True
    assert f"fewer than {MIN_USERS} to decide on" in gate["reason"]
    assert "gate      undecided:" in capsys.readouterr().out  # the summary says so


def test_default_passes_on_popularity_led_data(
    popularity_led: tuple[Path, Path], tmp_path: Path
) -> None:
    """Where picks follow popularity, the default (its prior weight chosen on the holdout) beats
    most-popular with confidence.

    8 of the default's 20 epochs: there the gate passes with the interval's low end at +0.014
    (NDCG@5 0.149 vs 0.120).
    """
    assert _run(popularity_led, tmp_path / "run", "--max-epochs", "8") == 0
    latest = json.loads((tmp_path / "run" / "outputs" / "latest.json").read_text())
    assert latest["gate"]["verdict"] == "passed", latest["gate"]["reason"]
    assert latest["popularity_prior"]["weight"] > 0
    assert latest["metrics"]["two-tower"]["ndcg"] > latest["metrics"]["most-popular"]["ndcg"]
    # the train stage tried the default's two MSE weights; the published model has the one kept
    choice = latest["training"]["loss_choice"]
    assert [c["mse_weight"] for c in choice["candidates"]] == [40.0, 10.0]
    assert latest["config"]["mse_weight"] == choice["mse_weight"] in (40.0, 10.0)
    assert choice["users"] > 0 and all(0 <= c["ndcg"] <= 1 for c in choice["candidates"])
