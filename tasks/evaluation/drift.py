"""How far tonight's recommendations move from the published run's, and what they look like beyond
accuracy.

Against the run latest.json points to, over the users both have lists for: the mean Jaccard overlap
of the top-k sets, the share of users whose list changed (other movies or another order), and how
the score distribution shifted (mean, and the Kolmogorov-Smirnov statistic). Of each run's lists,
the measures people ask recommender peers for: catalog coverage, novelty (mean popularity rank of
what is recommended, 1 = the most rated movie), intra-list genre diversity (mean pairwise cosine
distance of the genre vectors within a list) and personalization (1 - mean Jaccard overlap between
different users' lists, on a seeded sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse as sp
from scipy.stats import ks_2samp

from tasks.preparation.features import genre_matrix

if TYPE_CHECKING:
    from tasks.store.latest import Latest

_DIVERSITY_ROWS = 20_000  # users per chunk of the diversity sums
PERSONALIZATION_SAMPLE = 2000  # users whose pairwise overlaps measure personalization
DRIFT_ALERT = 0.5  # 1 - mean Jaccard at or above this: the night "drifted" (an event, an alert)


def read_lists(parts: Sequence[Path]) -> pd.DataFrame:
    """user_id, rank, movie_id, score of recommendation part files, sorted by user and rank."""
    frames = [
        pq.read_table(p, columns=["user_id", "rank", "movie_id", "score"]).to_pandas()
        for p in parts
    ]
    out = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["user_id", "rank", "movie_id", "score"])
    )
    return out.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)


def _grid(lists: pd.DataFrame, catalog: pd.Index) -> np.ndarray:
    """Each user's list as a row of catalog positions (users in sorted order, -1 pads and unknown
    movies).
    """
    users, row = np.unique(lists["user_id"].to_numpy(), return_inverse=True)
    col = lists.groupby("user_id").cumcount().to_numpy()
    grid = np.full((len(users), int(col.max()) + 1 if len(col) else 0), -1, dtype=np.int64)
    grid[row, col] = catalog.get_indexer(pd.Index(lists["movie_id"]))
    return grid


def _matrix(lists: pd.DataFrame, users: np.ndarray, movies: pd.Index) -> sp.csr_matrix:
    rows = pd.Index(users).get_indexer(pd.Index(lists["user_id"]))
    cols = movies.get_indexer(pd.Index(lists["movie_id"]))
    keep = (rows >= 0) & (cols >= 0)
    return sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])),
        shape=(len(users), len(movies)),
    )


def beyond_accuracy(
    lists: pd.DataFrame, movies: pd.DataFrame, popularity_rank: pd.Series, seed: int = 0
) -> dict[str, float | None]:
    """Coverage, novelty, intra-list diversity and personalization of one run's lists."""
    catalog = pd.Index(movies["movie_id"].to_numpy(np.int64))
    if lists.empty:
        return {"coverage": 0.0, "novelty": None, "diversity": None, "personalization": None}
    genres = genre_matrix(movies["genres"]).astype(np.float32)
    norms = np.linalg.norm(genres, axis=1, keepdims=True)
    unit = np.divide(genres, norms, out=np.zeros_like(genres), where=norms > 0)
    grid = _grid(lists, catalog)  # users x k catalog rows, -1 pads
    parts: list[np.ndarray] = []
    # in chunks: memory of rows x k x genres, never x k
    for lo in range(0, len(grid), _DIVERSITY_ROWS):
        rows = grid[lo : lo + _DIVERSITY_ROWS]
        vectors = np.where(rows[..., None] >= 0, unit[np.maximum(rows, 0)], 0.0)
        total = vectors.sum(axis=1)
        # sum over pairs i != j of cos(i, j) = |sum of unit vectors|^2 - sum of their squared norms
        off_diagonal = (total * total).sum(axis=1) - (vectors * vectors).sum(axis=(1, 2))
        n = (rows >= 0).sum(axis=1)
        pairs = n * (n - 1)
        parts.append(1.0 - off_diagonal[pairs > 0] / pairs[pairs > 0])
    diversity = np.concatenate(parts) if parts else np.zeros(0)
    users = np.unique(lists["user_id"].to_numpy())
    sample = np.sort(
        np.random.default_rng(seed).choice(
            users, min(len(users), PERSONALIZATION_SAMPLE), replace=False
        )
    )
    x = _matrix(lists[lists["user_id"].isin(sample)], sample, catalog)
    overlap = (x @ x.T).toarray()
    sizes = np.asarray(x.sum(axis=1)).ravel()
    union = sizes[:, None] + sizes[None, :] - overlap
    jaccard = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
    off = ~np.eye(len(sample), dtype=bool)
    return {
        "coverage": float(lists["movie_id"].nunique() / len(catalog)),
        "novelty": float(popularity_rank.reindex(lists["movie_id"].to_numpy()).mean()),
        "diversity": float(np.mean(diversity))
        if len(diversity)
        else None,  # None: no list of two or more
        "personalization": float(1.0 - jaccard[off].mean()) if len(sample) > 1 else None,
    }


def popularity_rank(ratings: pd.DataFrame, movies: pd.DataFrame) -> pd.Series:
    """Each catalog movie's rank by number of ratings (1 = most rated; ties share the best rank)."""
    counts = (
        ratings["movie_id"]
        .value_counts()
        .reindex(movies["movie_id"].to_numpy(np.int64), fill_value=0)
    )
    return counts.rank(ascending=False, method="min")


def versus(new: pd.DataFrame, old: pd.DataFrame) -> dict[str, float]:
    """Overlap and score shift of ``new`` lists against ``old`` ones, over the users both have."""
    both = np.intersect1d(new["user_id"].unique(), old["user_id"].unique())
    if len(both) == 0:
        return {"users_compared": 0.0}
    a, b = new[new["user_id"].isin(both)], old[old["user_id"].isin(both)]
    movies = pd.Index(np.union1d(a["movie_id"].unique(), b["movie_id"].unique()))
    x, y = _matrix(a, both, movies), _matrix(b, both, movies)
    overlap = np.asarray(x.multiply(y).sum(axis=1)).ravel()
    union = np.asarray(x.sum(axis=1)).ravel() + np.asarray(y.sum(axis=1)).ravel() - overlap
    jaccard = np.divide(overlap, union, out=np.ones_like(overlap), where=union > 0)
    ga, gb = _grid(a, movies), _grid(b, movies)
    width = max(ga.shape[1], gb.shape[1])
    ga, gb = (np.pad(g, ((0, 0), (0, width - g.shape[1])), constant_values=-1) for g in (ga, gb))
    changed = int((ga != gb).any(axis=1).sum())
    ks = ks_2samp(new["score"].to_numpy(), old["score"].to_numpy())
    mean_jaccard = float(np.mean(jaccard))
    return {
        "users_compared": float(len(both)),
        "mean_jaccard": mean_jaccard,
        "drift": 1.0 - mean_jaccard,
        "changed_share": changed / len(both),
        "score_mean_shift": float(new["score"].mean() - old["score"].mean()),
        "score_ks": float(ks.statistic),
    }


def measure(
    new_parts: Sequence[Path],
    old_parts: Sequence[Path] | None,
    ratings: pd.DataFrame,
    movies: pd.DataFrame,
    old_version: str | None,
) -> dict[str, Any]:
    """Tonight's lists against the published run's (``old_parts``; None when nothing is
    published).
    """
    new = read_lists(new_parts)
    ranks = popularity_rank(ratings, movies)
    out: dict[str, Any] = {"lists": beyond_accuracy(new, movies, ranks)}
    if old_parts:
        old = read_lists(old_parts)
        out["published"] = {"model_version": old_version, **beyond_accuracy(old, movies, ranks)}
        out["versus_published"] = versus(new, old)
        out["drifted"] = bool(out["versus_published"].get("drift", 0.0) >= DRIFT_ALERT)
    return out


def read_published_parts(data_dir: Path, latest: Latest | None) -> list[Path] | None:
    """The recommendation part files latest.json names (None if none, or if one is missing)."""
    table = latest.tables.get("recommendations") if latest is not None else None
    files = table.files if table is not None else None
    if not files:
        return None
    parts = [Path(data_dir) / f for f in files]
    return parts if all(p.exists() for p in parts) else None


def run_drift(
    new_parts: Sequence[str],
    latest_path: Path,
    ratings_path: Path,
    movies_path: Path,
    metrics: dict[str, Any] | None,
    out_path: Path,
) -> dict[str, Any]:
    """The drift stage: :func:`measure` against the run ``latest_path`` names; writes the metrics
    table with it.

    The table (``out_path``) holds the holdout ``metrics`` (if any) and the drift, as rows of
    ``lists``, ``published lists`` and ``versus published``.
    """
    from tasks.evaluation.quality import write_metrics
    from tasks.store.latest import comparable_latest
    from tasks.store.tables import load_movies, load_ratings

    latest = comparable_latest(Path(latest_path).parent.parent)
    old = read_published_parts(Path(latest_path).parent.parent, latest)
    drift = measure(
        [Path(p) for p in new_parts],
        old,
        load_ratings(Path(ratings_path)),
        load_movies(Path(movies_path)),
        latest.model_version if latest is not None else None,
    )
    rows = dict(metrics or {})
    rows["lists"] = drift["lists"]
    if "versus_published" in drift:
        rows["published lists"] = {
            k: v for k, v in drift["published"].items() if k != "model_version"
        }
        rows["versus published"] = drift["versus_published"]
    tables = {
        name: {k: float(v) for k, v in values.items() if v is not None}
        for name, values in rows.items()
    }
    write_metrics(Path(out_path), tables)
    return drift
