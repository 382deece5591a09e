"""Quality benchmark: the per-user temporal protocol on real MovieLens data.

Runs ``towerflow evaluate`` on ml-latest-small (from ../shared beside the
repository, or --data) with the default and the lab presets, most-popular and
ALS in the same run, and prints the table. Needs the ALS extra:
``.venv/bin/pip install -e '.[als]'``.

    .venv/bin/python benchmarks/quality.py [--data DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from flows.cli import main

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens" / "ml-latest-small"


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory with ratings.csv and movies.csv")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=Path("quality.csv"))
    args = parser.parse_args()
    if not (args.data / "ratings.csv").exists():
        print(f"no ratings.csv in {args.data}; download ml-latest-small from GroupLens and pass --data", file=sys.stderr)
        return 2
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}")
    started = time.perf_counter()
    argv = ["evaluate", "--ratings", str(args.data / "ratings.csv"), "--movies", str(args.data / "movies.csv")]
    code = main([*argv, "--preset", "default", "--preset", "lab", "--seed", str(args.seed), "--output", str(args.output)])
    print(f"total {time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(run())
