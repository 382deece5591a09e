"""The Python API on a published run: load time, per-query latency, fold-in agreement (issue
targets).

Measures, in one process and against one published run (``--data-dir``; without it the nightly job
runs once on ml-latest-small into ``--work``):

- ``import``: ``import towerflow`` and the libraries ``load`` needs (a fresh subprocess, best of 3);
- ``load``: ``towerflow.load(data_dir)`` with those imported (target <= 1 s);
- ``recommend``: one known user's top 10 from the published table, and searched under a rule (<= 10
  ms);
- ``recommend_for_ratings``: a user folded in from their ratings, after the first call (<= 20 ms);
- ``recommend_many``: every user at once, searched under a rule, per user, against the nightly
  recommend stage's seconds per user from latest.json (target: at least as fast);
- fold-in agreement: the share of users whose folded-in top 10 (their own ratings) is their
  published list (target >= 99%), and the largest difference of their vectors.

    .venv/bin/python benchmarks/api.py [--data-dir RUN] [--movielens DIR] [--users 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tasks.runtime import default_threads, set_thread_env

set_thread_env(default_threads())

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import towerflow  # noqa: E402
from tasks.store.layout import Layout  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens"


def ms(samples: list[float]) -> str:
    return (
        f"median {1000 * statistics.median(samples):.2f} ms, p90 "
        f"{1000 * float(np.quantile(samples, 0.9)):.2f} ms"
    )


def publish(movielens: Path, work: Path) -> Path:
    data_dir = work / "api-run"
    if not (data_dir / "outputs" / "latest.json").exists():
        towerflow_bin = Path(sys.executable).parent / "towerflow"
        ratings, movies = movielens / "ratings.csv", movielens / "movies.csv"
        cmd = [
            str(towerflow_bin),
            "run",
            "--ratings",
            str(ratings),
            "--movies",
            str(movies),
            "--data-dir",
            str(data_dir),
        ]
        subprocess.run(cmd, check=True)
    return data_dir


def run() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, help="a published run (default: run the night on --movielens)"
    )
    parser.add_argument("--movielens", type=Path, default=SHARED / "ml-latest-small")
    parser.add_argument("--work", type=Path, default=Path("/tmp/towerflow-bench"))
    parser.add_argument("--users", type=int, default=200, help="users timed one by one")
    args = parser.parse_args()
    data_dir = args.data_dir or publish(args.movielens, args.work)

    imports = []
    for _ in range(3):
        code = (
            "import time; t = time.perf_counter(); import towerflow.recommender; "
            "print(time.perf_counter() - t)"
        )
        imports.append(
            float(
                subprocess.run(
                    [sys.executable, "-c", code], check=True, capture_output=True, text=True
                ).stdout
            )
        )
    loads = []
    for _ in range(3):
        t = time.perf_counter()
        rec = towerflow.load(data_dir)
        loads.append(time.perf_counter() - t)
    print(f"run {rec.version}: {len(rec.user_ids):,} users, {len(rec.movie_ids):,} movies")
    print(
        f"import towerflow (fresh process)   best {min(imports):.2f} s of "
        f"{', '.join(f'{x:.2f}' for x in imports)}"
    )
    print(f"load                               best {min(loads):.3f} s (target <= 1 s)")

    users = rec.user_ids[: args.users]
    rec.recommend(int(users[0]), 10)
    table, searched = [], []
    for user in users:
        t = time.perf_counter()
        rec.recommend(int(user), 10)
        table.append(time.perf_counter() - t)
        t = time.perf_counter()
        rec.recommend(int(user), 10, genres="Drama,Comedy")
        searched.append(time.perf_counter() - t)
    print(f"recommend, published table         {ms(table)} (target <= 10 ms)")
    print(f"recommend, searched under a rule   {ms(searched)} (target <= 10 ms)")

    store = Layout(data_dir).store(rec.published.latest.inputs.sha256) / "ratings.parquet"
    ratings = pq.read_table(store, columns=["user_id", "movie_id", "rating"]).to_pandas()
    by_user = {
        int(u): dict(zip(g.movie_id.tolist(), g.rating.tolist(), strict=True))
        for u, g in ratings.groupby("user_id")
    }
    t = time.perf_counter()
    rec.recommend_for_ratings(by_user[int(users[0])], 10)
    first = time.perf_counter() - t
    published = rec.recommend_many(rec.user_ids, 10)
    lists = {int(u): g.movie_id.tolist() for u, g in published.groupby("user_id")}
    folded, same, worst = [], 0, 0.0
    for user in rec.user_ids:
        t = time.perf_counter()
        answer = rec.recommend_for_ratings(by_user[int(user)], 10)
        folded.append(time.perf_counter() - t)
        same += answer.movie_id.tolist() == lists[int(user)]
        vector, _ = rec.user_vector(by_user[int(user)])
        worst = max(
            worst,
            float(np.abs(vector[0] - rec._user_vecs[rec._user_row.get_indexer([user])[0]]).max()),
        )
    print(
        f"recommend_for_ratings              {ms(folded)} (target <= 20 ms); first call "
        f"{first:.2f} s (loads TensorFlow)"
    )
    share = same / len(rec.user_ids)
    print(
        f"fold-in = published list           {same:,} of {len(rec.user_ids):,} users ({share:.1%}; "
        f"target >= 99%), max |vector diff| {worst:.2e}"
    )

    t = time.perf_counter()
    everyone = rec.recommend_many(rec.user_ids, 10, genres="Drama,Comedy")
    many = time.perf_counter() - t
    timings = rec.published.latest.timings
    stage = float(timings.get("recommend", float("nan")))
    per_user, stage_per_user = many / len(rec.user_ids), stage / len(rec.user_ids)
    print(
        f"recommend_many, every user, rule   {many:.3f} s = {1e6 * per_user:.1f} us/user; "
        "nightly recommend stage "
        f"{stage:.2f} s = {1e6 * stage_per_user:.1f} us/user "
        f"({stage_per_user / per_user:.1f}x; target >= 1x); {len(everyone):,} rows"
    )
    summary = {
        "load_s": min(loads),
        "import_s": min(imports),
        "recommend_ms": 1000 * statistics.median(table),
    }
    summary |= {
        "recommend_rule_ms": 1000 * statistics.median(searched),
        "fold_in_ms": 1000 * statistics.median(folded),
    }
    summary |= {
        "fold_in_same_share": share,
        "many_us_per_user": 1e6 * per_user,
        "stage_us_per_user": 1e6 * stage_per_user,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run())
