"""Where the sharded stages run: a local thread pool, or a Dask cluster through prefect-dask.

The nightly flow's task runner is chosen when ``flows.nightly`` is imported,
from ``TOWERFLOW_DASK_ADDRESS`` and ``TOWERFLOW_WORKERS``, so a served or
deployed flow picks it up from its environment; ``towerflow run
--dask-address/--workers`` overrides it with ``nightly.with_options``.

Only the shard tasks (recommend, similar movies) are submitted to the runner;
every other stage runs in the flow's own process (training stays on one machine).
"""

from __future__ import annotations

import os
from typing import Any

from tasks.errors import ConfigError, TowerflowError

DASK_ADDRESS_ENV = "TOWERFLOW_DASK_ADDRESS"
WORKERS_ENV = "TOWERFLOW_WORKERS"
DEFAULT_WORKERS = 2


def _workers_from_env() -> int:
    raw = os.environ.get(WORKERS_ENV, "")
    if not raw:
        return DEFAULT_WORKERS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{WORKERS_ENV} must be a positive integer, got {raw!r}")
    return value


def task_runner(dask_address: str | None = None, workers: int | None = None) -> Any:
    """``DaskTaskRunner(address=...)`` if an address is given (or in the environment), else a thread
    pool of ``workers``.
    """
    address = dask_address or os.environ.get(DASK_ADDRESS_ENV) or None
    if address:
        if "://" not in address and ":" not in address:
            raise ConfigError(f"--dask-address must look like tcp://HOST:PORT, got {address!r}")
        try:
            from prefect_dask.task_runners import DaskTaskRunner
        except ImportError:
            raise TowerflowError(
                "--dask-address needs prefect-dask: pip install -c constraints.txt -e '.[dask]'"
            ) from None
        return DaskTaskRunner(address=address)
    from prefect.task_runners import ThreadPoolTaskRunner

    count = workers if workers is not None else _workers_from_env()
    if count < 1:
        raise ConfigError(f"--workers must be >= 1, got {count}")
    return ThreadPoolTaskRunner(max_workers=count)


def describe(runner: Any) -> str:
    """One line for the logs and the report: what runs the shards."""
    address = getattr(runner, "address", None)
    if address:
        return f"the Dask cluster at {address}"
    return f"a local thread pool of {getattr(runner, '_max_workers', '?')} workers"


def current() -> str:
    """:func:`describe` of the running flow's task runner."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return describe(ctx.task_runner if ctx is not None else None)


def on_dask() -> bool:
    """True when the running flow's tasks go to a Dask cluster (whose workers may share no disk with
    it).
    """
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx is not None and type(ctx.task_runner).__name__ == "DaskTaskRunner"


def io_retry(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry only transient I/O errors (a shared file system hiccup), never
    bad input or bugs.
    """
    try:
        state.result()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


# The one retry policy of towerflow's tasks: twice, after 2 then 10 s (jittered), and only on a
# transient I/O error.
IO_RETRY: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": io_retry,
}
