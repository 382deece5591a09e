"""The nightly job as a user runs it, judged on ratings it never saw.

For each data set (ml-latest-small; a popularity-led generated catalog): each user's first 80% of
ratings by time become the input files; ``towerflow run`` runs on them with no options but the
inputs, the data directory and the seed, as a subprocess whose wall time and peak memory (the
whole process tree) are measured. Then the published top-10 is scored on each user's held-out 20%
(relevant = rating >= 4, NDCG@10 with its bootstrap interval, the users behind it) and
``towerflow predict`` gives the RMSE on every held-out pair. Most-popular, ALS (if implicit is
installed) and EASE^R are fitted on the same 80% and scored on the same users. Prints, per data
set and seed: whether the night published and the gate's verdict, and the table.

    .venv/bin/python benchmarks/nightly_quality.py [--seeds 42 1 2] [--popularity-size 2.5m|600k]
        [--only movielens|popularity|latent]... [--latent-size 600k|2.5m]
        [--movielens-half odd|even] [--movielens-dense MOVIES]
        [--movielens-before YYYY-MM-DD] [--movielens-no-years]
        [--variant NAME="--option value ..."]...

Each ``--variant`` is a night run with those extra options, side by side with the others on the same
inputs and seeds (default: one variant, ``default``, with no extra options).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from benchdata import (
    SHARED,
    DataSet,
    dense_cut,
    earlier_release,
    generated,
    half_users,
    movielens,
    without_years,
)
from scale import tree_rss

from tasks.evaluation.baselines import als_lists, ease_lists, popularity_lists
from tasks.evaluation.evaluate import method_row
from tasks.evaluation.metrics import relevant_sets, rmse
from tasks.preparation.features import per_user_holdout

K = 10


def split_input(data: DataSet, out: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Write each user's first 80% of ratings as ``out/ratings.csv``; return it, the input and the
    held-out rows.
    """
    raw = pd.read_csv(data.ratings)
    ratings = raw.rename(columns={"userId": "user_id", "movieId": "movie_id"})
    hold = per_user_holdout(ratings, 0.2)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "ratings.csv").exists():
        raw[~hold].to_csv(out / "ratings.csv", index=False)
    return out / "ratings.csv", ratings[~hold], ratings[hold]


def night(
    towerflow: Path, inputs: Path, movies: Path, run_dir: Path, seed: int, extra: list[str]
) -> dict[str, float | int | str]:
    """``towerflow run`` as a subprocess (output in ``run_dir``.log): exit status, wall seconds,
    peak RSS of the process tree (GiB).
    """
    cmd = [
        str(towerflow),
        "run",
        "--ratings",
        str(inputs),
        "--movies",
        str(movies),
        "--data-dir",
        str(run_dir),
        "--seed",
        str(seed),
    ]
    cmd += extra
    started, peak = time.perf_counter(), 0
    log = run_dir.with_suffix(".log")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)
    reason = next(
        (
            line
            for line in reversed(log.read_text().splitlines())
            if line.startswith("towerflow run failed")
        ),
        f"see {log}",
    )
    return {
        "status": proc.returncode,
        "seconds": time.perf_counter() - started,
        "peak_gib": peak / 2**30,
        "reason": reason,
    }


def published_lists(run_dir: Path) -> dict[int, list[int]]:
    recs = (
        ds.dataset(run_dir / "outputs" / "recommendations", format="parquet", partitioning="hive")
        .to_table()
        .to_pandas()
    )
    recs = recs.sort_values(["user_id", "rank"])
    return {int(u): group.tolist() for u, group in recs.groupby("user_id")["movie_id"]}


def published_rmse(towerflow: Path, run_dir: Path, test: pd.DataFrame, work: Path) -> float:
    pairs, out = work / "pairs.csv", work / "predicted.parquet"
    test[["user_id", "movie_id"]].to_csv(pairs, index=False)
    subprocess.run(
        [
            str(towerflow),
            "predict",
            "--data-dir",
            str(run_dir),
            "--pairs",
            str(pairs),
            "--output",
            str(out),
        ],
        check=True,
    )
    predicted = pq.read_table(out).to_pandas()["predicted_rating"].to_numpy()
    known = ~np.isnan(predicted)
    return rmse(predicted[known], test["rating"].to_numpy()[known])


def run() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--movielens", type=Path, default=SHARED / "ml-latest-small")
    parser.add_argument("--popularity-size", choices=("600k", "2.5m"), default="2.5m")
    parser.add_argument("--latent-size", choices=("600k", "2.5m"), default="600k")
    parser.add_argument(
        "--only",
        choices=("movielens", "popularity", "latent"),
        action="append",
        help="data sets to run (repeatable)",
    )
    parser.add_argument(
        "--movielens-half",
        choices=("odd", "even"),
        help="only users with an odd (even) id of ml-latest-small",
    )
    parser.add_argument(
        "--movielens-dense",
        type=int,
        metavar="MOVIES",
        help="only ml-latest-small's MOVIES most rated movies, by users with >= 20 of them",
    )
    parser.add_argument(
        "--movielens-before",
        metavar="YYYY-MM-DD",
        help="only ml-latest-small's ratings before the date: the release it was then",
    )
    parser.add_argument(
        "--movielens-no-years",
        action="store_true",
        help="ml-latest-small's titles without their (YYYY), as in older releases",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--work", type=Path, default=Path("/tmp/towerflow-bench"))
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="the table as CSV (default: WORK/nightly_quality.csv)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='NAME="OPTIONS"',
        help="a night with extra options",
    )
    args = parser.parse_args()
    variants = {"default": []} if not args.variant else {}
    for spec in args.variant:
        name, _, options = spec.partition("=")
        variants[name] = shlex.split(options)
    towerflow = Path(sys.executable).with_name("towerflow")
    sets = []
    only = set(args.only or ("movielens", "popularity"))
    if "movielens" in only:
        data = movielens(args.movielens)
        if args.movielens_half:
            data = half_users(data, args.movielens_half, args.work)
        if args.movielens_dense:
            data = dense_cut(data, args.movielens_dense, args.work)
        if args.movielens_before:
            data = earlier_release(data, args.movielens_before, args.work)
        if args.movielens_no_years:
            data = without_years(data, args.work)
        sets.append(data)
    if "popularity" in only:
        sets.append(generated("popularity", args.popularity_size, args.work))
    if "latent" in only:  # tastes in hidden factors that genres do not show (EASE^R's ground)
        sets.append(generated("latent", args.latent_size, args.work))
    rows = []
    for data in sets:
        work = args.work / "nightly" / data.name.replace(" ", "-")
        inputs, train, test = split_input(data, work / "input-80")
        relevant = relevant_sets(test)
        users = np.array(sorted(relevant), dtype=np.int64)
        n_movies = pd.read_csv(data.movies).shape[0]
        movie_ids = pd.read_csv(data.movies)["movieId"].to_numpy(np.int64)
        print(
            f"\n=== {data.name}: {len(train):,} input ratings, {len(test):,} held out, "
            f"{len(users):,} users with a relevant one ==="
        )
        peers = {"most-popular": popularity_lists(train, users, movie_ids, K)}
        als = als_lists(train, np.sort(train["user_id"].unique()), movie_ids, K, 42)
        if als is not None:
            peers["als (implicit, 64 factors)"] = als
        peers["ease^r"], lam = ease_lists(train, users, K)
        for name, lists in peers.items():
            rows.append(
                {
                    "data": data.name,
                    "seed": None,
                    **method_row(name, lists, relevant, K, n_movies, 0),
                }
            )
        print(f"peers fitted (EASE^R lambda {lam:g})")
        for seed, (variant, extra) in ((s, v) for s in args.seeds for v in variants.items()):
            run_dir = work / f"run-seed{seed}-{variant}"
            subprocess.run(["rm", "-rf", str(run_dir)], check=True)
            result = night(towerflow, inputs, data.movies, run_dir, seed, extra)
            method = f"towerflow run ({variant})"
            if result["status"] != 0:
                print(
                    f"seed {seed} {variant}: towerflow run FAILED ({result['seconds']:.0f} "
                    f"s): {result['reason']}"
                )
                rows.append({"data": data.name, "seed": seed, "method": method, "published": False})
                continue
            latest = json.loads((run_dir / "outputs" / "latest.json").read_text())
            gate = latest["gate"]
            print(
                f"seed {seed} {variant}: published in {result['seconds']:.0f} s, peak "
                f"{result['peak_gib']:.2f} GiB; "
                f"prior weight {latest['popularity_prior']['weight']:g}; gate {gate['reason']}"
            )
            row = method_row(method, published_lists(run_dir), relevant, K, n_movies, seed)
            row["train_refit_s"] = latest["timings"].get("train", 0.0) + latest["timings"].get(
                "refit", 0.0
            )
            row |= {
                "rmse": published_rmse(towerflow, run_dir, test, work),
                "published": True,
                "verdict": gate["verdict"],
            }
            row |= {
                "seconds": result["seconds"],
                "peak_gib": result["peak_gib"],
                "prior_weight": latest["popularity_prior"]["weight"],
            }
            rows.append({"data": data.name, "seed": seed, **row})
    table = pd.DataFrame(rows)
    table.to_csv(args.output or args.work / "nightly_quality.csv", index=False)
    cols = [
        c
        for c in (
            "data",
            "seed",
            "method",
            "ndcg",
            "ndcg_low",
            "ndcg_high",
            "recall",
            "rmse",
            "users",
            "verdict",
            "seconds",
            "train_refit_s",
        )
        if c in table
    ]
    print("\n" + table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(run())
