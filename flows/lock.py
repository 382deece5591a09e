"""Two runs never write one data directory at once: a file lock always, a Prefect concurrency limit
with a server.

The file lock is an exclusive, non-blocking ``flock`` on ``DIR/.towerflow.lock``:
a second run on the same machine refuses at once, naming the run that holds
it. The kernel drops the lock when its process exits, however it exits
(``SIGKILL`` included), so a crashed run never leaves a stale lock. The lock
file holds one line of JSON about the holder (pid, host, start time, Prefect
lease id).

Where a Prefect server is used (``PREFECT_API_URL`` set), the run also takes
the one slot of the global concurrency limit ``towerflow-data-<hash of DIR>``
(created on first use) with Prefect's own ``concurrency()``: that covers runs
on other machines sharing the directory, and shows in the UI (with Prefect's
acquired/released events). The slot is a lease of :data:`LEASE_SECONDS`, held
by the flow run and renewed by Prefect in the background. A run waits up to
:data:`SLOT_WAIT_SECONDS` for the slot, never abandoning a request the server
may still grant (:func:`_take_slot`: Prefect's own timeout would leave a lease
nobody knows holding the slot). A run that dies keeps it until the lease
lapses, except that a run which takes the file lock releases the lease its
predecessor on this host recorded (that process is provably gone: it held the
lock). Prefect does not hand ``concurrency()``'s
caller the lease id, but records each lease it grants on the run's
``ConcurrencyContext`` (so that it can free it if the run is cancelled);
that is where this module reads the id it writes into the lock file. On the
same proof it marks the predecessor's flow run Crashed if the server still
shows it running: a process killed outright cannot report its own end, and
would otherwise stay "Running" in the UI. Without a server (Prefect's
ephemeral API) the file lock alone guards the directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

from tasks.errors import TowerflowError

LEASE_SECONDS = 60.0  # the server's minimum lease
# long enough for the lease of a run that died elsewhere to lapse
SLOT_WAIT_SECONDS = LEASE_SECONDS + 30.0


class LockedError(TowerflowError, RuntimeError):
    """Another towerflow run holds the data directory."""


def limit_name(data_dir: Path) -> str:
    """The Prefect global concurrency limit guarding ``data_dir``."""
    return (
        "towerflow-data-" + hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    )


def _read_holder(fd: int) -> dict[str, Any]:
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    try:
        holder = json.loads(text)
    except ValueError:
        return {"pid": text} if text else {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int, holder: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder, sort_keys=True) + "\n").encode(), 0)


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "pid unknown"
    where = f" on {holder['host']}" if holder.get("host") else ""
    since = f", started {holder['started']}" if holder.get("started") else ""
    return f"pid {holder['pid']}{where}{since}"


@contextlib.contextmanager
def data_dir_lock(path: Path, *, server: bool | None = None) -> Iterator[None]:
    """Hold the data directory of lock file ``path`` or raise :class:`LockedError` saying who holds
    it.

    ``server``: also take the Prefect concurrency slot (default: when ``PREFECT_API_URL`` is set).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"another towerflow run ({_describe(_read_holder(fd))}) is using the data "
                f"directory {path.parent} "
                f"(lock {path}); wait for it to finish, then run again"
            ) from None
        previous = _read_holder(fd)
        me: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        _write_holder(fd, me)
        use_server = _server_in_use() if server is None else server
        with (
            _server_slot(path.parent, previous, me, fd) if use_server else contextlib.nullcontext()
        ):
            yield
    finally:
        os.close(fd)


def _logger() -> Any:
    import logging

    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("towerflow.lock")


def _server_in_use() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def _flow_run_id() -> UUID | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run.id if ctx and ctx.flow_run else None


def _flow_run_holder() -> Any:
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    run_id = _flow_run_id()
    return ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None


def crash_orphan(client: Any, previous: dict[str, Any], me: dict[str, Any]) -> str | None:
    """Mark ``previous``'s flow run Crashed if the server still shows it unfinished; the run's name,
    or ``None``.

    ``previous`` is what the lock file said about its last holder, which died
    holding the lock (a holder that exits normally clears its run id): the
    file lock is ours now, so that process is gone. Only a holder on this host is
    judged; a failure to read or set the state is logged, never raised.
    """
    from prefect.states import Crashed

    run_id = previous.get("flow_run_id")
    if not run_id or previous.get("host") != me["host"]:
        return None
    try:
        run = client.read_flow_run(UUID(str(run_id)))
        if run.state is None or run.state.is_final():
            return None
        message = (
            f"the process running it ({_describe(previous)}) ended without reporting a final state "
            f"(killed, or its machine stopped); found by the next run on {me['host']} when "
            "it took the data-directory lock"
        )
        client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    except Exception as exc:
        _logger().warning("could not mark the orphaned flow run %s Crashed: %s", run_id, exc)
        return None
    return str(run.name)


@contextlib.contextmanager
def _server_slot(
    data_dir: Path, previous: dict[str, Any], me: dict[str, Any], fd: int
) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.concurrency.context import ConcurrencyContext
    from prefect.exceptions import ObjectAlreadyExists

    name = limit_name(data_dir)
    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):  # two first runs may race to create it
            client.upsert_global_concurrency_limit_by_name(name, 1)
        stale = previous.get("lease_id")
        if stale and previous.get("host") == me["host"]:
            # Its run held the file lock, which is ours now: that process is gone, its lease is
            # garbage.
            with contextlib.suppress(Exception):
                client.release_concurrency_slots_with_lease(UUID(str(stale)))
        orphan = crash_orphan(client, previous, me)
        if orphan:
            _logger().warning(
                "marked flow run %r Crashed: it died holding the data directory %s",
                orphan,
                data_dir,
            )
    try:
        with contextlib.ExitStack() as stack:
            # a flow run has one
            context = ConcurrencyContext.get() or stack.enter_context(ConcurrencyContext())
            before = set(context.cleanup_lease_ids)
            if not _take_slot(stack, name):
                raise LockedError(
                    f"the Prefect concurrency limit {name!r} of the data directory "
                    f"{data_dir} is held by another run "
                    f"(on another machine, or one that died less than {LEASE_SECONDS:.0f} s "
                    f"ago); waited {SLOT_WAIT_SECONDS:.0f} s. "
                    "Wait for it to finish, then run again"
                )
            _record_lease(
                fd, me, name, [lease for lease in context.cleanup_lease_ids if lease not in before]
            )
            yield
    finally:
        _write_holder(fd, me)  # released (or never taken): nothing for the next run to clean up


def _take_slot(stack: contextlib.ExitStack, name: str) -> bool:
    """Enter ``concurrency(name)`` on ``stack`` within :data:`SLOT_WAIT_SECONDS`; ``False`` if
    refused.

    Why not ``concurrency(timeout_seconds=...)``: Prefect's timeout cancels the
    acquisition's HTTP request client-side, wherever it is. A request already sent
    is still served: the server takes the slot and creates a lease whose id no one
    ever reads, so the slot stays taken until the lease lapses (60 s) and the next
    run is refused by a ghost (a flake of tests/test_lock.py on a loaded machine).
    So each attempt is one request (``max_retries=0``) waited for to its answer;
    a refusal (423) is retried here after the server's ``Retry-After``, and the
    deadline is only checked between attempts. Every lease granted is thus the
    caller's, renewed and released by ``concurrency()`` like any other.
    """
    import time

    import httpx
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    deadline = time.monotonic() + SLOT_WAIT_SECONDS
    while True:
        try:
            stack.enter_context(
                concurrency(
                    name,
                    timeout_seconds=None,  # never abandon a request the server may grant
                    max_retries=0,  # a refusal comes back to this loop
                    lease_duration=LEASE_SECONDS,
                    strict=True,
                    holder=_flow_run_holder(),
                    # a missed renewal is logged; the file lock still guards
                    raise_on_lease_renewal_failure=False,
                )
            )
            return True
        except ConcurrencySlotAcquisitionError as exc:
            refusal = exc.__cause__  # Prefect raises it from the HTTP error
            if not isinstance(refusal, httpx.HTTPStatusError):
                raise
            if refusal.response.status_code != httpx.codes.LOCKED:
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            retry_after = float(refusal.response.headers.get("Retry-After", 1.0))
            time.sleep(min(max(retry_after, 0.1), remaining))


def _record_lease(fd: int, me: dict[str, Any], name: str, granted: list[UUID]) -> None:
    """Write the lease ``concurrency()`` was granted into the lock file, for the next run to free if
    this one dies.
    """
    run_id = _flow_run_id()
    holder = {**me, "limit": name, **({"flow_run_id": str(run_id)} if run_id else {})}
    if len(granted) == 1:
        holder["lease_id"] = str(granted[0])
    else:
        # Prefect did not record it where expected: a crash here frees the slot when the lease
        # lapses
        _logger().warning(
            "could not tell the lease of %s (%d new leases); a crash would hold it %.0f s",
            name,
            len(granted),
            LEASE_SECONDS,
        )
    _write_holder(fd, holder)
