"""Crashes, resume and concurrency: `towerflow run` in subprocesses, killed with SIGKILL at several
points, then re-run.

The runs that are killed, and the ones whose whole output matters (a bug, a server that does not
start, the uninterrupted reference), are subprocesses; the run that is refused and the one that
resumes to the end run in this process, against the same server (a subprocess costs about 6 s of
imports). Each subprocess reports to the session's Prefect test server (``PREFECT_API_URL``; its
own temporary ``PREFECT_HOME``), which also exercises the Prefect concurrency limit of the data
directory. The inputs carry movie titles and a genre shaped like paths, to show they never steer
where files go.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
import pyarrow.dataset as ds
import pytest

pytestmark = [pytest.mark.faults, pytest.mark.flow, pytest.mark.usefixtures("prefect_harness")]

RUN_DATE = "2026-01-09"  # the `published` run it starts from is 2026-01-02
HOSTILE_TITLES = [
    "../../../../escape (1999)",
    "/etc/passwd (2000)",
    "..\\..\\evil (2001)",
    "run_date=2026-01-02/../x (2002)",
]
HOSTILE_GENRE = "../../genre|Comedy"
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
CACHED = "Finished in state Cached"


@pytest.fixture(scope="module")
def hostile_inputs(
    tiny_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """``tiny_data`` with path-like titles and a path-like genre."""
    ratings, movies = tiny_data
    out = tmp_path_factory.mktemp("hostile-inputs")
    with open(movies, newline="", encoding="utf-8") as fh:
        header, *rows = list(csv.reader(fh))
    for row, title in zip(rows, HOSTILE_TITLES, strict=False):
        row[1] = title
    rows[len(HOSTILE_TITLES)][2] = HOSTILE_GENRE
    with open(out / "movies.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    shutil.copyfile(ratings, out / "ratings.csv")
    return out / "ratings.csv", out / "movies.csv"


@pytest.fixture(scope="module")
def sub_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of the subprocess runs: the session's Prefect server, a temporary PREFECT_HOME,
    no fault.

    The runs import a copy of ``flows/``, ``tasks/`` and ``towerflow/`` taken once (``PYTHONPATH``):
    the code version is part of the model version, and the code must not change between a crash and
    its re-run while people edit the tree.
    """
    from prefect.settings import PREFECT_API_URL

    import flows
    import tasks
    import towerflow

    source = tmp_path_factory.mktemp("source")
    for package in (flows, tasks, towerflow):
        root = Path(str(package.__file__)).parent
        shutil.copytree(root, source / root.name, ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path_factory.mktemp("prefect-home")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "TOWERFLOW_FAULT", "PYTHONPATH"))
    }
    env |= {
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return env | {"TOWERFLOW_THREADS": "2", "PYTHONPATH": str(source)}


def _args(data_dir: Path, inputs: tuple[Path, Path]) -> list[str]:
    ratings, movies = inputs
    return [
        "run", "--ratings", str(ratings), "--movies", str(movies), "--data-dir", str(data_dir),
        "--run-date", RUN_DATE, "--k", "5", "--max-epochs", "3", "--no-gate", "--no-loss-choice",
        "--refit", "full",  # a refit of several epochs, so a run can be killed in the middle of it
    ]  # fmt: skip


def _start(
    args: list[str], env: dict[str, str], log: Path, cwd: Path, fault: str | None = None
) -> subprocess.Popen[bytes]:
    env = env | ({"TOWERFLOW_FAULT": fault} if fault else {})
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _run(
    args: list[str], env: dict[str, str], log: Path, cwd: Path, fault: str | None = None
) -> tuple[int, str]:
    proc = _start(args, env, log, cwd, fault)
    try:
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return code, log.read_text(errors="replace")


def _wait_for(
    what: str, check: Any, proc: subprocess.Popen[bytes], log: Path, timeout: float = 600
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (status {proc.returncode}) before "
                f"{what}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def published_state(d: Path) -> dict[str, str]:
    """sha256 of latest.json, of every file it names and of every visible file under outputs/: what
    readers see.
    """
    latest_path = d / "outputs" / "latest.json"
    latest = json.loads(latest_path.read_text())
    named = [d / e["path"] for e in latest["model"].values()]
    for info in latest["tables"].values():
        named += [d / f for f in info.get("files") or [info["path"]]]
    visible = [f for f in (d / "outputs").rglob("*") if f.is_file() and _visible(f, d)]
    return {str(f.relative_to(d)): _sha(f) for f in sorted({latest_path, *named, *visible})}


def assert_no_pickle(root: Path) -> int:
    """No pickle anywhere under ``root``: no pickle file, no pickle stream in a file or a zip
    member; Prefect records are JSON.
    """
    records = 0
    for f in (p for p in root.rglob("*") if p.is_file()):
        assert f.suffix.lower() not in {".pkl", ".pickle", ".joblib", ".cloudpickle"}, f
        data = f.read_bytes()
        assert not data.startswith(PICKLE_MAGIC), f"{f} is a pickle stream"
        if f.suffix == ".keras":
            with zipfile.ZipFile(f) as z:
                for name in z.namelist():
                    assert not name.endswith((".pkl", ".pickle")) and not z.read(name).startswith(
                        PICKLE_MAGIC
                    ), f"{f}:{name}"
        # Prefect's persisted stage results: JSON records of plain JSON
        if f.parent.name == ".results":
            record = json.loads(data)
            assert (
                record["metadata"]["serializer"]["type"] == "json"
                and record["metadata"]["serializer"]["object_decoder"] is None
            )
            assert isinstance(json.loads(record["result"]), dict)
            records += 1
        elif f.parent.name == "storage":
            # what Prefect keeps of a failed run: its exception's name and message, as JSON
            assert set(json.loads(data)) == {"exception", "message"}, f
            records += 1
    return records


def _clean_reference(
    inputs: tuple[Path, Path], sub_env: dict[str, str], base: Path
) -> dict[str, Any]:
    """A run of RUN_DATE that nothing interrupts: what the resumed runs must end up with."""
    d = base / "data"
    started = time.perf_counter()
    code, log = _run(_args(d, inputs), sub_env, base / "clean.log", base / "cwd")
    return {"dir": d, "code": code, "log": log, "seconds": round(time.perf_counter() - started, 1)}


def _timeout_env(home: Path) -> dict[str, str]:
    """No PREFECT_API_URL (so Prefect starts its temporary server) and one second for it to start
    (it needs several).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TOWERFLOW_FAULT"))}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1",
        "TOWERFLOW_THREADS": "2",
    }


@pytest.fixture(scope="module")
def background(
    hostile_inputs: tuple[Path, Path],
    tiny_data: tuple[Path, Path],
    sub_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Future[Any]]]:
    """The runs that need no other run's outcome, started at once in the background, each in its own
    directory: the clean reference (:func:`_clean_reference`), a run with a bug, a run whose
    temporary server does not start.

    They are subprocesses that partly wait (start-up, the server), so they overlap the crash test's
    own runs on 2 cores; each test checks its run's outcome.
    """
    clean, bug, timeout = (tmp_path_factory.mktemp(name) for name in ("clean", "bug", "timeout"))
    with ThreadPoolExecutor(3, thread_name_prefix="towerflow-fault-runs") as pool:
        yield {
            "clean": pool.submit(_clean_reference, hostile_inputs, sub_env, clean),
            "bug": pool.submit(
                _run,
                _args(bug / "data", tiny_data),
                sub_env,
                bug / "bug.log",
                bug,
                "bug:before:scalers",
            ),
            "timeout": pool.submit(
                _run,
                _args(timeout / "data", tiny_data),
                _timeout_env(timeout / "home"),
                timeout / "timeout.log",
                timeout,
            ),
        }


def _published_tables(d: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for name, keys in (
        ("recommendations", ["user_id", "rank"]),
        ("similar_movies", ["movie_id", "rank"]),
    ):
        table = (
            ds.dataset(d / "outputs" / name / f"run_date={RUN_DATE}", format="parquet")
            .to_table()
            .to_pandas()
        )
        out[name] = table.sort_values(keys).reset_index(drop=True)
    return out


def _in_process(
    args: list[str], cwd: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> tuple[int, str, str]:
    """``towerflow`` run in this process, in ``cwd``: its exit code, its output and Prefect's log,
    and the last line on stderr.

    Why in this process: a run in a subprocess imports TensorFlow and Prefect again (about 6 s
    here). The runs that are killed must be subprocesses; a run that only finishes or refuses
    need not be, and talks to the same server.
    """
    from flows.cli import main

    capsys.readouterr()
    caplog.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        code = main(args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    return code, "\n".join([out, err, caplog.text]), lines[-1] if lines else ""


def test_killed_runs_keep_published_outputs_and_resume(
    published: dict[str, Any],
    hostile_inputs: tuple[Path, Path],
    sub_env: dict[str, str],
    background: dict[str, Future[Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three runs SIGKILLed (held in training, in the refit, writing latest.json), then the same
    command completes; a second run started while the first holds the data directory refuses.
    """
    d, cwd, logs = tmp_path / "data", tmp_path / "cwd", tmp_path / "logs"
    shutil.copytree(published["dir"], d)
    logs.mkdir()
    cwd.mkdir()
    args = _args(d, hostile_inputs)
    before = published_state(d)
    seconds: dict[str, float] = {}

    # 1. Held after the first validation epoch: a second run refuses in one line and writes
    #    nothing; then SIGKILL the whole process group.
    started = time.perf_counter()
    release = tmp_path / "release"  # never created: the run waits until it is killed
    proc = _start(
        args,
        sub_env | {"TOWERFLOW_FAULT_RELEASE": str(release)},
        logs / "1.log",
        cwd,
        fault="pause:validate:epoch-1",
    )
    _wait_for(
        "the run to hold in training",
        release.with_name("release.waiting").exists,
        proc,
        logs / "1.log",
    )
    staged = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    code, log, last = _in_process(args, cwd, capsys, caplog)
    assert code == 1 and "Traceback" not in log, log[-3000:]
    # the CLI's one-line reason comes last, after anything Prefect prints
    assert last.startswith(f"towerflow run failed: another towerflow run (pid {proc.pid} on "), last
    assert (
        f"is using the data directory {d} (lock {d / '.towerflow.lock'}); wait for it to "
        "finish, then run again" in last
    )
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*")) == staged, "the refused run wrote"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    seconds["killed during train"] = time.perf_counter() - started
    assert re.search(r"validate epoch 1/3", (logs / "1.log").read_text(errors="replace"))
    assert published_state(d) == before
    # what the next run finds
    killed = [json.loads((d / ".towerflow.lock").read_text())["flow_run_id"]]

    # 2. Killed after the second refit epoch: features and scalers come back from the first run.
    started = time.perf_counter()
    code, log = _run(args, sub_env, logs / "2.log", cwd, fault="refit:epoch-2")
    seconds["killed during refit"] = time.perf_counter() - started
    assert code == -signal.SIGKILL, log[-3000:]
    assert "resuming the interrupted run from" in log
    assert re.search(rf"Task run 'features-\w+' - {CACHED}", log) and re.search(
        rf"Task run 'scalers-\w+' - {CACHED}", log
    )
    assert re.search(r"refit epoch 2/3", log)
    assert published_state(d) == before
    assert re.search(
        r"marked flow run '[\w-]+' Crashed: it died holding the data directory", log
    ), log[-3000:]
    killed.append(json.loads((d / ".towerflow.lock").read_text())["flow_run_id"])

    # 3. Killed in the middle of writing latest.json: train is reused, the killed refit runs again;
    #    the half-written file never has the published name. (Every other publish step:
    #    tests/test_resume.py, in process.)
    started = time.perf_counter()
    code, log = _run(args, sub_env, logs / "3.log", cwd, fault="write:latest.json")
    seconds["killed writing latest.json"] = time.perf_counter() - started
    assert code == -signal.SIGKILL, log[-3000:]
    assert re.search(rf"Task run 'train-\w+' - {CACHED}", log) and not re.search(
        r"validate epoch \d+/", log
    )
    assert re.search(r"refit epoch 3/3", log)
    version = next(p.name for p in (d / "work").iterdir() if p.name.startswith(RUN_DATE))
    after = published_state(d)
    # latest.json and every file it names are untouched; the new parts were shown by the renames
    # just before it
    assert {k: v for k, v in after.items() if f"run_date={RUN_DATE}" not in k} == before
    assert {k for k in after if k not in before} == {
        f"outputs/{t}/run_date={RUN_DATE}/{p}"
        for t, p in (
            ("recommendations", f"part-{version}-00000.parquet"),
            ("similar_movies", f"part-{version}-00000.parquet"),
        )
    } | {f"outputs/metrics/run_date={RUN_DATE}/part-{version}.parquet"}
    assert [p.name for p in (d / "outputs").glob(".latest.json.*.tmp")], (
        "the half-written latest.json temporary"
    )
    assert assert_no_pickle(d) >= 4  # the stage results stored so far: JSON
    killed.append(json.loads((d / ".towerflow.lock").read_text())["flow_run_id"])

    # 4. The same command again completes, reusing train and refit; outputs equal the clean run's.
    started = time.perf_counter()
    code, log, _ = _in_process(args, cwd, capsys, caplog)
    seconds["resumed to the end"] = time.perf_counter() - started
    assert code == 0 and CACHED in log, log[-3000:]  # Prefect's log is here too
    assert f"rolled back the interrupted publish of {version}" in log
    # a run that ends clears its id
    assert "flow_run_id" not in json.loads((d / ".towerflow.lock").read_text())
    # the killed runs, which could not report their end, are Crashed in the UI, not Running forever
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for run_id in killed:
            state = client.read_flow_run(UUID(run_id)).state
            assert (
                state is not None
                and state.is_crashed()
                and "ended without reporting" in str(state.message)
            ), state
    reused = re.search(r"resumed   reused from the interrupted run: (.*)", log)
    assert reused and {"features", "scalers", "train", "refit"} <= set(
        reused.group(1).split(", ")
    ), log[-3000:]
    assert not re.search(r"(validate|refit) epoch \d+/", log)
    latest = json.loads((d / "outputs" / "latest.json").read_text())
    reference = background["clean"].result()["dir"]
    clean = json.loads((reference / "outputs" / "latest.json").read_text())
    assert latest["model_version"] == clean["model_version"] == version
    for name, table in _published_tables(d).items():
        pd.testing.assert_frame_equal(table, _published_tables(reference)[name])
    for key in ("movie_embeddings", "user_embeddings", "index", "scalers"):
        assert latest["model"][key]["sha256"] == clean["model"][key]["sha256"], key
    assert not list((d / "outputs").rglob(".*")) and not list((d / "models").glob(".*"))
    assert not (d / "work" / version).exists()
    assert_no_pickle(d)
    # the background runs that share PREFECT_HOME have written what they keep
    wait(background.values())
    # what Prefect keeps of the failed subprocess runs, stored as JSON
    assert assert_no_pickle(Path(sub_env["PREFECT_HOME"])) >= 1
    # path-like titles and genres reached the published catalog as data, never as paths
    catalog = pd.read_parquet(d / latest["model"]["movies"]["path"])
    assert set(HOSTILE_TITLES) <= set(catalog["title"])
    names = [p.name for p in tmp_path.rglob("*")]
    assert not [n for n in names if re.search(r"escape|passwd|evil|genre", n)]
    assert not list(cwd.iterdir()), "nothing written relative to the working directory"
    print(
        "fault case seconds:",
        {k: round(v, 1) for k, v in seconds.items()},
        "clean:",
        background["clean"].result()["seconds"],
    )


def test_a_run_nothing_interrupts_leaves_only_what_latest_names(
    background: dict[str, Future[Any]],
) -> None:
    clean = background["clean"].result()
    d = clean["dir"]
    assert clean["code"] == 0 and "Traceback" not in clean["log"], clean["log"][-3000:]
    latest = json.loads((d / "outputs" / "latest.json").read_text())
    for name in ("recommendations", "similar_movies", "metrics"):
        parts = sorted((d / "outputs" / name / f"run_date={RUN_DATE}").glob("*"))
        assert [str(p.relative_to(d)) for p in parts] == sorted(latest["tables"][name]["files"])
    assert len(list((d / "rejects" / f"run_date={RUN_DATE}").glob("*.parquet"))) == 1
    assert not (d / "work").exists() or not any((d / "work").iterdir())


def test_a_bug_keeps_its_traceback_and_the_reason_comes_last(
    background: dict[str, Future[Any]],
) -> None:
    code, log = background["bug"].result()
    last = log.strip().splitlines()[-1]
    assert (
        code == 1 and "Traceback" in log and "InjectedBug: injected bug at before:scalers" in log
    ), log[-3000:]
    assert last.startswith(
        "towerflow run failed: stage scalers failed: injected bug at before:scalers"
    ), last
    assert last.endswith("[unexpected error: a bug in towerflow; the traceback is above]"), last


def test_a_temporary_server_that_does_not_start_says_what_to_do(
    background: dict[str, Future[Any]],
) -> None:
    """No PREFECT_API_URL and one second to start Prefect's temporary server (it needs several): one
    line that says what to do.
    """
    code, log = background["timeout"].result()
    last = log.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in log, log[-3000:]
    assert last.startswith(
        "towerflow run failed: the temporary Prefect server did not start within 1 s"
    ), last
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in last and "PREFECT_API_URL" in last
