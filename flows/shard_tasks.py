"""The sharded stages: one Prefect task run per user shard (recommend) and per movie shard (similar
movies).

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
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed

from flows.caching import RESULTS_DIR, stage_task
from flows.report import Progress
from flows.runners import IO_RETRY
from tasks.serving import shards as scoring
from tasks.stage_results import Recommended, SimilarScored
from tasks.store.exchange import Exchange
from tasks.store.layout import MODEL_FILES

# the model files each kind of shard reads (what travels to workers that share no disk with the
# flow)
SIMILAR_FILES = tuple(MODEL_FILES[k] for k in ("index", "index_ids", "movie_embeddings", "serving"))
RECOMMEND_FILES = (*SIMILAR_FILES, MODEL_FILES["user_embeddings"], MODEL_FILES["scalers"])


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
    exchange: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Top-k of users ``start:stop`` (shard ``shard`` of ``shards``, counted from 1), within the
    ``rules``.

    ``exchange`` (store URI, scratch root): the worker shares no disk with the flow; inputs and the
    part travel through the store (:mod:`tasks.store.exchange`).
    """
    logger = get_run_logger()

    def on_chunk(done: int, total: int) -> None:
        logger.info("shard %d/%d: recommended for %d/%d users", shard, shards, done, total)

    ex = Exchange(*exchange) if exchange else None
    local_ratings = ex.local(ratings) if ex else Path(ratings)
    local_model = ex.local_dir(model_dir, RECOMMEND_FILES) if ex else Path(model_dir)
    local_movies = None if movies is None else ex.local(movies) if ex else Path(movies)
    local_out = ex.output(out_path) if ex else Path(out_path)
    out = scoring.run_recommend_shard(
        local_ratings,
        local_model,
        local_out,
        k,
        version,
        chunk_size,
        start,
        stop,
        on_chunk,
        rules,
        local_movies,
    )
    if ex:
        ex.deliver(out_path)
        out["path"] = out_path
    return out


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
    exchange: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The k nearest other movies of movies ``start:stop`` (shard ``shard`` of ``shards``, counted
    from 1).
    """
    ex = Exchange(*exchange) if exchange else None
    movies_path = None if movies is None else ex.local(movies) if ex else Path(movies)
    local_model = ex.local_dir(model_dir, SIMILAR_FILES) if ex else Path(model_dir)
    local_out = ex.output(out_path) if ex else Path(out_path)
    out = scoring.run_similar_shard(
        local_model, local_out, k, chunk_size, start, stop, rules, movies_path
    )
    if ex:
        ex.deliver(out_path)
        out["path"] = out_path
    get_run_logger().info(
        "shard %d/%d: %d similar-movie rows for %d movies",
        shard,
        shards,
        out["rows"],
        out["movies"],
    )
    return out


def _in(task: Any, work: str, exchange: tuple[str, str] | None = None) -> Any:
    """The shard task with its results kept in the run's work directory (what makes it resumable).

    Shards exchanged through the store run again on a rerun: a worker's results are on its own disk.
    """
    if exchange:
        return task.with_options(cache_policy=NO_CACHE, persist_result=False)
    return task.with_options(result_storage=Path(work) / RESULTS_DIR)


def _offer(
    exchange: tuple[str, str] | None, model_dir: str, names: tuple[str, ...], *inputs: str | None
) -> Exchange | None:
    """Flow side: what the shards read, to the store for workers without the flow's disk."""
    if exchange is None:
        return None
    ex = Exchange(*exchange)
    sent = ex.offer(
        [*(Path(model_dir) / n for n in names), *(Path(p) for p in inputs if p is not None)]
    )
    get_run_logger().info("offered %d files to the workers through %s", sent, exchange[0])
    return ex


def _gather(
    futures: list[PrefectFuture[dict[str, Any]]], progress: Progress, noun: str, total: int
) -> tuple[list[dict[str, Any]], int]:
    """Results in submission (shard) order and how many came from the cache; progress moves as
    shards finish.
    """
    position = {future: i for i, future in enumerate(futures)}
    results: list[dict[str, Any] | None] = [None] * len(futures)
    done = reused = 0
    for future in as_completed(futures):
        out = future.result()  # raises the shard's error; the flow names the stage
        results[position[future]] = out
        reused += future.state.name == "Cached"
        done += int(out.get(noun, 0))
        finished = sum(r is not None for r in results)
        progress.update(
            done / max(1, total),
            f"{finished} of {len(futures)} shards, {done:,} of {total:,} {noun}",
        )
    if reused:
        get_run_logger().info(
            "%d of %d shards reused from an interrupted run (their part files verified)",
            reused,
            len(futures),
        )
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
    exchange: tuple[str, str] | None = None,
) -> Recommended:
    """Submit one recommend task per shard of ``shard_size`` users; the parts in shard order and
    their totals.

    ``rules`` (the night's business rules, a document) and the catalog ``movies`` travel to every
    shard. Shard results are kept in ``work/.results``; ``shards_reused`` counts those a previous
    attempt had finished.
    """
    n = scoring.count_rows(Path(model_dir))["users"]
    bounds = scoring.shard_bounds(n, shard_size)
    progress = Progress(
        "towerflow-recommend-progress",
        f"recommend: {len(bounds)} shards of up to {shard_size:,} users",
    )
    ex = _offer(exchange, model_dir, RECOMMEND_FILES, ratings, movies)
    futures = [
        _in(recommend_shard_task, work, exchange).submit(
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
            exchange,
        )
        for i, (start, stop) in enumerate(bounds)
    ]
    results, reused = _gather(futures, progress, "users", n)
    if ex is not None:
        for r in results:
            ex.collect(r["path"])
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
    exchange: tuple[str, str] | None = None,
) -> SimilarScored:
    """Submit one similar-movies task per shard of ``shard_size`` movies; the parts in shard order
    (results in ``work``).
    """
    n = scoring.count_rows(Path(model_dir))["movies"]
    bounds = scoring.shard_bounds(n, shard_size)
    progress = Progress(
        "towerflow-similar-progress",
        f"similar movies: {len(bounds)} shards of up to {shard_size:,} movies",
    )
    ex = _offer(exchange, model_dir, SIMILAR_FILES, movies)
    shard = _in(similar_shard_task, work, exchange)
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
            exchange,
        )
        for i, (start, stop) in enumerate(bounds)
    ]
    results, reused = _gather(futures, progress, "movies", n)
    if ex is not None:
        for r in results:
            ex.collect(r["path"])
    parts = [r["path"] for r in results]
    return SimilarScored(
        parts=parts,
        shards=len(results),
        shards_reused=reused,
        rows=sum(r["rows"] for r in results),
        movies=n,
    )
