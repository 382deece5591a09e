"""The run report's plots as PNG files: training loss curves and the distribution of published
scores.

Plain functions taking data and a path; each PNG is written atomically. They use
matplotlib's object API (``Figure``, no pyplot), so nothing touches a display or
global state and they are safe in any thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.store.storage import atomic_path

DPI = 100


def _save(fig: object, path: Path) -> Path:
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI)  # type: ignore[attr-defined]
    return Path(path)


def loss_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]], path: Path, title: str
) -> Path:
    """Loss and MSE per epoch of each phase (``validate``: train and holdout loss; ``refit``: train
    loss).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    loss_ax, mse_ax = fig.subplots(1, 2)
    styles = {
        "validate": ("tab:blue", "validation model"),
        "refit": ("tab:green", "published model (refit)"),
    }
    for phase, records in histories.items():
        if not records:
            continue
        epochs = [int(r["epoch"]) for r in records]
        color, label = styles.get(phase, ("tab:gray", phase))
        for ax, key in ((loss_ax, "loss"), (mse_ax, "mse")):
            ax.plot(
                epochs,
                [r[key] for r in records],
                marker="o",
                ms=3,
                color=color,
                label=f"{label}, training",
            )
            if f"val_{key}" in records[0]:
                ax.plot(
                    epochs,
                    [r[f"val_{key}"] for r in records],
                    marker="o",
                    ms=3,
                    ls="--",
                    color="tab:orange",
                    label=f"{label}, holdout",
                )
    for ax, name in ((loss_ax, "loss (training objective)"), (mse_ax, "MSE of the scaled rating")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def score_histogram(bin_edges: np.ndarray, counts: Sequence[int], path: Path, title: str) -> Path:
    """Bar chart of a histogram of published scores (inner products in [-1, 1])."""
    from matplotlib.figure import Figure

    edges = np.asarray(bin_edges, dtype=np.float64)
    values = np.asarray(counts, dtype=np.int64)
    if len(edges) != len(values) + 1:
        raise ValueError(f"{len(values)} counts need {len(values) + 1} bin edges, got {len(edges)}")
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.bar(
        edges[:-1],
        values,
        width=np.diff(edges),
        align="edge",
        color="tab:blue",
        edgecolor="white",
        linewidth=0.3,
    )
    nonzero = np.nonzero(values)[0]
    if len(nonzero):  # zoom on the occupied range, with a margin of one bin
        ax.set_xlim(edges[max(0, nonzero[0] - 1)], edges[min(len(values), nonzero[-1] + 2)])
    ax.set_xlabel("score (inner product of user and movie embeddings)")
    ax.set_ylabel("recommendations")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def history_trend(nights: Any, path: Path) -> Path:
    """NDCG@k with its interval and most-popular's per night (left), drift against the published run
    (right).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ndcg_ax, drift_ax = fig.subplots(1, 2)
    x = np.arange(len(nights))
    labels = [f"{d}\n{o}" for d, o in zip(nights["run_date"], nights["outcome"], strict=True)]
    ndcg = nights["ndcg"].astype(float).to_numpy()
    ndcg_ax.fill_between(
        x,
        nights["ndcg_low"].astype(float),
        nights["ndcg_high"].astype(float),
        color="tab:blue",
        alpha=0.2,
    )
    ndcg_ax.plot(x, ndcg, marker="o", ms=4, color="tab:blue", label="two-tower (95% interval)")
    ndcg_ax.plot(
        x,
        nights["most_popular_ndcg"].astype(float),
        marker="s",
        ms=3,
        color="tab:gray",
        label="most-popular",
    )
    refused = (nights["outcome"] != "published").to_numpy()
    if refused.any():
        ndcg_ax.scatter(
            x[refused],
            np.nan_to_num(ndcg[refused]),
            marker="x",
            s=60,
            color="tab:red",
            label="not published",
            zorder=3,
        )
    drift_ax.bar(x, nights["drift"].astype(float).fillna(0.0), color="tab:orange")
    for ax, title in (
        (ndcg_ax, "holdout NDCG@k per night"),
        (drift_ax, "drift: 1 - mean top-k Jaccard vs published"),
    ):
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    ndcg_ax.legend(fontsize=8)
    drift_ax.set_ylim(0, 1)
    return _save(fig, path)
