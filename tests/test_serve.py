"""Against a real Prefect server on 127.0.0.1: ``towerflow serve`` creates the cron deployment, a
run triggered as the UI does ends Completed with its artifacts, and stopping the service keeps the
schedule; nights leave their events, history and drift behind, and ``towerflow alerts install``
creates automations.

The server is the session's test server (a subprocess with its own SQLite database); ``towerflow
serve`` and the nights are subprocesses with their own environment (their own PREFECT_HOME,
PREFECT_API_URL pointing at it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.flow
BIN = Path(sys.executable).parent
ARTIFACT_KEYS = {
    "towerflow-report",
    "towerflow-metrics",
    "towerflow-ingest",
    "towerflow-train-progress",
    "towerflow-refit-progress",
    "towerflow-recommend-progress",
    "towerflow-similar-progress",
    "towerflow-history",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        TOWERFLOW_THREADS="2",
        **extra,
    )
    return env


def _wait(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    """Poll ``probe`` until it returns something truthy; errors while polling (server busy) are
    retried.
    """
    deadline, error = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (httpx.HTTPError, AssertionError) as exc:
            value, error = None, exc
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what} (last error: {error})"
    )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM the process group this test started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


@pytest.fixture(scope="module")
def server(prefect_harness: None) -> str:
    """The API URL of the session's Prefect test server (a real server on 127.0.0.1, its own SQLite
    database).
    """
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def _post(api: str, path: str, body: dict[str, Any]) -> Any:
    """POST to the API; a busy server's 503 (SQLite under load) is retried, as Prefect's own client
    does.
    """
    for attempt in range(6):
        response = httpx.post(f"{api}{path}", json=body, timeout=10)
        if response.status_code not in (429, 503) or attempt == 5:
            break
        time.sleep(0.5 * 2**attempt)
    if response.is_error:
        raise AssertionError(f"POST {path}: {response.status_code} {response.text[:500]}")
    return response.json()


def test_serve_schedules_and_a_triggered_run_completes_with_artifacts(
    server: str, tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    ratings, movies = tiny_data
    data_dir = tmp_path / "data"
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen(
        [
            str(BIN / "towerflow"), "serve", "--ratings", str(ratings), "--movies", str(movies),
            "--data-dir", str(data_dir), "--k", "5", "--max-epochs", "2", "--no-gate",
            "--no-loss-choice", "--shard-size", "50", "--timezone", "Europe/Berlin",
        ],
        env=_env(tmp_path / "home", PREFECT_API_URL=server, PREFECT_RUNNER_POLL_FREQUENCY="1"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deployment = _wait(
            "the served deployment", 90, lambda: _post(server, "/deployments/filter", {})
        )[0]
        assert (deployment["name"], deployment["paused"]) == ("nightly", False)
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
        assert (
            deployment["schedules"][0]["schedule"]["timezone"] == "Europe/Berlin"
            and deployment["schedules"][0]["active"]
        )
        assert deployment["global_concurrency_limit"]["limit"] == 1
        assert deployment["parameters"]["params"]["data_dir"] == str(data_dir)

        # what the UI's "Quick run" does: a flow run of the deployment, picked up by the serve
        # process
        # a retried POST makes one run
        body = {"state": {"type": "SCHEDULED"}, "idempotency_key": f"test-{deployment['id']}"}
        run = _post(server, f"/deployments/{deployment['id']}/create_flow_run", body)

        def finished() -> Any:
            state = httpx.get(f"{server}/flow_runs/{run['id']}", timeout=5).json()["state"]
            return (
                state if state["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None
            )

        state = _wait("the triggered flow run", 240, finished)
        assert state["type"] == "COMPLETED", state

        artifacts = _post(
            server, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
        )
        by_key = {a["key"]: a for a in artifacts}
        assert set(by_key) >= ARTIFACT_KEYS
        assert all(by_key[k]["data"] == 100 for k in ARTIFACT_KEYS if k.endswith("-progress"))
        report = by_key["towerflow-report"]["data"]
        # loss, scores, history
        assert (
            report.count("](data:image/png;base64,") == 3 and "| recommendations | 600 |" in report
        )

        # the run's task runs as its event feed shows them (the session's server records no task-run
        # rows)
        of_run = {
            "related": {"id": [f"prefect.flow-run.{run['id']}"]},
            "event": {"name": ["prefect.task-run.Completed"]},
        }
        shards = {"recommend-shard-1-of-3", "recommend-shard-3-of-3", "similar-shard-4-of-4"}

        # events are persisted in batches: wait for the shards'
        def completed_tasks() -> set[str] | None:
            events = _post(server, "/events/filter", {"filter": of_run, "limit": 50})["events"]
            names = {e["resource"]["prefect.resource.name"] for e in events}
            return names if shards <= names else None

        assert "train" in {
            name.rsplit("-", 1)[0]
            for name in _wait("the shards' task-run events", 60, completed_tasks)
        }
        logs = _post(
            server, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200}
        )
        # TF epochs reach the run's logs
        assert any("validate epoch 2/2" in entry["message"] for entry in logs)

        latest = json.loads((data_dir / "outputs" / "latest.json").read_text())
        reports = data_dir / "outputs" / "reports" / f"run_date={latest['run_date']}"
        assert {p.suffix for p in reports.iterdir()} == {".md", ".png"}
    finally:
        _stop(serve)
        log.close()
        # shown if the test failed
        print((tmp_path / "serve.log").read_text(errors="replace")[-4000:])
    # pause_on_shutdown=False: the schedule survives the service stopping
    after = httpx.get(f"{server}/deployments/{deployment['id']}", timeout=5).json()
    assert after["paused"] is False and after["schedules"][0]["active"] is True


def test_nights_leave_events_history_drift_and_alerts_install(
    server: str,
    published: dict[str, Any],
    tiny_data: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The session's published night, a second night and a failed one in a copy of its data
    directory: their events with payloads, the history artifact, the drift; then alerts, twice.

    The nights run in this process (their events go to the session's server like a subprocess's
    would; tests/test_faults.py runs the command as a subprocess).
    """
    from flows.cli import main

    ratings, movies = tiny_data
    data_dir = tmp_path / "data"
    shutil.copytree(published["dir"], data_dir)
    run = ["run", "--ratings", str(ratings), "--movies", str(movies), "--data-dir", str(data_dir)]
    # the published night's options, another night and another seed: another model, lists that
    # moved
    night = [*published["args"], "--run-date", "2026-02-02", "--seed", "2"]
    assert main([*run, *night]) == 0, capsys.readouterr().err[-3000:]
    latest = json.loads((data_dir / "outputs" / "latest.json").read_text())
    versus = latest["drift"]["versus_published"]
    assert (
        versus["users_compared"] == 120
        and 0.0 < versus["drift"] <= 1.0
        and 0.0 < versus["changed_share"] <= 1.0
    )
    assert {"coverage", "novelty", "diversity", "personalization"} <= set(latest["drift"]["lists"])
    bad = tmp_path / "bad.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,four,11\n")
    capsys.readouterr()
    code = main(
        [
            "run",
            "--ratings",
            str(bad),
            "--movies",
            str(movies),
            "--data-dir",
            str(data_dir),
            "--run-date",
            "2026-02-03",
        ]
    )
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()
    assert (
        code == 1
        and err[-1].startswith("towerflow run failed: stage ingest failed:")
        and "'four'" in err[-1]
    )
    assert "Traceback" not in stderr  # an expected failure: one line, no traceback

    def towerflow_events() -> Any:
        ours = {
            "event": {"prefix": ["towerflow."]},
            "resource": {"id": [f"towerflow.data-dir.{data_dir.resolve()}"]},
        }
        found = _post(server, "/events/filter", {"filter": ours, "limit": 50})["events"]
        # the events client sends in the background: wait for the last night's
        names = [e["event"] for e in found]
        return (
            found
            if "towerflow.night.published" in names and "towerflow.night.failed" in names
            else None
        )

    found = _wait("the nights' events", 60, towerflow_events)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for event in found:
        by_name.setdefault(event["event"], []).append(event)
    assert (
        len(by_name["towerflow.night.published"]) == 1
        and len(by_name["towerflow.night.failed"]) == 1
    )
    event = by_name["towerflow.night.published"][0]
    assert event["resource"]["prefect.resource.id"] == f"towerflow.data-dir.{data_dir.resolve()}"
    assert event["payload"]["run_date"] == "2026-02-02"
    assert event["payload"]["model_version"] == latest["model_version"]
    assert (
        event["payload"]["metrics"]["two-tower"]["users"] == latest["metrics"]["two-tower"]["users"]
    )
    assert "stage ingest failed" in by_name["towerflow.night.failed"][0]["payload"]["reason"]

    history = _post(
        server,
        "/artifacts/filter",
        {"artifacts": {"key": {"any_": ["towerflow-history"]}}, "sort": "CREATED_DESC"},
    )
    # oldest first
    history = [a for a in reversed(history) if str(data_dir.resolve()) in a["description"]]
    assert len(history) == 2  # one version per night in this directory
    # the nights come from the data directory: the copied one's too
    assert (
        "| 2026-01-02 | published |" in history[0]["data"]
        and "| 2026-02-02 | published |" in history[0]["data"]
    )
    assert "Last night not published (2026-02-03, failed)" in history[1]["data"]

    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    assert main(["alerts", "install"]) == 1
    assert "create a notification block first" in capsys.readouterr().err.strip().splitlines()[-1]
    CustomWebhookNotificationBlock(name="t", url="http://127.0.0.1:9/hook").save("towerflow-test")
    for expected in ("created", "updated"):  # idempotent: the second install updates the same four
        assert main(["alerts", "install", "--block", "towerflow-test"]) == 0
        assert capsys.readouterr().out.count(expected) == 4
    automations = _post(server, "/automations/filter", {})
    triggers = {
        a["name"]: a["trigger"]["expect"] for a in automations if a["name"].startswith("towerflow:")
    }
    assert triggers == {
        "towerflow: night failed": ["towerflow.night.failed"],
        "towerflow: night refused by the quality gate": ["towerflow.night.gate-refused"],
        "towerflow: recommendations drifted": ["towerflow.night.drifted"],
        "towerflow: night crashed": ["prefect.flow-run.Crashed"],
    }
    assert all(
        a["actions"][0]["type"] == "send-notification"
        for a in automations
        if a["name"].startswith("towerflow:")
    )
