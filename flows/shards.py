"""The sharded stages: one Prefect task run per user shard (recommend) and per movie shard (similar movies).

The flow calls :func:`recommend_all` and :func:`similar_all`; they submit one
task per shard to the flow's task runner (a local thread pool, or a Dask
cluster, see :mod:`flows.runners`), move the stage's progress artifact as
shards finish, and return the part files in shard order for publishing.

Tasks get paths and row ranges, never models or indexes. This module imports
neither TensorFlow nor ``flows.nightly``, so a Dask worker that unpickles a
shard task loads only FAISS, pyarrow and the scoring code.

Each shard is a resumable stage (:func:`flows.caching.stage_task`, results in
``work/.results``): a night that crashed half-way through scoring, or after it,
re-runs only the shards whose part file is missing or changed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prefect import Task, get_run_logger
from prefect.futures import PrefectFuture, as_completed

from flows.caching import RESULTS_DIR, stage_task
from flows.report import Progress
from flows.runners import IO_RETRY
from tasks.serving import shards as scoring
from tasks.stage_results import Recommended, SimilarScored


def _shard_task(kind: str) -> Callable[[Callable[..., dict[str, Any]]], Task[Any, Any]]:
    """A resumable shard stage writing ``out_path``, retried on I/O errors only."""
    return stage_task(
        f"{kind}-shard",
        outputs=("out_path",),
        task_run_name=f"{kind}-shard-{{shard}}-of-{{shards}}",
        tags=["scoring", kind],
        **IO_RETRY,
    )


@_shard_task("recommend")
def recommend_shard_task(
    ratings: str,
    model_dir: str,
    out_path: str,
    k: int,
    version: str,
    chunk_size: int,
    start: int,
    stop: int,
    shard: int,
    shards: int,
    rules: dict[str, Any] | None = None,
    movies: str | None = None,
) -> dict[str, Any]:
    """Top-k of users ``start:stop`` (shard ``shard`` of ``shards``, counted from 1), within the ``rules``."""
    logger = get_run_logger()

    def on_chunk(done: int, total: int) -> None:
        logger.info("shard %d/%d: recommended for %d/%d users", shard, shards, done, total)

    return scoring.run_recommend_shard(
        Path(ratings),
        Path(model_dir),
        Path(out_path),
        k,
        version,
        chunk_size,
        start,
        stop,
        on_chunk,
        rules,
        None if movies is None else Path(movies),
    )


@_shard_task("similar")
def similar_shard_task(
    model_dir: str,
    out_path: str,
    k: int,
    chunk_size: int,
    start: int,
    stop: int,
    shard: int,
    shards: int,
    rules: dict[str, Any] | None = None,
    movies: str | None = None,
) -> dict[str, Any]:
    """The k nearest other movies of movies ``start:stop`` (shard ``shard`` of ``shards``, counted from 1)."""
    movies_path = None if movies is None else Path(movies)
    out = scoring.run_similar_shard(Path(model_dir), Path(out_path), k, chunk_size, start, stop, rules, movies_path)
    get_run_logger().info("shard %d/%d: %d similar-movie rows for %d movies", shard, shards, out["rows"], out["movies"])
    return out


def _in(task: Any, work: str) -> Any:
    """The shard task with its results kept in the run's work directory (what makes it resumable)."""
    return task.with_options(result_storage=Path(work) / RESULTS_DIR)


def _gather(futures: list[PrefectFuture[dict[str, Any]]], progress: Progress, noun: str, total: int) -> tuple[list[dict[str, Any]], int]:
    """Results in submission (shard) order and how many came from the cache; progress moves as shards finish."""
    position = {future: i for i, future in enumerate(futures)}
    results: list[dict[str, Any] | None] = [None] * len(futures)
    done = reused = 0
    for future in as_completed(futures):
        out = future.result()  # raises the shard's error; the flow names the stage
        results[position[future]] = out
        reused += future.state.name == "Cached"
        done += int(out.get(noun, 0))
        finished = sum(r is not None for r in results)
        progress.update(done / max(1, total), f"{finished} of {len(futures)} shards, {done:,} of {total:,} {noun}")
    if reused:
        get_run_logger().info("%d of %d shards reused from an interrupted run (their part files verified)", reused, len(futures))
    return [r for r in results if r is not None], reused


def recommend_all(
    ratings: str,
    model_dir: str,
    out_dir: str,
    k: int,
    version: str,
    chunk_size: int,
    shard_size: int,
    work: str,
    rules: dict[str, Any] | None = None,
    movies: str | None = None,
) -> Recommended:
    """Submit one recommend task per shard of ``shard_size`` users; the parts in shard order and their totals.

    ``rules`` (the night's business rules, a document) and the catalog ``movies`` travel to every shard.
    Shard results are kept in ``work/.results``; ``shards_reused`` counts those a previous attempt had finished.
    """
    n = scoring.count_rows(Path(model_dir))["users"]
    bounds = scoring.shard_bounds(n, shard_size)
    progress = Progress("towerflow-recommend-progress", f"recommend: {len(bounds)} shards of up to {shard_size:,} users")
    futures = [
        _in(recommend_shard_task, work).submit(
            ratings,
            model_dir,
            str(Path(out_dir) / f"part-{i:05d}.parquet"),
            k,
            version,
            chunk_size,
            start,
            stop,
            i + 1,
            len(bounds),
            rules,
            movies,
        )
        for i, (start, stop) in enumerate(bounds)
    ]
    results, reused = _gather(futures, progress, "users", n)
    hist = np.sum([r["score_hist"] for r in results], axis=0)
    return Recommended(
        parts=[r["path"] for r in results],
        shards=len(results),
        shards_reused=reused,
        rows=sum(r["rows"] for r in results),
        users=sum(r["users"] for r in results),
        score_hist=[int(c) for c in hist],
    )


def similar_all(
    model_dir: str,
    out_dir: str,
    k: int,
    chunk_size: int,
    shard_size: int,
    work: str,
    rules: dict[str, Any] | None = None,
    movies: str | None = None,
) -> SimilarScored:
    """Submit one similar-movies task per shard of ``shard_size`` movies; the parts in shard order (results in ``work``)."""
    n = scoring.count_rows(Path(model_dir))["movies"]
    bounds = scoring.shard_bounds(n, shard_size)
    progress = Progress("towerflow-similar-progress", f"similar movies: {len(bounds)} shards of up to {shard_size:,} movies")
    shard = _in(similar_shard_task, work)
    futures = [
        shard.submit(
            model_dir,
            str(Path(out_dir) / f"part-{i:05d}.parquet"),
            k,
            chunk_size,
            start,
            stop,
            i + 1,
            len(bounds),
            rules,
            movies,
        )
        for i, (start, stop) in enumerate(bounds)
    ]
    results, reused = _gather(futures, progress, "movies", n)
    parts = [r["path"] for r in results]
    return SimilarScored(parts=parts, shards=len(results), shards_reused=reused, rows=sum(r["rows"] for r in results), movies=n)
