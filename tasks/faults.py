"""Deterministic fault injection for the crash tests: ``TOWERFLOW_FAULT=<point>`` kills the run
there.

A point is a name such as ``before:train``, ``after:refit``, ``validate:epoch-2``,
``publish:model-moved`` or ``write:latest.json``. When the variable names the
point the process sends itself ``SIGKILL``: no ``finally`` block, no ``atexit``
handler and no Prefect state hook runs, exactly as when the machine dies.

``TOWERFLOW_FAULT=pause:<point>`` instead holds the run at the point: it
creates the file ``$TOWERFLOW_FAULT_RELEASE.waiting`` and waits (at most
:data:`PAUSE_SECONDS`) until ``$TOWERFLOW_FAULT_RELEASE`` exists, so a test can
act while a run is known to hold the data directory.

``TOWERFLOW_FAULT=bug:<point>`` raises :class:`InjectedBug` there: an error towerflow did not
expect, which must keep its traceback.

Unset (always, outside the tests), :func:`point` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "TOWERFLOW_FAULT"
RELEASE_ENV = "TOWERFLOW_FAULT_RELEASE"
PAUSE_SECONDS = 300.0


class InjectedBug(RuntimeError):
    """Stands for a bug: deliberately not a :class:`tasks.errors.TowerflowError`."""


def armed(name: str) -> bool:
    """True when ``TOWERFLOW_FAULT`` names this point (to kill there)."""
    return os.environ.get(ENV) == name


def kill() -> None:
    """Die at once, as a crash would (flushing nothing)."""
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str) -> None:
    """Kill the process here, or hold it, if ``TOWERFLOW_FAULT`` names this point."""
    fault = os.environ.get(ENV)
    if fault is None:
        return
    if fault == name:
        kill()
    elif fault == f"bug:{name}":
        raise InjectedBug(f"injected bug at {name}")
    elif fault == f"pause:{name}" and os.environ.get(RELEASE_ENV):
        release = Path(os.environ[RELEASE_ENV])
        release.with_name(release.name + ".waiting").touch()
        deadline = time.monotonic() + PAUSE_SECONDS
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
