"""What every night leaves behind, whatever its outcome: its history row, its events, the history
artifact.

A published night calls :func:`published`; a refused or failed one :func:`failed` (from the flow's
exception path, before the exception goes on to fail the flow run). Both write the night's row
(:mod:`tasks.store.nights`), emit its events (:mod:`flows.events`) and refresh the
``towerflow-history`` artifact: the last nights side by side with a trend plot, so the Artifacts
page of that key reads as the project's health over time. Each step is best effort: nothing here may
hide the night's own outcome.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from flows import events
from tasks.errors import root_cause
from tasks.store.layout import Layout
from tasks.store.nights import night_from, read_nights, record

HISTORY_KEY = "towerflow-history"
HISTORY_NIGHTS = 30  # nights shown in the artifact and the report
_log = logging.getLogger("towerflow.outcome")


def published(layout: Layout, latest: dict[str, Any], seconds: float) -> None:
    """Record a published night and emit published (and undecided, drifted) events."""
    run_date = dt.date.fromisoformat(latest["run_date"])
    _record(layout, lambda: night_from(run_date, "published", seconds, latest))
    body = events.payload(latest)
    events.emit("published", layout.data_dir, body)
    verdict = (latest.get("gate") or {}).get("verdict")
    if verdict in ("undecided", "refused"):  # refused here: published anyway, under --no-gate
        events.emit(verdict, layout.data_dir, body)
    if (latest.get("drift") or {}).get("drifted"):
        events.emit("drifted", layout.data_dir, body)
    history_artifact(layout)


def failed(
    layout: Layout, run_date: dt.date, exc: BaseException, known: dict[str, Any], seconds: float
) -> None:
    """Record a refused or failed night (``known``: what it measured, in latest.json's shape) and
    emit its event.

    A run refused because another one holds the data directory records nothing: that night is the
    other run's.
    """
    from flows.lock import LockedError
    from tasks.evaluation.quality import QualityGateError

    cause = root_cause(exc)
    if isinstance(cause, LockedError):
        return
    refused = isinstance(cause, QualityGateError)
    if isinstance(cause, QualityGateError) and cause.verdict is not None:
        known = {**known, "gate": cause.verdict}
    reason = " ".join(str(exc).split()) or type(exc).__name__
    outcome = "refused" if refused else "failed"
    _record(layout, lambda: night_from(run_date, outcome, seconds, known, reason=reason))
    events.emit(
        outcome,
        layout.data_dir,
        events.payload({"run_date": run_date.isoformat(), **known}, reason=reason),
    )
    history_artifact(layout)


def push_quietly(store_uri: str, layout: Layout) -> None:
    """After a failed night on a store: its history row (and rejects) to the store; a failure here
    is only logged.
    """
    from tasks.store import mirror
    from tasks.store.remote import ObjectStore

    try:
        mirror.push_extras(ObjectStore(store_uri), layout)
    except Exception as exc:
        _log.warning("history of the failed night not copied to %s: %s", store_uri, exc)


def _record(layout: Layout, make: Any) -> None:
    try:
        record(layout, make())
    except Exception as exc:
        _log.warning("night not recorded in %s: %s", layout.history_dir, exc)


def history_markdown(nights: pd.DataFrame, plot: Path | None, embed: bool) -> str:
    """The last nights side by side (newest first) and the trend plot, as markdown."""
    lines = ["## The last nights", ""]
    if nights.empty:
        return "\n".join([*lines, "No night recorded yet.", ""])
    lines += [
        "| finished (UTC) | run date | outcome | gate | NDCG@k [95% interval] | most-popular "
        "| RMSE | coverage | users | drift | model |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]

    def num(value: Any, fmt: str = ".4f") -> str:
        return "" if value is None or pd.isna(value) else f"{value:{fmt}}"

    def text(value: Any) -> str:  # a null string column reads back as None or NaN
        return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)

    for row in nights.iloc[::-1].to_dict("records"):
        ndcg = (
            f"{num(row['ndcg'])} [{num(row['ndcg_low'])}, {num(row['ndcg_high'])}]"
            if not pd.isna(row["ndcg"])
            else ""
        )
        lines.append(
            f"| {row['finished_at']} | {row['run_date']} | {row['outcome']} | "
            f"{text(row['verdict'])} | {ndcg} | "
            f"{num(row['most_popular_ndcg'])} | {num(row['rmse'], '.3f')} | "
            f"{num(row['coverage'], '.3f')} | {num(row['users'], ',.0f')} | "
            f"{num(row['drift'], '.3f')} | "
            f"{'`' + text(row['model_version']) + '`' if text(row['model_version']) else ''} "
            "|"
        )
    failures = nights[nights["outcome"] != "published"]
    if len(failures):
        last = failures.iloc[-1]
        lines += [
            "",
            f"Last night not published ({last['run_date']}, {last['outcome']}): {last['reason']}",
        ]
    if plot is not None:
        image = (
            f"data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode('ascii')}"
            if embed
            else plot.name
        )
        lines += ["", f"![NDCG@k, most-popular and drift over the last nights]({image})"]
    return "\n".join([*lines, ""])


def trend_path(layout: Layout) -> Path:
    """Where the trend plot of the last nights is kept (redrawn whenever a night is recorded)."""
    return layout.outputs / "reports" / "history-trend.png"


def history_plot(layout: Layout, nights: pd.DataFrame) -> Path | None:
    """The trend plot of ``nights`` beside the outputs (None if it cannot be drawn)."""
    if nights.empty:
        return None
    try:
        from tasks.plots import history_trend

        return history_trend(nights, trend_path(layout))
    except Exception as exc:  # e.g. matplotlib missing
        _log.warning("history plot not drawn: %s", exc)
        return None


def history_artifact(layout: Layout) -> None:
    """The keyed ``towerflow-history`` markdown artifact of the last nights."""
    try:
        from prefect.artifacts import create_markdown_artifact

        nights = read_nights(layout, last=HISTORY_NIGHTS)
        text = history_markdown(nights, history_plot(layout, nights), embed=True)
        create_markdown_artifact(
            text,
            key=HISTORY_KEY,
            description=f"towerflow nights in {layout.data_dir}: the last {len(nights)}",
        )
    except Exception as exc:
        _log.warning("history artifact not updated: %s", exc)
