"""Quality benchmark: the per-user temporal protocol on real MovieLens data.

Runs ``towerflow evaluate`` on ml-latest-small (from ../shared beside the
repository, or --data) with the default, balanced and lab presets,
most-popular and ALS in the same run, once per seed, prints each table and
then, per method, the mean and range over the seeds and whether the default
preset met issue 3's goal (NDCG@10 at least ALS's, RMSE at most 0.89) with
every seed. Needs the ALS extra: ``.venv/bin/pip install -e '.[als]'``.

    .venv/bin/python benchmarks/quality.py [--data DIR] [--seeds 1 2 3 42]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import pandas as pd

from flows.cli import main

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens" / "ml-latest-small"


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory with ratings.csv and movies.csv")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one evaluation per seed (default: 42)")
    parser.add_argument("--presets", nargs="+", default=["default", "balanced", "lab"])
    parser.add_argument("--output", type=Path, default=Path("quality.csv"), help="every seed's table, with a seed column")
    args = parser.parse_args()
    if not (args.data / "ratings.csv").exists():
        print(f"no ratings.csv in {args.data}; download ml-latest-small from GroupLens and pass --data", file=sys.stderr)
        return 2
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}")
    started = time.perf_counter()
    argv = ["evaluate", "--ratings", str(args.data / "ratings.csv"), "--movies", str(args.data / "movies.csv")]
    for name in args.presets:
        argv += ["--preset", name]
    for seed in args.seeds:
        argv += ["--seed", str(seed)]
    code = main([*argv, "--output", str(args.output)])  # prints every seed's table and, for several, mean and range
    if code:
        return code
    table = pd.read_csv(args.output)
    methods = set(table["method"])
    if "two-tower (default)" in methods and any(m.startswith("als") for m in methods):
        by_seed = table.pivot(index="seed", columns="method", values="ndcg@10")
        als = next(m for m in by_seed.columns if m.startswith("als"))
        rmse = table[table.method == "two-tower (default)"].set_index("seed")["rmse"]
        met = (by_seed["two-tower (default)"] >= by_seed[als]) & (rmse <= 0.89)
        print(f"issue 3 goal (default: NDCG@10 >= ALS and RMSE <= 0.89) met with {int(met.sum())} of {len(met)} seeds")
    print(f"total {time.perf_counter() - started:.0f} s, table: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
