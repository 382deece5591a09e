"""``towerflow serve``: the nightly flow as a Prefect deployment on a cron schedule, run by this
process.

It registers the deployment ``towerflow-nightly/<name>`` with the Prefect
server at ``PREFECT_API_URL``, then polls for its scheduled and UI-triggered
runs and starts each in a fresh ``python -m prefect.engine`` process that
imports ``flows.nightly.nightly``. (Not ``nightly.serve()``: that ships the
flow object to the run process by value, and pydantic then cannot resolve the
``NightlyParams`` annotation; every run fails parameter validation.) Settings
that matter for operations:

- ``pause_on_shutdown=False``: stopping or restarting the service (systemd)
  leaves the schedule active; runs due while it is down show as *Late*;
- ``limit=1`` (this runner) and ``concurrency_limit=1`` (the deployment's
  limit, also for runs started elsewhere): at most one run at a time;
- the flow parameters (``NightlyParams``) are the deployment's defaults, with
  paths made absolute; a run from the UI can change them.

Teams with a work pool and workers deploy ``prefect.yaml`` instead (see README, Operations).
"""

from __future__ import annotations

import argparse
import os
import zoneinfo
from typing import Any

from tasks.errors import ConfigError, TowerflowError

DEFAULT_CRON = "0 2 * * *"
TIMEZONE_ENV = "TOWERFLOW_TIMEZONE"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The serve-only options (the flow parameters come from the ``run`` options)."""
    p.add_argument(
        "--cron",
        default=DEFAULT_CRON,
        help=f"when to run, a cron expression (default: {DEFAULT_CRON!r}, 02:00)",
    )
    p.add_argument(
        "--timezone",
        default=os.environ.get(TIMEZONE_ENV, "UTC"),
        help=f"IANA time zone of --cron (default: ${TIMEZONE_ENV} or UTC)",
    )
    p.add_argument(
        "--name",
        default="nightly",
        help="deployment name (default: nightly; the flow is towerflow-nightly)",
    )


def schedule(cron: str, timezone: str) -> Any:
    """A Prefect cron schedule, with a clear error for a bad expression or time zone."""
    from prefect.schedules import Cron

    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"--timezone {timezone!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)"
        ) from None
    try:
        return Cron(cron, timezone=timezone)
    except ValueError as exc:
        raise ConfigError(f"--cron {cron!r}: {exc}") from None


def serve(
    params: Any, cron: str, timezone: str, name: str, dask_address: str | None, workers: int | None
) -> None:
    """Serve the nightly flow until interrupted (SIGINT/SIGTERM); needs a Prefect server."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    from flows import runners

    if not PREFECT_API_URL.value():
        raise TowerflowError(
            "serve needs a Prefect server: start `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api "
            "(the ephemeral API of `towerflow run` cannot schedule)"
        )
    when = schedule(cron, timezone)
    api = str(PREFECT_API_URL.value()).rstrip("/")
    try:
        httpx.get(f"{api}/health", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise TowerflowError(
            f"cannot reach the Prefect API at {api} ({exc}); is `prefect server start` running?"
        ) from None
    # Each run starts in a fresh `python -m prefect.engine` that imports flows.nightly, whose task
    # runner is read from the environment when it is imported (flows/runners.py).
    if dask_address:
        os.environ[runners.DASK_ADDRESS_ENV] = dask_address
    if workers is not None:
        os.environ[runners.WORKERS_ENV] = str(workers)
    runner = runners.task_runner(dask_address, workers)  # checks the options now, not at 02:00
    from prefect import serve as serve_deployments
    from prefect.types.entrypoint import EntrypointType

    from flows.nightly import nightly

    params = params.model_copy(update={"data_dir": os.path.abspath(params.data_dir)})
    if params.ratings is not None and params.movies is not None:
        r = params.ratings
        # a drop folder stays a folder
        ratings = [os.path.abspath(x) for x in r] if isinstance(r, list) else os.path.abspath(r)
        params = params.model_copy(
            update={"ratings": ratings, "movies": os.path.abspath(params.movies)}
        )
    deployment: Any = nightly.to_deployment(  # sync call: a RunnerDeployment
        name=name,
        schedules=[when],
        parameters={"params": params.model_dump(mode="json")},
        tags=["towerflow", "nightly"],
        description=(
            "Nightly two-tower recommendations: ingest, train, evaluate, publish (README, "
            "Operations)."
        ),
        concurrency_limit=1,
        # flows.nightly.nightly, importable from the installed package
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    print(
        f"towerflow serve: deployment towerflow-nightly/{name}, cron {cron!r} ({timezone}), "
        f"shards on {runners.describe(runner)}"
    )
    serve_deployments(deployment, pause_on_shutdown=False, limit=1)
