"""One run per data directory: the file lock, and the Prefect concurrency limit where a server is
used.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest

from flows import lock
from flows.lock import LockedError, data_dir_lock


def test_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    path = tmp_path / "data" / ".towerflow.lock"
    with data_dir_lock(path, server=False):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(LockedError) as refused, data_dir_lock(path, server=False):
            pass
        message = str(refused.value)
        assert (
            f"another towerflow run (pid {os.getpid()} on {socket.gethostname()}, started "
            in message
        )
        assert (
            f"is using the data directory {path.parent} (lock {path}); wait for it to "
            "finish, then run again" in message
        )
    with data_dir_lock(path, server=False):  # free again once released
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    path = tmp_path / ".towerflow.lock"
    code = (
        "import sys, time; from pathlib import Path; from flows.lock import data_dir_lock\n"
        "with data_dir_lock(Path(sys.argv[1]), server=False):\n    print('held', "
        "flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with (
            pytest.raises(LockedError, match=f"pid {child.pid} "),
            data_dir_lock(path, server=False),
        ):
            pass
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        with data_dir_lock(path, server=False):  # the kernel dropped the dead process's lock
            pass
    finally:
        if child.poll() is None:
            child.kill()


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_prefect_limit_guards_the_directory_beyond_the_file_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a run on another machine would: another lock file (its own flock), the same directory, the
    same limit.
    """
    monkeypatch.setattr(lock, "SLOT_WAIT_SECONDS", 1.0)
    here, elsewhere = tmp_path / ".towerflow.lock", tmp_path / ".towerflow-other-host.lock"
    with data_dir_lock(here, server=True):
        assert json.loads(here.read_text())["limit"] == lock.limit_name(tmp_path)
        started = time.monotonic()
        expected = (
            f"the Prefect concurrency limit '{lock.limit_name(tmp_path)}' of the data directory"
        )
        with pytest.raises(LockedError, match=expected), data_dir_lock(elsewhere, server=True):
            pass
        assert time.monotonic() - started < 30
    with data_dir_lock(elsewhere, server=True):  # released with the first
        pass


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_the_lease_recorded_for_the_next_run_is_the_one_holding_the_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read from Prefect's ConcurrencyContext, in a flow run (the engine's context) and outside one
    (our own).
    """
    from prefect import flow
    from prefect.client.orchestration import get_client

    monkeypatch.setattr(lock, "SLOT_WAIT_SECONDS", 1.0)
    here, elsewhere = tmp_path / ".towerflow.lock", tmp_path / ".towerflow-other-host.lock"

    def free_the_recorded_lease_then_take_the_slot_elsewhere() -> str:
        with data_dir_lock(here, server=True):
            recorded = json.loads(here.read_text())
            with (
                pytest.raises(LockedError, match="held by another run"),
                data_dir_lock(elsewhere, server=True),
            ):
                pass
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(UUID(recorded["lease_id"]))
            with data_dir_lock(elsewhere, server=True):  # the recorded lease was what held the slot
                pass
            return str(recorded.get("flow_run_id", ""))

    assert free_the_recorded_lease_then_take_the_slot_elsewhere() == ""
    run_id = flow(name="lock-in-a-flow-run")(free_the_recorded_lease_then_take_the_slot_elsewhere)()
    assert run_id  # in a flow run the holder is the run, recorded for crash_orphan


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_the_next_run_releases_the_lease_a_killed_run_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run SIGKILLed on this host keeps its slot until the lease lapses (>= 60 s); the next run
    frees it at once.
    """
    from prefect.client.orchestration import get_client

    monkeypatch.setattr(lock, "SLOT_WAIT_SECONDS", 1.0)
    path, name = tmp_path / ".towerflow.lock", lock.limit_name(tmp_path)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
        response = client.increment_concurrency_slots_with_lease(
            names=[name], slots=1, mode="concurrency", lease_duration=300
        )
        lease = UUID(response.json()["lease_id"])
    # what the killed run left in the lock file
    path.write_text(
        json.dumps(
            {"pid": 999999, "host": socket.gethostname(), "lease_id": str(lease), "limit": name}
        )
    )
    with data_dir_lock(path, server=True):
        assert json.loads(path.read_text())["lease_id"] != str(lease)
    # a lease recorded by another host is never released: that run may be alive
    with get_client(sync_client=True) as client:
        response = client.increment_concurrency_slots_with_lease(
            names=[name], slots=1, mode="concurrency", lease_duration=300
        )
        lease = UUID(response.json()["lease_id"])
        path.write_text(
            json.dumps(
                {"pid": 999999, "host": "another-host", "lease_id": str(lease), "limit": name}
            )
        )
        with (
            pytest.raises(LockedError, match="held by another run"),
            data_dir_lock(path, server=True),
        ):
            pass
        client.release_concurrency_slots_with_lease(lease)


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_a_run_that_died_holding_the_lock_is_marked_crashed_and_no_other(tmp_path: Path) -> None:
    """Only an unfinished run recorded by a holder on this host (provably gone: we hold its lock) is
    crashed.
    """
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    @flow(name="towerflow-lock-test")
    def nothing() -> None:
        """A flow to attach flow runs to."""

    path, host = tmp_path / ".towerflow.lock", socket.gethostname()
    with get_client(sync_client=True) as client:
        cases = [
            # may be alive elsewhere
            (client.create_flow_run(nothing, state=Running()), "another-host", "RUNNING"),
            # ended: left alone
            (client.create_flow_run(nothing, state=Completed()), host, "COMPLETED"),
            # died holding the lock here
            (client.create_flow_run(nothing, state=Running()), host, "CRASHED"),
        ]
        for run, holder_host, expected in cases:
            path.write_text(
                json.dumps({"pid": 999999, "host": holder_host, "flow_run_id": str(run.id)})
            )
            with data_dir_lock(path, server=True):
                # no flow run context: nothing to record
                assert "flow_run_id" not in json.loads(path.read_text())
            state = client.read_flow_run(run.id).state
            assert state is not None and state.type.value == expected, (holder_host, state)
        assert state is not None and "pid 999999 on " + host in str(state.message)
