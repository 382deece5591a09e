"""``--data-dir s3://...`` against a real S3 protocol server (moto's, in this process, one per
session), with the shards on a Dask cluster whose workers share no disk with the flow.

The session's ``published`` night is repeated with the store as its data directory: the store must
hold the same tables, row for row; a crash before the conditional PUT of ``latest.json`` leaves the
store's ``latest.json`` as it was and the rerun resumes; a night that loses the race to another
publisher fails in one line and leaves nothing of its own behind; ``towerflow.load`` and the
documented readers answer from the store. The scheduler and two workers are started from the command
line; each worker runs in its own mount namespace with an empty tmpfs over the session's temporary
directory, so the shards' inputs and parts must travel through the store (tasks/store/exchange.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
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
from tasks import faults
from tasks.errors import ConfigError
from tasks.store.mirror import LATEST
from tasks.store.remote import ObjectStore, PublishConflict, StoreError, StoreUnavailable, StoreURI
from tests.documents import S3_SECRET as SECRET


def _frame(store: ObjectStore, files: list[str], keys: list[str]) -> pd.DataFrame:
    tables = []
    for rel in files:
        got = store.get(rel)
        assert got is not None, rel
        tables.append(pq.ParquetFile(io.BytesIO(got[0])).read().to_pandas())
    frame: pd.DataFrame = pd.concat(tables).sort_values(keys).reset_index(drop=True)
    return frame


def _local(data_dir: Path, files: list[str], keys: list[str]) -> pd.DataFrame:
    # no hive column from the path
    frame = pd.concat([pq.ParquetFile(data_dir / f).read().to_pandas() for f in files])
    out: pd.DataFrame = frame.sort_values(keys).reset_index(drop=True)
    return out


def test_store_uris_are_checked_before_anything_runs() -> None:
    assert StoreURI.parse("s3://bucket/a//b/") == StoreURI("bucket", "a/b")
    assert StoreURI.parse("s3://bucket").key("outputs/latest.json") == "outputs/latest.json"
    for bad, says in (
        ("gs://b/x", "gs:// is not supported"),
        ("s3://B_ad/x", "not a valid bucket"),
        ("s3://bkt/../x", "'..'"),
    ):
        with pytest.raises(ConfigError, match=says):
            StoreURI.parse(bad)


def test_a_missing_bucket_or_an_unreachable_store_is_one_line(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(
        StoreError,
        match=r"s3://no-such-bucket/x: opening the bucket failed .*the bucket does not exist",
    ):
        ObjectStore("s3://no-such-bucket/x").check()
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    with pytest.raises(StoreUnavailable, match=r"cannot reach the store at http://127\.0\.0\.1"):
        ObjectStore("s3://nights/x").check()


def test_conditional_writes_refuse_a_stale_etag(s3: str) -> None:
    store = ObjectStore("s3://nights/conditional")
    etag = store.put("doc.json", b"1", if_none_match=True)
    with pytest.raises(PublishConflict):
        store.put("doc.json", b"2", if_none_match=True)
    with pytest.raises(PublishConflict):
        store.put("doc.json", b"2", if_match='"0123456789abcdef0123456789abcdef"')
    assert store.put("doc.json", b"2", if_match=etag) != etag
    assert store.get("doc.json") == (b"2", store.head("doc.json")["etag"])  # type: ignore[index]


def _run(published: dict[str, Any], tiny_data: tuple[Path, Path], uri: str, *extra: str) -> int:
    ratings, movies = tiny_data
    args = ["run", "--ratings", str(ratings), "--movies", str(movies), "--data-dir", uri]
    return main([*args, *published["args"], *extra])


STORE_NIGHT = "s3://nights/team/towerflow"
# what a racing publisher puts meanwhile
OTHER = b'{"schema_version": "1", "written_by": "another night"}'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3: str) -> Iterator[Any]:
    """A scheduler and two workers started from the command line, each worker in its own mount
    namespace with an empty tmpfs over the test session's directory: the flow's scratch, data and
    inputs are not on their disk.

    The workers get the store's endpoint and credentials from their environment (the s3 fixture's),
    nothing else.
    """
    distributed = pytest.importorskip("distributed")
    hidden = tmp_path_factory.getbasetemp()
    # outside what is hidden: the cluster's own files
    own = Path(tempfile.mkdtemp(prefix="towerflow-dask-"))
    dask = str(Path(sys.executable).parent / "dask")
    sched_file = own / "scheduler.json"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(2):
            tmp = own / f"worker-{i}"
            tmp.mkdir()
            script = (
                f'mount -t tmpfs tmpfs "{hidden}" && exec "{dask}" worker {address} --nthreads 1 '
                f"--no-dashboard --name w{i}"
            )
            env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
            procs.append(
                subprocess.Popen(
                    ["unshare", "-m", "sh", "-c", script],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
            yield client
    finally:
        for (
            proc
        ) in procs:  # nothing of the cluster needs keeping: no graceful shutdown (it takes seconds)
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(own, ignore_errors=True)


@pytest.fixture(scope="module")
def store_night(
    s3: str, published: dict[str, Any], tiny_data: tuple[Path, Path], cluster: Any
) -> dict[str, Any]:
    """The session's published night, repeated with ``--data-dir s3://...``, in four attempts that
    train once; the third, which publishes, runs its shards on ``cluster``, whose workers cannot see
    the flow's files:

    1. a bug after every part was written, before the PUT of latest.json;
    2. another publisher writes latest.json while this night uploads: it loses the race;
    3. a bug just after the PUT, before the scratch's own latest.json: the store has published;
    4. the plain command again: the scratch catches up with the store, nothing is published twice.

    Returns the URI, the store's latest.json after each attempt, and each attempt's exit code and
    output.
    """
    store = ObjectStore(STORE_NIGHT)
    facts: dict[str, Any] = {"uri": STORE_NIGHT}
    real_point = faults.point

    def other_night_publishes(name: str) -> None:
        if name == "publish:uploaded":
            store.put(LATEST, OTHER)
        real_point(name)

    for attempt in ("crash", "race", "committed", "rerun"):
        out, err = io.StringIO(), io.StringIO()
        with (
            pytest.MonkeyPatch.context() as mp,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            if attempt == "crash":
                mp.setenv(faults.ENV, "bug:publish:uploaded")
            if attempt == "race":
                mp.setattr(faults, "point", other_night_publishes)
            if attempt == "committed":
                mp.setenv(faults.ENV, "bug:publish:store-committed")
            dask = ["--dask-address", cluster.scheduler.address] if attempt == "committed" else []
            code = _run(published, tiny_data, STORE_NIGHT, *dask)
        got = store.get(LATEST)
        keys = [*store.keys("models"), *store.keys("outputs/recommendations")]
        facts[attempt] = {
            "code": code,
            "out": out.getvalue(),
            "err": err.getvalue(),
            "latest": got and got[0],
            "keys": keys,
        }
    return facts


def test_a_crash_before_the_put_publishes_nothing_and_a_lost_race_leaves_nothing(
    store_night: dict[str, Any],
) -> None:
    crash, race = store_night["crash"], store_night["race"]
    assert crash["code"] == 1 and crash["latest"] is None, (
        "the store's latest.json is untouched by a crash"
    )
    assert race["code"] == 1 and race["latest"] == OTHER, "the other night's latest.json stays"
    said = race["err"].strip().splitlines()[-1]
    assert (
        "another night published since this night started; this night published nothing" in said
    ), said
    assert race["keys"] == [], "the loser removed every file it and its crashed attempt had written"


def test_a_crash_after_the_put_is_published_and_the_rerun_catches_up(
    store_night: dict[str, Any],
) -> None:
    committed, rerun = store_night["committed"], store_night["rerun"]
    assert committed["code"] == 1 and committed["latest"] not in (None, OTHER), (
        "the store published at the PUT"
    )
    assert rerun["code"] == 0 and rerun["latest"] == committed["latest"], (
        "the rerun leaves the published latest.json as it is"
    )
    assert "resumed   reused from the interrupted run: " in rerun["out"] and "train" in rerun["out"]


def test_a_night_on_the_store_publishes_the_local_tables(
    store_night: dict[str, Any], published: dict[str, Any]
) -> None:
    uri = store_night["uri"]
    store = ObjectStore(uri)
    got = store.get(LATEST)
    assert got is not None
    latest, local = json.loads(got[0]), published["latest"]
    assert latest["model_version"] == local["model_version"]
    for name, keys in (
        ("recommendations", ["user_id", "rank"]),
        ("similar_movies", ["movie_id", "rank"]),
    ):
        assert latest["tables"][name]["files"] == local["tables"][name]["files"]
        on_store = _frame(store, latest["tables"][name]["files"], keys)
        pd.testing.assert_frame_equal(
            on_store, _local(published["dir"], local["tables"][name]["files"], keys)
        )
    for entry in latest[
        "model"
    ].values():  # every model file on the store, with the sha256 latest.json names
        assert store.head(entry["path"])["sha256"] == entry["sha256"]  # type: ignore[index]
    assert list(store.keys("outputs/history")), "the nights' history rows are on the store"
    assert not list(store.keys("work")), "what the shards exchanged is removed after the publish"
    assert SECRET not in got[0].decode()
    scratch = [p for p in Path(os.environ["TOWERFLOW_SCRATCH"]).rglob("*") if p.is_file()]
    assert scratch and not [p for p in scratch if SECRET.encode() in p.read_bytes()], (
        "credentials written to the scratch"
    )

    import towerflow

    user = int(published["ratings"].userId.iloc[0])
    from_store = towerflow.load(uri).recommend(user)
    pd.testing.assert_frame_equal(from_store, towerflow.load(published["dir"]).recommend(user))


def test_the_documented_readers_read_the_store(
    store_night: dict[str, Any], published: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md's pyarrow, pandas, polars and DuckDB example, run as written."""
    text = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    code = text.split("<!-- run by tests/test_objectstore.py -->\n```python\n", 1)[1].split(
        "```", 1
    )[0]
    monkeypatch.setenv("TOWERFLOW_URI", store_night["uri"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/operations.md", "exec"), {})
    version, *counts = out.getvalue().split()
    rows = published["latest"]["tables"]["recommendations"]["rows"]
    assert version == published["latest"]["model_version"]
    assert [int(c) for c in counts] == [rows, rows, rows, published["ratings"].userId.nunique()]


def test_the_shards_ran_on_workers_that_cannot_see_the_flows_files(
    store_night: dict[str, Any],
    published: dict[str, Any],
    tiny_data: tuple[Path, Path],
    cluster: Any,
) -> None:
    for path in (tiny_data[0], published["dir"], Path(os.environ["TOWERFLOW_SCRATCH"])):
        assert set(cluster.run(os.path.exists, str(path)).values()) == {False}, path
    loaded = [
        set(cluster.run(lambda m=m: m in sys.modules).values())
        for m in ("tasks.serving.shards", "tensorflow")
    ]
    assert loaded == [{True}, {False}], (
        "the shards ran on the workers, which never loaded TensorFlow"
    )


def test_bad_dask_address_fails_with_one_line(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ratings, movies = tiny_data
    args = [
        "run",
        "--ratings",
        str(ratings),
        "--movies",
        str(movies),
        "--data-dir",
        str(tmp_path),
        "--dask-address",
        "nonsense",
    ]
    assert main(args) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith("towerflow run failed: --dask-address must look like tcp://HOST:PORT")
    )
