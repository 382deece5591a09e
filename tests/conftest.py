"""Shared fixtures: seeded data the tests generate themselves, one Prefect test harness and one
published run per session.
"""

from __future__ import annotations

import contextvars
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TOWERFLOW_THREADS", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
from tasks.runtime import set_thread_env
from tests import documents

set_thread_env(2)

# Prefect configures logging when first imported (logging.config.dictConfig), which closes every
# handler that exists by then. Imported after TensorFlow had run under pytest's capture, that closed
# absl's handler and with it pytest's captured stderr ("I/O operation on closed file" in the next
# test: e.g. `pytest tests/test_train.py tests/test_incremental.py`). Configure Prefect's logging
# first, here.
import prefect.main  # noqa: E402, F401

# The fixtures that run flows, and the markers of every test that needs one (even indirectly).
FLOW_FIXTURE_MARKERS = {
    "prefect_harness": ("flow",),  # the session's Prefect test server: the test runs flows on it
    "published": ("flow", "train"),  # a nightly flow run, which trains the model
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it needs, so that ``-m "not flow"`` can never run a flow; then
    order the modules.

    A test that used ``published`` without the ``flow`` marker ran a whole nightly run under
    ``make test-fast``; derived from ``item.fixturenames`` (the fixtures' closure), a marker
    cannot be forgotten. Runs before ``-m`` deselects (conftest hooks precede pytest's own).

    In one process the server starts in the background once collection is done
    (:func:`pytest_collection_finish`) and takes about 11 s (its imports and the database's
    migrations): the modules that run no flow go first, so that they run while it starts. Under
    xdist (``--dist loadscope --no-loadscope-reorder``: a module runs on one worker, the modules
    handed out in this order) the longest modules go first (:data:`LONGEST_MODULES`), so that the
    two workers end together. The order is by module (a module's tests stay together and in their
    order), so module-scoped fixtures are set up once.
    """
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        markers = {m for f, ms in FLOW_FIXTURE_MARKERS.items() if f in fixtures for m in ms}
        for marker in sorted(markers - {mark.name for mark in item.iter_markers()}):
            item.add_marker(marker)
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: _module_rank(item.nodeid.split("::")[0]))  # stable
    else:
        needs_server = {item.nodeid.split("::")[0] for item in items if _needs_server(item)}
        items.sort(key=lambda item: item.nodeid.split("::")[0] in needs_server)  # stable


# The modules that take longest (measured with ``--durations``), longest first: the first three
# each about a fifth of the suite's time, mostly in subprocesses (the crash test's runs, the Dask
# cluster's workers, ``towerflow serve`` and its flow run), the next four 5-9% each (they train);
# the short modules come after them and fill in, so the workers end together.
LONGEST_MODULES = (
    "tests/test_faults.py",
    "tests/test_objectstore.py",
    "tests/test_serve.py",
    "tests/test_train.py",
    "tests/test_flow.py",
    "tests/test_incremental.py",
    "tests/test_quality.py",
)


def _module_rank(module: str) -> int:
    return LONGEST_MODULES.index(module) if module in LONGEST_MODULES else len(LONGEST_MODULES)


def _needs_server(item: pytest.Item) -> bool:
    return SERVER_FIXTURE in getattr(item, "fixturenames", ())


SERVER_FIXTURE = "prefect_harness"
_early: list[EarlyServer] = []  # the session's server, once a selected test needs it


# Under pytest-xdist (``make test``: ``-n 2 --dist loadscope``) the controller starts the one server
# before the workers start, and they find its URL here.
SERVER_URL_ENV = "TOWERFLOW_TEST_PREFECT_API_URL"


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, start the session's one Prefect test server in the controller, unless ``-m``
    leaves out the flows: the workers, each a pytest session, share it (a server per worker would
    be one more server starting, and two SQLite databases)."""
    controller = not hasattr(config, "workerinput") and bool(config.getoption("numprocesses", None))
    if controller and "not flow" not in " ".join(str(config.getoption("markexpr", "")).split()):
        server = EarlyServer()
        _early.append(server)
        os.environ[SERVER_URL_ENV] = server.server.api_url


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the Prefect test server now if a selected test needs it (after ``-m`` deselected) and
    no xdist controller started one."""
    if SERVER_URL_ENV not in os.environ and any(_needs_server(i) for i in session.items):
        _early.append(EarlyServer())


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the server if no test used it, or if this process is the xdist controller that
    started it (the ``prefect_harness`` fixture stops a server its own process started)."""
    for server in _early:
        server.stop()
    _early.clear()


def _wait_healthy(url: str, timeout: float) -> str:
    """``url`` once the server there answers its health check."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect test server at {url} did not answer in {timeout} s")
        time.sleep(0.1)


class EarlyServer:
    """Prefect's test server (``SubprocessASGIServer``, the one ``prefect_test_harness`` starts: a
    subprocess with its own temporary SQLite database), started from a background thread so that
    the tests that need no server run while it imports and migrates its database.

    Why not ``prefect_test_harness`` itself: it starts the server and waits for it in one call.
    The thread runs in a copy of this thread's context, so the server's environment carries the
    settings below (``temporary_settings`` is a context variable).

    Heartbeats are off, and so are the triggers, the task-run recorder and block registration. The
    event persister stays on: tests/test_serve.py reads the towerflow.night.* events and a served
    run's task-run events back from this server. The task-run recorder, which writes those events
    into task-run rows, costs every flow run about 4 s of SQLite contention here; block types
    register on first save instead (about 10 s less start-up). It writes the events it received
    every half second, not every 5 s (Prefect's default), which the tests that read them back
    would otherwise wait for.
    """

    def __init__(self) -> None:
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.settings import (
            PREFECT_API_BLOCKS_REGISTER_ON_START,
            PREFECT_SERVER_DATABASE_CONNECTION_URL,
            PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL,
            PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED,
            PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED,
            temporary_settings,
        )

        self.dir = Path(tempfile.mkdtemp(prefix="towerflow-prefect-server-"))
        with temporary_settings(
            {
                PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{self.dir}/prefect.db",
                PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED: False,
                PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED: False,
                PREFECT_API_BLOCKS_REGISTER_ON_START: False,
                PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL: EVENTS_FLUSH_SECONDS,
            }
        ):
            context = contextvars.copy_context()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        self.server = SubprocessASGIServer(port=port)
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=context.run, args=(self._start,), name="towerflow-prefect-server", daemon=True
        )
        self.thread.start()

    def _start(self) -> None:
        try:
            self.server.start(timeout=SERVER_STARTUP_SECONDS)
        except BaseException as exc:  # raised in the fixture that waits for it
            self.error = exc

    def api_url(self) -> str:
        """The server's API URL once it answers its health check."""
        self.thread.join()
        if self.error is not None:
            raise RuntimeError("the Prefect test server did not start") from self.error
        return str(self.server.api_url)

    def stop(self) -> None:
        self.thread.join(SERVER_STARTUP_SECONDS)
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


SERVER_STARTUP_SECONDS = 60
EVENTS_FLUSH_SECONDS = 0.5


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261124)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small generated MovieLens-like data set: (ratings.csv, movies.csv)."""
    from tasks.sources.generate import generate

    data = generate(
        tmp_path_factory.mktemp("tiny"), n_users=120, n_movies=200, mean_ratings_per_user=30, seed=3
    )
    return data.ratings_csv, data.movies_csv


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Prefect test server for the whole session (:class:`EarlyServer`), this process's API
    URL pointing at it, heartbeats off and results stored under the session's temporary directory.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )

    shared = os.environ.get(SERVER_URL_ENV)  # an xdist worker: the controller's server
    if shared is None and not _early:  # a test selected after collection (pytest's --lf)
        _early.append(EarlyServer())
    url = _wait_healthy(shared, SERVER_STARTUP_SECONDS) if shared else _early[0].api_url()
    try:
        with temporary_settings(
            {
                PREFECT_API_URL: url,
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("prefect-results"),
            }
        ):
            yield
            # what prefect_test_harness does before it stops the server: send the logs and events
            # still queued, so that nothing connects to a stopped server
            APILogWorker.drain_all()
            EventsWorker.drain_all()
    finally:
        for server in _early:
            server.stop()


PUBLISHED_K = 5  # the k of the ``published`` run (tests/test_flow.py's K)
# The ``published`` run's options; tests/test_objectstore.py reruns it on the store and on Dask and
# compares the tables.
PUBLISHED_ARGS = [
    "--run-date",
    "2026-01-02",
    "--k",
    str(PUBLISHED_K),
    "--max-epochs",
    "3",
    "--no-gate",
    "--no-loss-choice",
    "--shard-size",
    "40",
]


@pytest.fixture(scope="session")
def published(
    tiny_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, prefect_harness: None
) -> dict[str, Any]:
    """One nightly flow run on ``tiny_data`` (k=5, 3 epochs, gate off, one validation model,
    shards of 40, a deny-list of the two most rated movies), shared by the flow and query tests.

    Returns the data directory, the parsed latest.json, the input ratings and movies as data frames,
    the options the run was given besides its inputs and data directory (``args``) and the denied
    movie ids. Tests may add failed runs to the directory but must leave what latest.json points to
    untouched.
    """
    import pandas as pd

    from flows.cli import main

    ratings, movies = tiny_data
    data_dir = tmp_path_factory.mktemp("run")
    frame = pd.read_csv(ratings)
    denied = [int(m) for m in frame.movieId.value_counts().index[:2]]
    deny_list = tmp_path_factory.mktemp("rules") / "deny.csv"
    deny_list.write_text("movieId,reason\n" + "".join(f"{m},licence ended\n" for m in denied))
    run_args = [*PUBLISHED_ARGS, "--deny-list", str(deny_list)]
    args = ["run", "--ratings", str(ratings), "--movies", str(movies), "--data-dir", str(data_dir)]
    assert main([*args, *run_args]) == 0
    latest = json.loads((data_dir / "outputs" / "latest.json").read_text())
    return {
        "dir": data_dir,
        "latest": latest,
        "ratings": frame,
        "movies": pd.read_csv(movies),
        "args": run_args,
        "denied": denied,
    }


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with the bucket ``nights``, the AWS variables pointing at it
    and a scratch root for s3:// nights (``TOWERFLOW_SCRATCH``); yields its endpoint. Restores the
    environment after."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "TOWERFLOW_SCRATCH",
        )
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="towerflow-test",
        AWS_SECRET_ACCESS_KEY=documents.S3_SECRET,
        TOWERFLOW_SCRATCH=str(tmp_path_factory.mktemp("scratch")),
    )
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="nights"
    )
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
