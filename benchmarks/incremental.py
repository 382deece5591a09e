"""Incremental nights: a warm start from the published model against a full retrain on the same data
(README "Incremental nights").

Splits ml-latest-small's ratings by time (the first 90% and the rest, two CSV files in a
temporary drop folder), runs night 1 on the first file, then night 2 with both files
twice from copies of night 1's data directory: (a) a full retrain, (b) ``--warm-start``.
Prints the train / refit seconds, epochs and the nightly holdout metrics of latest.json.

    .venv/bin/python benchmarks/incremental.py [--data DIR] [--preset NAME] [--share 0.9]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens" / "ml-latest-small"
)
TOWERFLOW = Path(sys.executable).with_name("towerflow")


def night(
    drop: Path, movies: Path, data_dir: Path, run_date: str, preset: str, *extra: str
) -> tuple[dict[str, Any], float]:
    args = [
        str(TOWERFLOW),
        "run",
        "--ratings",
        str(drop),
        "--movies",
        str(movies),
        "--data-dir",
        str(data_dir),
    ]
    started = time.perf_counter()
    subprocess.run(
        [*args, "--run-date", run_date, "--preset", preset, "--no-gate", *extra],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(
        (data_dir / "outputs" / "latest.json").read_text()
    ), time.perf_counter() - started


def row(name: str, latest: dict[str, Any], wall: float) -> str:
    t, m, tr = latest["timings"], latest["metrics"]["two-tower"], latest["training"]
    epochs = f"{tr['epochs_run']} + {tr['refit_epochs']}"
    return (
        f"| {name} | {t['train']:.1f} | {t['refit']:.1f} | {t['train'] + t['refit']:.1f} | "
        f"{wall:.0f} | {epochs} "
        f"| {m['ndcg']:.4f} | {m['rmse']:.4f} | {tr.get('warm_start') or 'cold'} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--preset", default="default")
    p.add_argument(
        "--share", type=float, default=0.9, help="share of the ratings (by time) in night 1's file"
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="towerflow-incremental-") as tmp_name:
        tmp = Path(tmp_name)
        ratings = pd.read_csv(args.data / "ratings.csv").sort_values("timestamp", kind="stable")
        cut = int(len(ratings) * args.share)
        drop = tmp / "drop"
        drop.mkdir()
        ratings.iloc[:cut].to_csv(drop / "ratings-1.csv", index=False)
        new = ratings.iloc[cut:]
        before = ratings.iloc[:cut]
        print(
            f"night 1: {cut:,} ratings; night 2 adds {len(new):,} ratings, "
            f"{len(set(new.userId) - set(before.userId))} new users, "
            f"{len(set(new.movieId) - set(before.movieId))} new rated movies"
        )
        full, warm = tmp / "full", tmp / "warm"
        first, wall1 = night(drop, args.data / "movies.csv", full, "2026-01-01", args.preset)
        shutil.copytree(full, warm)
        ratings.iloc[cut:].to_csv(drop / "ratings-2.csv", index=False)
        a, wall_a = night(drop, args.data / "movies.csv", full, "2026-01-02", args.preset)
        b, wall_b = night(
            drop, args.data / "movies.csv", warm, "2026-01-02", args.preset, "--warm-start"
        )
    print(
        f"preset {args.preset}; night 2 ingest: {b['ingest']['files_new']} new file, "
        f"{b['ingest']['files_skipped']} skipped"
    )
    print(
        "| night | train s | refit s | train+refit s | run s | epochs (train + refit) | "
        "NDCG@10 | RMSE | start |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---|")
    print(row("1 (first 90%)", first, wall1))
    print(row("2 full retrain", a, wall_a))
    print(row("2 --warm-start", b, wall_b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
