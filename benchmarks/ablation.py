"""Ablation: what L2 normalization and the [-1, 1] rating target buy (README "Why normalize and
scale").

Trains the lab preset (a), without L2 normalization (b), with the target left in
stars (c), with neither (d), and the default preset for reference, on the
per-user temporal split of ``towerflow evaluate`` with one seed, and prints two
markdown tables. Writes the tables, the numbers (JSON) and the plot of training
loss and gradient norm per epoch to --out. Needs matplotlib (the ``dev`` extra).

    .venv/bin/python benchmarks/ablation.py [--data DIR] [--seed N] [--max-epochs N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens" / "ml-latest-small"
)


def load(data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ratings and movies as ``towerflow evaluate`` reads them (through ingest), else straight from
    the CSVs.
    """
    try:
        from tasks.ingestion.ingest import ingest
        from tasks.store.tables import load_movies, load_ratings
    except (
        ImportError,
        SyntaxError,
    ) as exc:  # ingest is being rewritten; the clean MovieLens CSVs need no checks
        print(
            f"tasks.ingestion.ingest unavailable ({exc}); reading the CSVs with pandas",
            file=sys.stderr,
        )
        return _read_csvs(data)
    with tempfile.TemporaryDirectory(prefix="towerflow-ablation-") as tmp:
        r, m, _ = ingest(data / "ratings.csv", data / "movies.csv", Path(tmp))
        return load_ratings(r), load_movies(m)


def _read_csvs(data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    ratings = pd.read_csv(data / "ratings.csv").rename(
        columns={"userId": "user_id", "movieId": "movie_id"}
    )
    ratings = ratings.astype(
        {"user_id": "int64", "movie_id": "int64", "rating": "float32", "timestamp": "int64"}
    )
    movies = pd.read_csv(data / "movies.csv").rename(columns={"movieId": "movie_id"})
    movies["year"] = (
        movies["title"].str.strip().str.extract(r"\((\d{4})\)$", expand=False).astype("Int32")
    )
    return ratings[ratings["movie_id"].isin(movies["movie_id"])], movies[
        ["movie_id", "title", "genres", "year"]
    ]


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _norm(n: dict[str, float]) -> str:
    return f"{n['mean']:.3g} [{n['min']:.3g}, {n['max']:.3g}]"


def _opt(value: float, fmt: str) -> str:
    return "" if np.isnan(value) else format(value, fmt)


def tables(rows: list[dict[str, Any]], popular: dict[str, float], k: int) -> str:
    """The three markdown tables of the README section: ratings, ranking, training and geometry."""
    ratings = _md(
        [
            "variant",
            "L2",
            "target",
            "RMSE (stars, clipped)",
            "RMSE unclipped",
            "predicted, held-out pairs",
            "outside [0.5, 5] before clipping: held-out / all unseen pairs",
            "unseen movies per user above 5 stars",
        ],
        [
            [
                r["variant"],
                "yes" if r["normalize"] else "no",
                r["target"],
                f"{r['rmse']:.3f}",
                f"{r['rmse_unclipped']:.3f}",
                f"{r['pred_min']:.2f} to {r['pred_max']:.2f}",
                f"{r['outside_test']:.2%} / {r['outside_all']:.2%}",
                f"{r['above_max']:.2f}",
            ]
            for r in rows
        ],
    )
    ranking = _md(
        [
            "variant",
            f"NDCG@{k}",
            "coverage",
            f"FAISS top-{k} within the model's top-{k} by predicted stars (up to ties)",
            f"exact overlap@{k} (ties broken differently)",
            f"unseen movies scoring >= the {k}th best (mean per user)",
            f"users whose top-{k} all clip to 5 stars",
        ],
        [
            [
                r["variant"],
                f"{r['ndcg']:.4f}",
                f"{r['coverage']:.3f}",
                f"{r['faiss_valid']:.3f}",
                f"{r['faiss_overlap']:.3f}",
                f"{r['at_cut']:.1f}",
                f"{r['tied_top']:.1%}",
            ]
            for r in rows
        ]
        + [
            [
                "most-popular (reference)",
                f"{popular['ndcg']:.4f}",
                f"{popular['coverage']:.3f}",
                "",
                "",
                "",
                "",
            ]
        ],
    )
    geometry = _md(
        [
            "variant",
            "train RMSE (stars), epoch 1 → last",
            "gradient norm, epoch mean 1 → last",
            "gradient norm max",
            "user embedding norm mean [min, max]",
            "movie embedding norm mean [min, max]",
            "concentration users / movies (1 = one direction)",
            "distinct vectors users / movies",
            f"similar movies: inner product vs cosine (overlap@{k})",
            "catalog share that is anyone's neighbour: inner product / cosine",
            "Spearman of movie norm with log count / mean rating",
            "epochs, train time",
        ],
        [
            [
                r["variant"],
                f"{r['train_rmse_first']:.3f} → {r['train_rmse_last']:.3f}",
                f"{r['grad_first']:.3g} → {r['grad_last']:.3g}",
                f"{r['grad_max']:.3g}",
                _norm(r["user_norm"]),
                _norm(r["movie_norm"]),
                f"{r['user_norm']['concentration']:.2f} / {r['movie_norm']['concentration']:.2f}",
                f"{r['user_norm']['distinct']:.0%} / {r['movie_norm']['distinct']:.0%}",
                f"{r['similar_ip_vs_cos']:.3f}",
                f"{r['similar_distinct_ip']:.3f} / {r['similar_distinct_cos']:.3f}",
                f"{_opt(r['norm_vs_count'], '+.2f')} / {_opt(r['norm_vs_mean'], '+.2f')}"
                if not r["normalize"]
                else "",
                f"{r['epochs']}, {r['seconds']:.0f} s",
            ]
            for r in rows
        ],
    )
    return "\n\n".join([ratings, ranking, geometry])


def plot(histories: dict[str, list[dict[str, float]]], path: Path) -> Path:
    """Training RMSE in stars and mean global gradient norm, per epoch, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.1), dpi=80)
    low = min(h["train_rmse_stars"] for hist in histories.values() for h in hist)
    top = max(1.0, low + 0.25)
    for name, hist in histories.items():
        epochs = [h["epoch"] for h in hist]
        style = "--" if name.startswith("default") else "-"
        line = left.plot(
            epochs, [min(h["train_rmse_stars"], top) for h in hist], style, label=name
        )[0]
        if any(h["train_rmse_stars"] > top for h in hist):
            flat = hist[-1]["train_rmse_stars"]
            left.annotate(f"{name}: {flat:.2f} stars, off the scale",
                          (epochs[len(epochs) // 2], top), xytext=(0, -12),
                          textcoords="offset points", ha="center", fontsize=8,
                          color=line.get_color())  # fmt: skip
        right.plot(epochs, [h["grad_norm_mean"] for h in hist], style, label=name)
    left.set(
        xlabel="epoch",
        ylabel="training RMSE (stars)",
        ylim=(low - 0.02, top + 0.005),
        title="training loss (MSE, shown as RMSE in stars)",
    )
    right.set(
        xlabel="epoch",
        ylabel="global gradient norm (epoch mean)",
        yscale="log",
        title="gradient norm of the training loss",
    )
    fig.legend(
        *left.get_legend_handles_labels(),
        loc="lower center",
        ncol=len(histories),
        fontsize=8,
        frameon=False,
    )
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="directory with ratings.csv and movies.csv"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of each user's most recent ratings held out",
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        help="cap every variant's epochs (default: the presets' own, 30 for the lab)",
    )
    parser.add_argument(
        "--only",
        action="append",
        help="run only variants whose name contains this (repeatable), e.g. '(a)'",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("ablation-out"),
        help="directory for the plot, tables and numbers",
    )
    args = parser.parse_args()
    if not (args.data / "ratings.csv").exists():
        print(
            f"no ratings.csv in {args.data}; download ml-latest-small from GroupLens and "
            "pass --data",
            file=sys.stderr,
        )
        return 2
    import ablation_measures as ablation  # beside this script

    from tasks.evaluation.evaluate import compare
    from tasks.preparation.features import per_user_holdout
    from tasks.runtime import default_threads, pin_threads

    threads = default_threads()
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python "
        f"{platform.python_version()}, {threads} threads"
    )
    pin_threads(threads)
    started = time.perf_counter()
    ratings, movies = load(args.data)
    hold = per_user_holdout(ratings, args.holdout)
    train, test = ratings[~hold], ratings[hold]
    print(
        f"per-user temporal split: {len(train):,} train / {len(test):,} held-out ratings, "
        f"{len(movies):,} movies, seed {args.seed}"
    )
    rows, histories = ablation.run(
        train, test, movies, args.seed, args.k, args.max_epochs, args.only, log=print
    )
    popular = (
        compare(train, test, movies, {}, k=args.k, seed=args.seed, with_als=False).iloc[0].to_dict()
    )
    text = tables(rows, popular, args.k)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.md").write_text(text + "\n")
    (args.out / "ablation.json").write_text(
        json.dumps({"rows": rows, "histories": histories}, indent=1, default=float) + "\n"
    )
    print(
        f"\nplot: {plot(histories, args.out / 'ablation-loss.png')}; tables and numbers: {args.out}"
    )
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run())
