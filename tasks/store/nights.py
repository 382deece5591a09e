"""The record of every night, published, refused, undecided or failed: ``outputs/history/``.

Why its own table: latest.json only knows the night it points to, and a refused or failed night
changes nothing there. Each night writes one small part file (``night-<finished>-<run
date>-<outcome>.parquet``, atomically, schema :data:`tasks.store.schemas.NIGHTS`), never rewriting
another night's, so a crash cannot lose history and two hosts cannot overwrite each other's row.
Read as one table with :func:`read_nights`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from tasks.store import schemas
from tasks.store.layout import Layout
from tasks.store.storage import read_table, write_table

OUTCOMES = ("published", "refused", "failed")


@dataclass(frozen=True)
class Night:
    """One row of the history: what a night did and what it measured (None where it got no
    further).
    """

    run_date: str
    finished_at: str
    outcome: str
    verdict: str | None = None
    reason: str | None = None
    model_version: str | None = None
    users: int | None = None
    ndcg: float | None = None
    ndcg_low: float | None = None
    ndcg_high: float | None = None
    most_popular_ndcg: float | None = None
    rmse: float | None = None
    coverage: float | None = None
    prior_weight: float | None = None
    drift: float | None = None
    changed_share: float | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"night outcome must be one of {OUTCOMES}, got {self.outcome!r}")


def night_from(
    run_date: dt.date,
    outcome: str,
    seconds: float,
    latest_like: dict[str, Any],
    reason: str | None = None,
    version: str | None = None,
) -> Night:
    """A history row from what a night knows, in latest.json's shape (``metrics``, ``gate``,
    ``drift``, ``popularity_prior``).
    """
    metrics = latest_like.get("metrics") or {}
    model, popular = metrics.get("two-tower") or {}, metrics.get("most-popular") or {}
    gate = latest_like.get("gate") or {}
    versus = (latest_like.get("drift") or {}).get("versus_published") or {}
    lists = (latest_like.get("drift") or {}).get("lists") or {}
    users = model.get("users")
    return Night(
        run_date=run_date.isoformat(),
        finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        outcome=outcome,
        verdict=gate.get("verdict"),
        reason=reason or gate.get("reason"),
        model_version=version or latest_like.get("model_version"),
        users=int(users) if users is not None else None,
        ndcg=model.get("ndcg"),
        ndcg_low=model.get("ndcg_low"),
        ndcg_high=model.get("ndcg_high"),
        most_popular_ndcg=popular.get("ndcg"),
        rmse=model.get("rmse"),
        coverage=lists.get("coverage", model.get("coverage")),
        prior_weight=(latest_like.get("popularity_prior") or {}).get("weight"),
        drift=versus.get("drift"),
        changed_share=versus.get("changed_share"),
        seconds=round(seconds, 1),
    )


def record(layout: Layout, night: Night) -> Path:
    """Write ``night`` as its own part file under ``outputs/history/``."""
    stamp = night.finished_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    path = layout.history_dir / f"night-{stamp}-{night.run_date}-{night.outcome}.parquet"
    row = asdict(night)
    table = pa.table(
        {f.name: pa.array([row[f.name]], schemas.NIGHTS.field(f.name).type) for f in fields(Night)},
        schema=schemas.NIGHTS,
    )
    return write_table(path, table, schemas.NIGHTS, "nights")


def read_nights(layout: Layout, last: int | None = None) -> pd.DataFrame:
    """Every recorded night, oldest first (the ``last`` ones only, if given)."""
    parts = (
        sorted(layout.history_dir.glob("night-*.parquet")) if layout.history_dir.exists() else []
    )
    frames = [read_table(p, schemas.NIGHTS, "nights").to_pandas() for p in parts]
    table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=[f.name for f in fields(Night)])
    )
    table = table.sort_values("finished_at", kind="stable").reset_index(drop=True)
    return table.tail(last).reset_index(drop=True) if last is not None else table
