"""Failures that say why in one line, as the last line on stderr.

Why this module: Prefect logs every failed task and flow run with its traceback, and its temporary
server logs ``Stopping temporary server on ...`` when the process exits, after anything towerflow
prints. So:

- :class:`HideExpectedTracebacks` drops the traceback from Prefect's run-log records whose exception
  is expected (:func:`tasks.errors.is_expected`: bad input, a refused model, a locked data
  directory...); a bug keeps its traceback;
- :func:`close_prefect` sends the events and logs still queued, then stops the temporary server if
  this process started one, so its last line comes before the reason;
- :func:`ephemeral_timeout` turns the temporary server's start-up time-out into a reason that says
  what to do.
"""

from __future__ import annotations

import logging

from tasks.errors import TowerflowError, is_expected

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class RunFailed(Exception):
    """A flow run ended with ``error`` (already logged by Prefect); ``is_expected`` and ``reason``
    look through to it.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
        self.__cause__ = error


class HideExpectedTracebacks(logging.Filter):
    """Keep the message of a record whose exception is expected, without its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_expected(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


_FILTER = HideExpectedTracebacks()


def hide_expected_tracebacks() -> None:
    """Install the filter on Prefect's run loggers (idempotent)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def reason(exc: BaseException) -> str:
    """The exception's message on one line (its type if it has none)."""
    exc = exc.error if isinstance(exc, RunFailed) else exc
    return " ".join(str(exc).split()) or type(exc).__name__


def close_prefect() -> None:
    """Flush queued events and logs, then stop the temporary Prefect server this process started (if
    any).
    """
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        EventsWorker.drain_all(timeout=10)
        APILogWorker.drain_all(timeout=10)
        from prefect.settings import PREFECT_API_URL

        # only a server this process started for itself, never a configured one (importing the
        # server's modules alone takes 2.3 s on 2 cores)
        if not PREFECT_API_URL.value():
            from prefect.server.api.server import SubprocessASGIServer

            SubprocessASGIServer().stop()
    except Exception as exc:  # closing is best effort: the reason still goes out
        logging.getLogger("towerflow").debug("closing Prefect: %s", exc)


def ephemeral_timeout(exc: BaseException, seconds: str) -> TowerflowError | None:
    """A towerflow error for Prefect's 'Timed out while attempting to connect to ephemeral Prefect
    API server'.
    """
    if "ephemeral Prefect API server" not in str(exc):
        return None
    return TowerflowError(
        f"the temporary Prefect server did not start within {seconds} s (the machine may be "
        "busy): run again, raise "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start a server (`prefect "
        "server start`) and set PREFECT_API_URL"
    )
