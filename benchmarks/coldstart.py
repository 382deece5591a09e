"""Cold start as issue 19 measures it: movies whose every rating is hidden, ranked by the published
vectors.

Hides every rating of ``--hidden`` movies of ml-latest-small with 10-100 ratings each (seeded), runs
``towerflow run`` on the rest once per ``--variant`` (side by side, same inputs and seed), and
scores how the published user and movie vectors (the towers' own dot product, no popularity prior)
rank the hidden movies for each user who rated one of them >= 4: NDCG@10 within the hidden set, with
its bootstrap interval and the users behind it, beside random order.

    .venv/bin/python benchmarks/coldstart.py [--hidden 300] [--seed 42]
        [--variant NAME="OPTIONS"]...
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.evaluation.gate import bootstrap
from tasks.serving.export import read_embeddings
from tasks.serving.popularity import ServingSpace
from tasks.store.latest import read_latest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens" / "ml-latest-small"


def ndcg_within(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    """NDCG@k of ranking the hidden set by ``scores`` (binary relevance)."""
    order = np.argsort(-scores, kind="stable")[:k]
    gains = relevant[order] / np.log2(np.arange(2, len(order) + 2))
    ideal = (1.0 / np.log2(np.arange(2, min(k, int(relevant.sum())) + 2))).sum()
    return float(gains.sum() / ideal) if ideal > 0 else 0.0


def run() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--movielens", type=Path, default=SHARED)
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=Path("/tmp/towerflow-bench/coldstart"))
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="OPTIONS"')
    args = parser.parse_args()
    variants = {n: shlex.split(o) for n, _, o in (v.partition("=") for v in args.variant)} or {
        "default": []
    }
    ratings = pd.read_csv(args.movielens / "ratings.csv")
    counts = ratings.movieId.value_counts()
    pool = np.sort(counts[(counts >= 10) & (counts <= 100)].index.to_numpy())
    hidden = np.random.default_rng(args.seed).choice(pool, args.hidden, replace=False)
    args.work.mkdir(parents=True, exist_ok=True)
    inputs = args.work / "ratings-without-hidden.csv"
    ratings[~ratings.movieId.isin(hidden)].to_csv(inputs, index=False)
    held = ratings[ratings.movieId.isin(hidden)]
    liked = held[held.rating >= 4].groupby("userId").movieId.apply(set)
    towerflow = Path(sys.executable).with_name("towerflow")
    procs = {}
    for name, extra in variants.items():
        d = args.work / f"run-{name}"
        subprocess.run(["rm", "-rf", str(d)], check=True)
        cmd = [
            str(towerflow),
            "run",
            "--ratings",
            str(inputs),
            "--movies",
            str(args.movielens / "movies.csv"),
        ]
        cmd += ["--data-dir", str(d), "--seed", str(args.seed), *extra]
        procs[name] = (
            d,
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        )
    print(
        f"{len(hidden)} hidden movies ({len(held):,} ratings); {len(liked):,} users rated "
        "one of them >= 4"
    )
    for name, (d, proc) in procs.items():
        if proc.wait() != 0:
            print(f"{name}: towerflow run failed")
            continue
        latest = read_latest(d)
        uid, uvec = read_embeddings(d / latest.model["user_embeddings"].path, "user")
        mid, mvec = read_embeddings(d / latest.model["movie_embeddings"].path, "movie")
        space = ServingSpace.read(d / latest.model["serving"].path)
        rows = pd.Index(mid).get_indexer(hidden)
        users = pd.Index(uid).get_indexer(liked.index.to_numpy())
        # the same random orders for every variant
        model, chance, rng = [], [], np.random.default_rng(0)
        for u, wanted in zip(users, liked, strict=True):
            relevant = np.isin(hidden, list(wanted)).astype(float)
            scores = space.tower_scores(np.repeat(uvec[u : u + 1], len(rows), 0), mvec[rows])
            model.append(ndcg_within(scores, relevant))
            chance.append(ndcg_within(rng.random(len(rows)), relevant))
        m, c = bootstrap(np.array(model)), bootstrap(np.array(chance))
        choice = latest.training.loss_choice
        kept = f"; MSE weight {choice['mse_weight']:g} kept" if choice else ""
        print(
            f"{name}: NDCG@10 within the hidden set {m.mean:.4f} ({m.low:.4f} .. "
            f"{m.high:.4f}); random {c.mean:.4f}; {len(model):,} users{kept}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run())
