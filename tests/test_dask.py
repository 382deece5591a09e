"""The shard tasks on a Dask cluster whose workers share no disk with the flow publish exactly the tables of the
local run: the session's ``published`` run, repeated with ``--dask-address`` and ``--data-dir s3://...``.

The scheduler and two workers are started from the command line; each worker runs in its own mount namespace
with an empty tmpfs over the session's temporary directory, so the shards' inputs and parts must travel
through the store (tasks/store/exchange.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from tasks.store.mirror import LATEST
from tasks.store.remote import ObjectStore

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3: str) -> Iterator[Any]:
    """A scheduler and two workers started from the command line, each worker in its own mount namespace with an
    empty tmpfs over the test session's directory: the flow's scratch, data and inputs are not on their disk.

    The workers get the store's endpoint and credentials from their environment (the s3 fixture's), nothing else.
    """
    distributed = pytest.importorskip("distributed")
    hidden = tmp_path_factory.getbasetemp()
    own = Path(tempfile.mkdtemp(prefix="towerflow-dask-"))  # outside what is hidden: the cluster's own files
    dask = str(Path(sys.executable).parent / "dask")
    sched_file = own / "scheduler.json"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(2):
            tmp = own / f"worker-{i}"
            tmp.mkdir()
            script = f'mount -t tmpfs tmpfs "{hidden}" && exec "{dask}" worker {address} --nthreads 1 --no-dashboard --name w{i}'
            env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
            procs.append(
                subprocess.Popen(["unshare", "-m", "sh", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
            yield client
    finally:
        for proc in procs:  # nothing of the cluster needs keeping: no graceful shutdown (it takes seconds)
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(own, ignore_errors=True)


def _table(data_dir: Path, latest: dict[str, Any], name: str, keys: list[str]) -> pd.DataFrame:
    files = [str(data_dir / f) for f in latest["tables"][name]["files"]]
    frame: pd.DataFrame = pq.read_table(files).to_pandas()
    return frame.sort_values(keys).reset_index(drop=True)


def _loaded_on_workers(client: Any, module: str) -> set[bool]:
    return set(client.run(lambda: module in sys.modules).values())


def test_workers_without_the_flows_disk_publish_the_local_tables(
    published: dict[str, Any], tiny_data: tuple[Path, Path], tmp_path: Path, cluster: Any
) -> None:
    ratings, movies = tiny_data
    address = cluster.scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    # the workers cannot see the inputs, the published run or this test's scratch
    assert set(cluster.run(os.path.exists, str(ratings)).values()) == {False}
    assert set(cluster.run(os.path.exists, str(published["dir"])).values()) == {False}
    uri = "s3://nights/dask"
    args = ["run", "--ratings", str(ratings), "--movies", str(movies), "--data-dir", uri, "--scratch-dir", str(tmp_path)]
    assert main([*args, *published["args"], "--dask-address", address]) == 0
    store = ObjectStore(uri)
    remote, local = json.loads(store.get(LATEST)[0]), published["latest"]  # type: ignore[index]
    assert remote["model_version"] == local["model_version"]
    for name, keys in (("recommendations", ["user_id", "rank"]), ("similar_movies", ["movie_id", "rank"])):
        assert remote["tables"][name]["files"] == local["tables"][name]["files"]
        parts = [store.get(f) for f in remote["tables"][name]["files"]]
        on_store: pd.DataFrame = pd.concat([pq.ParquetFile(io.BytesIO(p[0])).read().to_pandas() for p in parts if p])
        expected = pd.concat([pq.ParquetFile(published["dir"] / f).read().to_pandas() for f in local["tables"][name]["files"]])
        pd.testing.assert_frame_equal(on_store.sort_values(keys).reset_index(drop=True), expected.sort_values(keys).reset_index(drop=True))
    assert not list(store.keys("work")), "what the shards exchanged is removed after the publish"
    # the shards ran on the workers, which never loaded TensorFlow (the model is loaded from files, not shipped)
    assert _loaded_on_workers(cluster, "tasks.serving.shards") == {True}
    assert _loaded_on_workers(cluster, "tensorflow") == {False}


def test_bad_dask_address_fails_with_one_line(tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ratings, movies = tiny_data
    args = ["run", "--ratings", str(ratings), "--movies", str(movies), "--data-dir", str(tmp_path), "--dask-address", "nonsense"]
    assert main(args) == 1
    assert (
        capsys.readouterr().err.strip().splitlines()[-1].startswith("towerflow run failed: --dask-address must look like tcp://HOST:PORT")
    )
