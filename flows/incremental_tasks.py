"""Prefect tasks of incremental nights: ledger ingest and the warm-start source.

The logic is in tasks/ingestion/incremental.py and tasks/modeling/warmstart.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.runners import IO_RETRY
from tasks.ingestion import incremental
from tasks.ingestion.incremental import is_incremental
from tasks.modeling import warmstart
from tasks.stage_results import Inputs, LedgerIngested

__all__ = ["ingest_all", "ingest_file_task", "is_incremental", "single", "warm_source_task"]


def single(ratings: str | list[str]) -> str:
    """The one ratings file of a single-file night (given once, as a string or a list of one)."""
    return str(Path(ratings[0] if isinstance(ratings, list) else ratings).resolve())


@task(
    name="ingest-file",
    task_run_name="ingest-{name}",
    tags=["ingest"],
    cache_policy=NO_CACHE,
    **IO_RETRY,
)
def ingest_file_task(
    src: str, movies: str, part: str, rejects: str, max_reject_share: float, name: str
) -> dict[str, Any]:
    """One new ratings file into its own part of the store (one task per file, on the flow's task
    runner).
    """
    return incremental.ingest_part(
        Path(src), Path(movies), Path(part), Path(rejects), max_reject_share
    )


def ingest_all(
    ratings: str | list[str], movies: str, data_dir: str, run_date: dt.date, max_reject_share: float
) -> LedgerIngested:
    """Ledger ingest from the flow: the new files are ingested as parallel tasks, the ledger and
    store updated after.
    """

    def run_files(jobs: list[dict[str, str]]) -> list[dict[str, Any]]:
        futures = [
            ingest_file_task.submit(
                j["src"], movies, j["part"], j["rejects"], max_reject_share, Path(j["src"]).name
            )
            for j in jobs
        ]
        return [f.result() for f in futures]

    out = incremental.run_incremental_ingest(
        ratings, Path(movies), Path(data_dir), run_date, max_reject_share, run_files
    )
    stats = out["stats"]
    get_run_logger().info(
        "ledger: %d new file(s), %d already ingested (skipped), %d ratings in total; %s",
        stats["files_new"], stats["files_skipped"], stats["rows_total"], json.dumps(stats),
    )  # fmt: skip
    files = [str(p) for p in incremental.expand(ratings)]
    return LedgerIngested(
        ratings=out["ratings"],
        movies=out["movies"],
        stats=stats,
        input_hash=out["input_hash"],
        inputs=Inputs(ratings=files, movies=movies),
    )


@task(name="warm-start-source", cache_policy=NO_CACHE)
def warm_source_task(
    data_dir: str, feature_dir: str, config: dict[str, Any]
) -> dict[str, str] | None:
    warm, note = warmstart.source(Path(data_dir), Path(feature_dir), config)
    get_run_logger().info("warm start: %s", note)
    return warm
