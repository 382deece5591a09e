"""The sharded stages: one Prefect task run per user shard (recommend) and per movie shard (similar movies).

The flow calls :func:`recommend_all` and :func:`similar_all`; they submit one
task per shard to the flow's task runner (a local thread pool, or a Dask
cluster, see :mod:`flows.runners`), move the stage's progress artifact as
shards finish, and return the part files in shard order for publishing.

Tasks get paths and row ranges, never models or indexes. This module imports
neither TensorFlow nor ``flows.nightly``, so a Dask worker that unpickles a
shard task loads only FAISS, pyarrow and the scoring code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed

from flows.report import Progress
from flows.runners import io_retry as _io_retry
from tasks import shards as scoring


@task(
    name="recommend-shard",
    task_run_name="recommend-shard-{shard}-of-{shards}",
    tags=["scoring", "recommend"],
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_io_retry,
    cache_policy=NO_CACHE,
)
def recommend_shard_task(
    ratings: str, model_dir: str, out_path: str, k: int, version: str, chunk_size: int, start: int, stop: int, shard: int, shards: int
) -> dict[str, Any]:
    """Top-k of users ``start:stop`` (shard ``shard`` of ``shards``, counted from 1)."""
    logger = get_run_logger()

    def on_chunk(done: int, total: int) -> None:
        logger.info("shard %d/%d: recommended for %d/%d users", shard, shards, done, total)

    return scoring.run_recommend_shard(Path(ratings), Path(model_dir), Path(out_path), k, version, chunk_size, start, stop, on_chunk)


@task(
    name="similar-shard",
    task_run_name="similar-shard-{shard}-of-{shards}",
    tags=["scoring", "similar"],
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_io_retry,
    cache_policy=NO_CACHE,
)
def similar_shard_task(
    model_dir: str, out_path: str, k: int, chunk_size: int, start: int, stop: int, shard: int, shards: int
) -> dict[str, Any]:
    """The k nearest other movies of movies ``start:stop`` (shard ``shard`` of ``shards``, counted from 1)."""
    out = scoring.run_similar_shard(Path(model_dir), Path(out_path), k, chunk_size, start, stop)
    get_run_logger().info("shard %d/%d: %d similar-movie rows for %d movies", shard, shards, out["rows"], out["movies"])
    return out


def _gather(futures: list[PrefectFuture[dict[str, Any]]], progress: Progress, noun: str, total: int) -> list[dict[str, Any]]:
    """Results in submission (shard) order; progress moves as shards finish, in any order."""
    position = {future: i for i, future in enumerate(futures)}
    results: list[dict[str, Any] | None] = [None] * len(futures)
    done = 0
    for future in as_completed(futures):
        out = future.result()  # raises the shard's error; the flow names the stage
        results[position[future]] = out
        done += int(out.get(noun, 0))
        finished = sum(r is not None for r in results)
        progress.update(done / max(1, total), f"{finished} of {len(futures)} shards, {done:,} of {total:,} {noun}")
    return [r for r in results if r is not None]


def recommend_all(ratings: str, model_dir: str, out_dir: str, k: int, version: str, chunk_size: int, shard_size: int) -> dict[str, Any]:
    """Submit one recommend task per shard of ``shard_size`` users; the parts in shard order and their totals."""
    n = scoring.count_rows(Path(model_dir))["users"]
    bounds = scoring.shard_bounds(n, shard_size)
    progress = Progress("towerflow-recommend-progress", f"recommend: {len(bounds)} shards of up to {shard_size:,} users")
    futures = [
        recommend_shard_task.submit(
            ratings, model_dir, str(Path(out_dir) / f"part-{i:05d}.parquet"), k, version, chunk_size, start, stop, i + 1, len(bounds)
        )
        for i, (start, stop) in enumerate(bounds)
    ]
    results = _gather(futures, progress, "users", n)
    hist = np.sum([r["score_hist"] for r in results], axis=0)
    return {
        "parts": [r["path"] for r in results],
        "rows": sum(r["rows"] for r in results),
        "users": sum(r["users"] for r in results),
        "score_hist": [int(c) for c in hist],
    }


def similar_all(model_dir: str, out_dir: str, k: int, chunk_size: int, shard_size: int) -> dict[str, Any]:
    """Submit one similar-movies task per shard of ``shard_size`` movies; the parts in shard order."""
    n = scoring.count_rows(Path(model_dir))["movies"]
    bounds = scoring.shard_bounds(n, shard_size)
    progress = Progress("towerflow-similar-progress", f"similar movies: {len(bounds)} shards of up to {shard_size:,} movies")
    futures = [
        similar_shard_task.submit(model_dir, str(Path(out_dir) / f"part-{i:05d}.parquet"), k, chunk_size, start, stop, i + 1, len(bounds))
        for i, (start, stop) in enumerate(bounds)
    ]
    results = _gather(futures, progress, "movies", n)
    return {"parts": [r["path"] for r in results], "rows": sum(r["rows"] for r in results), "movies": n}
