"""Training throughput: towerflow's trainer vs a course-faithful Keras fit, same model, same data.

Both train the lab's two-tower model (lab features, MSE against the MinMax(-1, 1) rating) on
the training side of the per-user temporal split of ml-latest-small, for the same number of
epochs, and are scored on the held-out side:

- course-faithful: one numpy row of user features and one of movie features copied per rating
  (as the course builds ``user_train``/``item_train``), ``model.compile(Adam(0.01), "mse")``,
  ``model.fit(batch_size=32)``;
- towerflow: :func:`tasks.modeling.train.train_model` (tf.data of index triples, feature rows
  gathered inside the step, batch 1024, Adam 3e-3).

Threads of TensorFlow, BLAS and FAISS are pinned (TOWERFLOW_THREADS, default: the cores).
Prints examples per second, the ratio (target >= 5x) and the validation RMSE in stars
(target: towerflow equal or better).

    .venv/bin/python benchmarks/train_throughput.py [--data DIR] [--epochs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

from tasks.runtime import default_threads, pin_threads, set_thread_env

set_thread_env(default_threads())

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tasks.preparation.features import compute_features, per_user_holdout  # noqa: E402
from tasks.preparation.phases import prepared  # noqa: E402
from tasks.preparation.scalers import fit_scalers  # noqa: E402
from tasks.presets import preset  # noqa: E402

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens" / "ml-latest-small"
)


def load(data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ratings and movies as the pipeline's tables (read with pandas: a benchmark, not an
    ingest)."""
    ratings = pd.read_csv(data / "ratings.csv").rename(
        columns={"userId": "user_id", "movieId": "movie_id"}
    )
    movies = pd.read_csv(data / "movies.csv").rename(columns={"movieId": "movie_id"})
    movies["year"] = movies["title"].str.extract(r"\((\d{4})\)\s*$")[0].astype("Int32")
    return ratings, movies


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    threads = default_threads()
    pinned = pin_threads(threads)
    import keras

    from tasks.modeling.model import build_model
    from tasks.modeling.train import predict_scores, train_model
    from tasks.preparation.training import TrainData

    ratings, movies = load(args.data)
    hold = per_user_holdout(ratings, 0.2)
    train, test = ratings[~hold], ratings[hold]
    config = dataclasses.replace(preset("lab"), max_epochs=args.epochs, max_examples=None)
    feats = compute_features(train, movies, np.sort(train["user_id"].unique()), config.features)
    p = prepared(
        feats,
        fit_scalers(
            feats.user_x,
            feats.movie_x,
            train["rating"].to_numpy(),
            feats.user_names,
            feats.movie_names,
        ),
    )
    u, m, y = p.triples(train)
    tu, tm, _ = p.triples(test)
    known = (tu >= 0) & (tm >= 0)
    truth = test["rating"].to_numpy()[known]
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    print(
        f"machine: {cpu}; {len(os.sched_getaffinity(0))} cores; "
        f"Python {platform.python_version()}; keras {keras.__version__}"
    )
    print(f"threads: {pinned}")
    print(
        f"data: {args.data}: {len(u):,} training ratings, {int(known.sum()):,} held out; "
        f"{args.epochs} epochs each"
    )

    def rmse(model: keras.Model) -> float:
        stars = p.scalers.target_to_rating(
            predict_scores(model, p.user_x, p.movie_x, tu[known], tm[known])
        )
        return float(np.sqrt(np.mean((stars - truth) ** 2)))

    # Course-faithful: per-rating copies of the feature rows, Keras fit at batch 32.
    keras.utils.set_random_seed(args.seed)
    course = build_model(p.user_x.shape[1], p.movie_x.shape[1], config)
    course.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate), loss="mse")
    t0 = time.perf_counter()
    # the copies the course makes (timed: part of its cost)
    user_rows, movie_rows = p.user_x[u], p.movie_x[m]
    course.fit(
        [user_rows, movie_rows], y, batch_size=32, epochs=args.epochs, shuffle=True, verbose=0
    )
    t_course = time.perf_counter() - t0
    rmse_course = rmse(course)

    ours_config = dataclasses.replace(config, batch_size=1024, learning_rate=3e-3)
    t0 = time.perf_counter()
    ours = train_model(TrainData(p.user_x, p.movie_x, u, m, y), ours_config, args.seed)
    t_ours = time.perf_counter() - t0
    rmse_ours = rmse(ours.model)

    n = len(u) * args.epochs
    ratio = (n / t_ours) / (n / t_course)
    print(
        f"course-faithful fit (batch 32): {n / t_course:10,.0f} examples/s  ({t_course:6.1f} s)  "
        f"validation RMSE {rmse_course:.4f}"
    )
    print(
        f"towerflow trainer (batch 1024): {n / t_ours:10,.0f} examples/s  ({t_ours:6.1f} s)  "
        f"validation RMSE {rmse_ours:.4f}"
    )
    print(
        f"throughput ratio {ratio:.1f}x (target >= 5x); "
        f"RMSE {'equal or better' if rmse_ours <= rmse_course + 1e-4 else 'WORSE'}"
    )

    # For reference, not part of the ratio: the default preset's recipe (confidence features, each
    # example's rows recomputed without its rating, towers once per rating, in-batch softmax).
    default = preset("default", max_epochs=args.epochs, max_examples=None)
    dfeats = compute_features(train, movies, feats.user_ids, default.features, default.shrinkage)
    dp = prepared(
        dfeats,
        fit_scalers(
            dfeats.user_x,
            dfeats.movie_x,
            train["rating"].to_numpy(),
            dfeats.user_names,
            dfeats.movie_names,
        ),
    )
    t0 = time.perf_counter()
    train_model(dp.train_data(train, default), default, args.seed)
    t_default = time.perf_counter() - t0
    print(
        "default preset (leave-one-out rows, softmax; reference): "
        f"{n / t_default:10,.0f} examples/s  ({t_default:6.1f} s)"
    )
    return 0 if ratio >= 5 and rmse_ours <= rmse_course + 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
