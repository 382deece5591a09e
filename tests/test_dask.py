"""The shard tasks on a Dask cluster (scheduler and two worker processes on 127.0.0.1) publish exactly the
tables of the local run: the session's ``published`` run, repeated with ``--dask-address``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.cli import main

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as c, distributed.Client(c) as client:  # fmt: skip
        yield client


def _table(data_dir: Path, latest: dict[str, Any], name: str, keys: list[str]) -> pd.DataFrame:
    files = [str(data_dir / f) for f in latest["tables"][name]["files"]]
    frame: pd.DataFrame = pq.read_table(files).to_pandas()
    return frame.sort_values(keys).reset_index(drop=True)


def _loaded_on_workers(client: Any, module: str) -> set[bool]:
    return set(client.run(lambda: module in sys.modules).values())


def test_dask_run_publishes_the_local_tables(published: dict[str, Any], tiny_data: tuple[Path, Path], tmp_path: Path, cluster: Any) -> None:
    ratings, movies = tiny_data
    address = cluster.scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    args = ["run", "--ratings", str(ratings), "--movies", str(movies), "--data-dir", str(tmp_path)]
    assert main([*args, *published["args"], "--dask-address", address]) == 0
    local, remote = published["latest"], json.loads((tmp_path / "outputs" / "latest.json").read_text())
    assert remote["model_version"] == local["model_version"]
    for name, keys in (("recommendations", ["user_id", "rank"]), ("similar_movies", ["movie_id", "rank"])):
        assert [Path(f).name for f in remote["tables"][name]["files"]] == [Path(f).name for f in local["tables"][name]["files"]]
        pd.testing.assert_frame_equal(_table(tmp_path, remote, name, keys), _table(published["dir"], local, name, keys))
    # the shards ran on the workers, which never loaded TensorFlow (the model is loaded from paths, not shipped)
    assert _loaded_on_workers(cluster, "tasks.serving.shards") == {True}
    assert _loaded_on_workers(cluster, "tensorflow") == {False}


def test_bad_dask_address_fails_with_one_line(tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ratings, movies = tiny_data
    args = ["run", "--ratings", str(ratings), "--movies", str(movies), "--data-dir", str(tmp_path), "--dask-address", "nonsense"]
    assert main(args) == 1
    assert (
        capsys.readouterr().err.strip().splitlines()[-1].startswith("towerflow run failed: --dask-address must look like tcp://HOST:PORT")
    )
