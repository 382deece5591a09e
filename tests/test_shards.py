"""Scoring in shards gives exactly the rows of one unsharded pass; the report's plots are PNG
files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.preparation.scalers import fit_scalers, save_scalers
from tasks.serving.export import build_index, write_embeddings, write_id_table, write_index
from tasks.serving.popularity import ServingSpace
from tasks.serving.shards import (
    SCORE_BINS,
    count_rows,
    run_recommend_shard,
    run_similar_shard,
    shard_bounds,
)
from tasks.store import schemas
from tasks.store.layout import MODEL_FILES
from tasks.store.storage import write_table

K = 4


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


@pytest.fixture
def model_dir(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """A model directory (index, ids, served embeddings with a popularity prior, scalers) and a
    ratings store, 53 users x 37 movies.
    """
    d = tmp_path / "model"
    d.mkdir()
    user_ids = np.sort(rng.choice(np.arange(1, 500), size=53, replace=False)).astype(np.int64)
    movie_ids = np.sort(rng.choice(np.arange(1, 900), size=37, replace=False)).astype(np.int64)
    space = ServingSpace(8, 0.5)
    space.write(d / MODEL_FILES["serving"])
    movie_emb = space.movies(_unit(rng, len(movie_ids), 8), rng.random(len(movie_ids)))
    user_emb = space.users(_unit(rng, len(user_ids), 8))
    write_index(build_index(movie_emb), d / MODEL_FILES["index"])
    write_id_table(d / MODEL_FILES["index_ids"], movie_ids)
    write_embeddings(d / MODEL_FILES["movie_embeddings"], movie_ids, movie_emb, "movie")
    write_embeddings(d / MODEL_FILES["user_embeddings"], user_ids, user_emb, "user")
    stars = rng.choice(np.arange(1, 11) / 2, size=200)
    save_scalers(
        fit_scalers(
            rng.normal(size=(9, 2)), rng.normal(size=(9, 2)), stars, ["a", "b"], ["c", "d"]
        ),
        d / MODEL_FILES["scalers"],
    )
    n = 600  # heavy and light raters, some users with none
    ratings = pd.DataFrame(
        {"user_id": rng.choice(user_ids[:-5], size=n), "movie_id": rng.choice(movie_ids, size=n)}
    ).drop_duplicates()
    table = pa.table(
        {
            "user_id": pa.array(ratings.user_id, pa.int64()),
            "movie_id": pa.array(ratings.movie_id, pa.int64()),
            "rating": pa.array(np.full(len(ratings), 4.0), pa.float32()),
            "timestamp": pa.array(np.arange(len(ratings)), pa.int64()),
        }
    )
    store = write_table(tmp_path / "ratings.parquet", table, schemas.RATINGS, "ratings")
    return d, store


def test_shard_bounds_cover_every_row_once() -> None:
    assert shard_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_bounds(8, 4) == [(0, 4), (4, 8)]
    assert shard_bounds(3, 50_000) == [(0, 3)]
    with pytest.raises(ValueError, match="shard_size"):
        shard_bounds(3, 0)


def _read(paths: list[Path], keys: list[str]) -> pd.DataFrame:
    frame: pd.DataFrame = pd.concat([pq.read_table(p).to_pandas() for p in paths])
    return frame.sort_values(keys).reset_index(drop=True)


@pytest.mark.parametrize("shard_size", [1, 7, 20])
def test_recommend_shards_equal_one_pass(
    model_dir: tuple[Path, Path], tmp_path: Path, shard_size: int
) -> None:
    d, store = model_dir
    n = count_rows(d)["users"]
    whole = run_recommend_shard(store, d, tmp_path / "whole.parquet", K, "v1", 16, 0, n)
    parts = [
        run_recommend_shard(store, d, tmp_path / f"part-{i}.parquet", K, "v1", 16, start, stop)
        for i, (start, stop) in enumerate(shard_bounds(n, shard_size))
    ]
    assert sum(p["users"] for p in parts) == whole["users"] == n
    assert sum(p["rows"] for p in parts) == whole["rows"] == n * K
    assert np.array_equal(np.sum([p["score_hist"] for p in parts], axis=0), whole["score_hist"])
    assert (
        sum(whole["score_hist"]) == whole["rows"]
        and len(whole["score_hist"]) == len(SCORE_BINS) - 1
    )
    keys = ["user_id", "rank"]
    pd.testing.assert_frame_equal(
        _read([Path(p["path"]) for p in parts], keys), _read([Path(whole["path"])], keys)
    )
    # seen movies stay excluded within a shard (each shard reads only its own users' ratings)
    recs, seen = _read([Path(p["path"]) for p in parts], keys), pq.read_table(store).to_pandas()
    assert not recs.merge(seen, on=["user_id", "movie_id"]).shape[0]


def test_similar_shards_equal_one_pass(model_dir: tuple[Path, Path], tmp_path: Path) -> None:
    d, _ = model_dir
    n = count_rows(d)["movies"]
    whole = run_similar_shard(d, tmp_path / "whole.parquet", K, 16, 0, n)
    parts = [
        run_similar_shard(d, tmp_path / f"s-{i}.parquet", K, 16, a, b)
        for i, (a, b) in enumerate(shard_bounds(n, 10))
    ]
    keys = ["movie_id", "rank"]
    sharded = _read([Path(p["path"]) for p in parts], keys)
    pd.testing.assert_frame_equal(sharded, _read([Path(whole["path"])], keys))
    assert len(sharded) == n * K and not (sharded.movie_id == sharded.similar_movie_id).any()


def test_plots_are_png_files(tmp_path: Path) -> None:
    from tasks.plots import loss_curves, score_histogram

    history = {
        "validate": [
            {"epoch": 1, "loss": 2.0, "mse": 0.3, "val_loss": 2.2, "val_mse": 0.4},
            {"epoch": 2, "loss": 1.5, "mse": 0.2, "val_loss": 2.0, "val_mse": 0.35},
        ],
        "refit": [{"epoch": 1, "loss": 1.9, "mse": 0.3}],
    }
    counts = np.histogram([0.2, 0.5, 0.5, 0.9], bins=SCORE_BINS)[0]
    for path in (
        loss_curves(history, tmp_path / "r" / "loss.png", "t"),
        score_histogram(SCORE_BINS, counts.tolist(), tmp_path / "r" / "s.png", "t"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no temporary file left behind
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["loss.png", "s.png"]


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_a_rerun_reuses_finished_shards_and_redoes_a_missing_one(
    model_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    """Shards are resumable stages: a re-run with the same inputs reruns only the shard whose part
    file is gone.
    """
    from prefect import flow

    from flows.shard_tasks import recommend_all, similar_all
    from tasks.stage_results import Recommended, SimilarScored

    d, store = model_dir
    work = tmp_path / "work"

    @flow(name="towerflow-shards-test")
    def score() -> tuple[Recommended, SimilarScored]:
        recs = recommend_all(
            str(store), str(d), str(work / "recommendations"), K, "v1", 16, 20, str(work)
        )
        return recs, similar_all(str(d), str(work / "similar_movies"), K, 16, 15, str(work))

    recs, similar = score()
    assert (recs["shards"], recs["shards_reused"], similar["shards"], similar["shards_reused"]) == (
        3,
        0,
        3,
        0,
    )
    tables = {p: pq.read_table(p) for p in recs["parts"] + similar["parts"]}
    recs, similar = score()
    assert (recs["shards_reused"], similar["shards_reused"]) == (3, 3)
    Path(recs["parts"][1]).unlink()
    recs, similar = score()
    assert (recs["shards_reused"], similar["shards_reused"]) == (2, 3)
    for p in recs["parts"] + similar["parts"]:
        assert pq.read_table(p).equals(tables[p]), p
