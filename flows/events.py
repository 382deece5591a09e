"""Prefect events for what a night did, so the UI's Event Feed shows it and automations can act on
it.

Names (:data:`EVENTS`): ``towerflow.night.published``, ``towerflow.night.gate-undecided`` (published
without a verdict), ``towerflow.night.gate-refused``, ``towerflow.night.failed`` and
``towerflow.night.drifted`` (tonight's lists moved from the published ones past
:data:`tasks.evaluation.drift.DRIFT_ALERT`). The resource is the data directory
(``towerflow.data-dir.<absolute path>``); the payload holds the run date, the model version, the
holdout metrics with the users behind them, the gate's verdict, the drift and, on failure, the
reason. A downstream deployment can be triggered on ``towerflow.night.published`` instead of polling
latest.json.

Emitting is best effort: an event that cannot be sent is logged, never fails the night.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

PREFIX = "towerflow.night."
EVENTS = {
    "published": PREFIX + "published",
    "undecided": PREFIX + "gate-undecided",
    "refused": PREFIX + "gate-refused",
    "failed": PREFIX + "failed",
    "drifted": PREFIX + "drifted",
}
RESOURCE_PREFIX = "towerflow.data-dir."


def resource(data_dir: Path) -> dict[str, str]:
    path = str(Path(data_dir).resolve())
    return {
        "prefect.resource.id": RESOURCE_PREFIX + path,
        "prefect.resource.name": path,
        "towerflow.data-dir": path,
    }


def payload(latest_like: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    """The facts an automation or a downstream job needs, from latest.json (or what a failed night
    knew).
    """
    metrics = latest_like.get("metrics") or {}
    gate = latest_like.get("gate") or {}
    out: dict[str, Any] = {
        "run_date": latest_like.get("run_date"),
        "model_version": latest_like.get("model_version"),
        "metrics": {
            method: {
                k: v
                for k, v in values.items()
                if k in ("ndcg", "ndcg_low", "ndcg_high", "rmse", "users")
            }
            for method, values in metrics.items()
        },
        "gate": {k: gate.get(k) for k in ("verdict", "reason", "users")} if gate else None,
        "drift": (latest_like.get("drift") or {}).get("versus_published"),
    }
    if reason is not None:
        out["reason"] = reason
    return out


def emit(kind: str, data_dir: Path, body: dict[str, Any]) -> None:
    """Emit ``towerflow.night.<kind>`` about ``data_dir`` with ``body`` as the payload."""
    from prefect.events import emit_event

    try:
        emit_event(event=EVENTS[kind], resource=resource(data_dir), payload=body)
    except Exception as exc:  # the feed is a view; the night goes on
        logging.getLogger("towerflow.events").warning(
            "event %s not sent: %s", EVENTS.get(kind, kind), exc
        )
