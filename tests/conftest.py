"""Shared fixtures: seeded data the tests generate themselves, one Prefect test harness and one
published run per session.
"""

from __future__ import annotations

import json
import os
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it needs, so that ``-m "not flow"`` can never run a flow.

    A test that used ``published`` without the ``flow`` marker ran a whole nightly run under
    ``make test-fast``; derived from ``item.fixturenames`` (the fixtures' closure), a marker
    cannot be forgotten. Runs before ``-m`` deselects (conftest hooks precede pytest's own).
    """
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        markers = {m for f, ms in FLOW_FIXTURE_MARKERS.items() if f in fixtures for m in ms}
        for marker in sorted(markers - {mark.name for mark in item.iter_markers()}):
            item.add_marker(marker)


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
    """One Prefect test server for the whole session: heartbeats, triggers, the task-run recorder
    and block registration off.

    The event persister stays on: tests/test_serve.py reads the towerflow.night.* events and a
    served run's task-run events back from this server. The task-run recorder, which writes those
    events into task-run rows, costs every flow run about 4 s of SQLite contention here; block types
    register on first save instead (about 10 s less start-up).
    """
    from prefect.settings import (
        PREFECT_API_BLOCKS_REGISTER_ON_START,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED,
        PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with (
        temporary_settings(
            {
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                PREFECT_LOCAL_STORAGE_PATH: storage,
                PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED: False,
                PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED: False,
                PREFECT_API_BLOCKS_REGISTER_ON_START: False,
            }
        ),
        prefect_test_harness(server_startup_timeout=60),
    ):
        yield


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
