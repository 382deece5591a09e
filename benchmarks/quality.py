"""Quality benchmark: ``towerflow evaluate`` on two data sets side by side, over several seeds.

The per-user temporal protocol (each user's last 20% held out, full-catalog ranking, seen movies
excluded, relevant = held-out rating >= 4) on ml-latest-small (taste-led) and on a popularity-led
generated catalog, with most-popular, ALS (implicit) and EASE^R beside the presets, once per seed.
Prints every table, then one side-by-side summary: per data set and method, NDCG@10 mean and range
over the seeds, RMSE, and how many users each figure rests on. Needs the ALS extra:
``.venv/bin/pip install -e '.[als]'``.

    .venv/bin/python benchmarks/quality.py [--seeds 1 2 3] [--presets default lab]
        [--popularity-size 600k|2.5m]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import pandas as pd
from benchdata import SHARED, generated, movielens

from flows.cli import main


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per data set and method: NDCG@10 mean [min, max] over seeds, RMSE mean, users."""
    grouped = table.groupby(["data", "method"], sort=False)
    return pd.DataFrame(
        {
            "ndcg@10": grouped["ndcg@10"].mean(),
            "min": grouped["ndcg@10"].min(),
            "max": grouped["ndcg@10"].max(),
            "rmse": grouped["rmse"].mean(),
            "users": grouped["users"].first().astype(int),
            "seeds": grouped["seed"].nunique(),
        }
    )


def run() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--movielens",
        type=Path,
        default=SHARED / "ml-latest-small",
        help="directory with ratings.csv and movies.csv",
    )
    parser.add_argument(
        "--popularity-size",
        choices=("600k", "2.5m"),
        default="600k",
        help="size of the popularity-led set",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/towerflow-bench"),
        help="where generated data sets are kept",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--presets", nargs="+", default=["default"])
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("quality.csv"),
        help="every row, with data set and seed columns",
    )
    args = parser.parse_args()
    sets = [movielens(args.movielens), generated("popularity", args.popularity_size, args.work)]
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python "
        f"{platform.python_version()}"
    )
    started = time.perf_counter()
    tables = []
    for data in sets:
        print(f"\n=== {data.name} ===", flush=True)
        out = args.output.with_suffix(f".{len(tables)}.csv")
        argv = [
            "evaluate",
            "--ratings",
            str(data.ratings),
            "--movies",
            str(data.movies),
            "--output",
            str(out),
        ]
        argv += [x for name in args.presets for x in ("--preset", name)] + [
            x for seed in args.seeds for x in ("--seed", str(seed))
        ]
        if main(argv):
            return 1
        tables.append(pd.read_csv(out).assign(data=data.name))
        out.unlink()
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(args.output, index=False)
    print("\n=== side by side: NDCG@10 mean [min, max] over seeds ===")
    print(summarize(table).to_string(float_format=lambda v: f"{v:.4f}"))
    default = table[table["method"] == "two-tower (default)"].set_index(["data", "seed"])["ndcg@10"]
    for peer in ("most-popular", "als (implicit, 64 factors)", "ease^r"):
        other = table[table["method"] == peer].set_index(["data", "seed"])["ndcg@10"]
        if len(other):
            wins = (
                (default >= other.reindex(default.index)).groupby(level="data").agg(["sum", "size"])
            )
            print(
                f"default >= {peer}: "
                + "; ".join(
                    f"{d} {int(r['sum'])} of {int(r['size'])} seeds" for d, r in wins.iterrows()
                )
            )
    print(f"total {time.perf_counter() - started:.0f} s, table: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
