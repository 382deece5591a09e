"""Cold start: a newcomer's stated genre tastes, and catalog movies nobody rated, reach the
results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from flows.cli import main
from tasks.preparation.features import GENRES
from towerflow.coldstart import newcomer_features, parse_tastes
from towerflow.query import QueryError


def test_parse_tastes_and_its_errors() -> None:
    assert parse_tastes("adventure=5, Sci-Fi=4.5,") == {"Adventure": 5.0, "Sci-Fi": 4.5}
    for bad, message in [
        ("Fantasyy=5", "unknown genre 'Fantasyy'"),
        ("Drama", "is not GENRE=STARS"),
        ("Drama=9", "outside"),
        ("", "at least one"),
    ]:
        with pytest.raises(QueryError, match=message):
            parse_tastes(bad)


def test_unstated_genres_are_unknown_in_default_and_zero_in_lab() -> None:
    tastes = {"Adventure": 5.0, "Horror": 1.0}
    x, names = newcomer_features(tastes, {"features": "confidence", "shrinkage": 10.0})
    row = dict(zip(names, x[0], strict=True))
    assert row["share_Adventure"] == pytest.approx(0.5) and row["share_Drama"] == 0.0
    # the newcomer's own mean: no opinion, not a bad one
    assert row["shrunk_mean_Drama"] == pytest.approx(3.0)
    assert row["shrunk_mean_Adventure"] > 3.0 > row["shrunk_mean_Horror"]
    lab, lab_names = newcomer_features(tastes, {"features": "lab"})
    lab_row = dict(zip(lab_names, lab[0], strict=True))
    # the course's 0 for "not rated"
    assert lab_row["mean_Adventure"] == 5.0 and lab_row["mean_Drama"] == 0.0
    assert len(lab_names) == len(GENRES)


def test_recommend_for_genres_through_the_cli(
    published: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(published["dir"])
    capsys.readouterr()
    assert (
        main(
            [
                "recommend",
                "--genres",
                "Comedy=5,Drama=4",
                "--data-dir",
                d,
                "--k",
                "4",
                "--format",
                "json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    assert all(0.5 <= r["predicted_rating"] <= 5.0 and r["title"] for r in rows)
    assert main(["recommend", "--genres", "Cartoons=5", "--data-dir", d]) == 1
    assert "unknown genre 'Cartoons'" in capsys.readouterr().err


def test_movies_nobody_rated_appear_as_neighbours(published: dict[str, Any]) -> None:
    """Cold movies are embedded from content and searched like any other: they show up in the
    tables.
    """
    movies, ratings, d = published["movies"], published["ratings"], Path(published["dir"])
    cold = set(movies.movieId) - set(ratings.movieId)
    sim = ds.dataset(d / "outputs" / "similar_movies", partitioning="hive").to_table().to_pandas()
    assert cold and cold <= set(sim.movie_id)
    assert cold & set(sim.similar_movie_id), "no cold movie is anyone's neighbour"
    emb = pd.read_parquet(d / published["latest"]["model"]["movie_embeddings"]["path"])
    norms = np.linalg.norm(np.stack(list(emb[emb.movie_id.isin(cold)].embedding)), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)
