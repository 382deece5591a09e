"""Per-user top-k and similar movies from the FAISS index, streamed to Parquet in chunks.

Seen movies are excluded by over-fetching: users are sorted by history length
and processed in chunks, each chunk asks FAISS for ``k + (largest history in
the chunk)`` results, and the seen ones are masked with one vectorized
membership test. Memory is bounded by ``chunk_size * fetch`` results; no dense
users x movies matrix is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa

from tasks import schemas
from tasks.storage import TableWriter


def seen_csr(ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, index rows) of the movies each user has rated, over ``user_ids`` order."""
    u = pd.Index(user_ids).get_indexer(ratings["user_id"].to_numpy())
    m = pd.Index(movie_ids).get_indexer(ratings["movie_id"].to_numpy())
    known = (u >= 0) & (m >= 0)  # ratings of other users or movies do not concern these queries
    u, m = u[known], m[known]
    order = np.lexsort((m, u))
    indptr = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=len(user_ids)), out=indptr[1:])
    return indptr, m[order].astype(np.int64)


def topk_unseen(
    index: faiss.Index,
    queries: np.ndarray,
    seen_indptr: np.ndarray,
    seen_rows: np.ndarray,
    k: int,
    chunk_size: int = 4096,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (query rows, ranks, index rows, scores) of each query's best ``k`` unseen items.

    ``seen_indptr``/``seen_rows`` is a CSR over queries: the index rows query i
    has already seen are ``seen_rows[seen_indptr[i]:seen_indptr[i+1]]``.
    Results are grouped by query, best first; a query gets fewer than ``k``
    rows only when fewer than ``k`` unseen items exist.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_items = index.ntotal
    counts = np.diff(seen_indptr)
    order = np.argsort(counts, kind="stable")
    for start in range(0, len(order), chunk_size):
        rows = order[start : start + chunk_size]
        fetch = int(min(n_items, k + counts[rows].max()))
        scores, items = index.search(np.ascontiguousarray(queries[rows]), fetch)
        local = np.repeat(np.arange(len(rows), dtype=np.int64), counts[rows])
        seen = (
            np.concatenate([seen_rows[seen_indptr[r] : seen_indptr[r + 1]] for r in rows]) if counts[rows].sum() else np.empty(0, np.int64)
        )
        seen_keys = local * n_items + seen.astype(np.int64)
        keys = np.arange(len(rows), dtype=np.int64)[:, None] * n_items + items
        valid = (items >= 0) & ~np.isin(keys, seen_keys)
        rank = np.cumsum(valid, axis=1)
        keep = valid & (rank <= k)
        q_local, _ = np.nonzero(keep)
        yield rows[q_local], rank[keep].astype(np.int32), items[keep], scores[keep]


def write_recommendations(
    path: Path,
    index: faiss.Index,
    movie_ids: np.ndarray,
    user_ids: np.ndarray,
    user_emb: np.ndarray,
    seen_indptr: np.ndarray,
    seen_rows: np.ndarray,
    k: int,
    to_stars: Callable[[np.ndarray], np.ndarray],
    model_version: str,
    chunk_size: int = 4096,
    on_chunk: Callable[[int, int], None] | None = None,
) -> int:
    """Stream the recommendations table to ``path``; return its row count."""
    writer = TableWriter(path, schemas.RECOMMENDATIONS, "recommendations", {"model_version": model_version})
    done = 0
    try:
        for q, rank, items, scores in topk_unseen(index, user_emb, seen_indptr, seen_rows, k, chunk_size):
            writer.write(
                pa.table(
                    {
                        "user_id": pa.array(user_ids[q], pa.int64()),
                        "rank": pa.array(rank, pa.int32()),
                        "movie_id": pa.array(movie_ids[items], pa.int64()),
                        "score": pa.array(scores, pa.float32()),
                        "predicted_rating": pa.array(to_stars(scores), pa.float32()),
                        "model_version": pa.array([model_version] * len(q), pa.string()),
                    }
                )
            )
            done += len(np.unique(q))
            if on_chunk is not None:
                on_chunk(done, len(user_ids))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.rows


def write_similar_movies(
    path: Path,
    index: faiss.Index,
    movie_ids: np.ndarray,
    movie_emb: np.ndarray,
    k: int,
    chunk_size: int = 4096,
) -> int:
    """Stream the k nearest other movies of every movie to ``path``; return the row count."""
    n = len(movie_ids)
    self_ptr = np.arange(n + 1, dtype=np.int64)  # each movie "has seen" itself
    self_rows = np.arange(n, dtype=np.int64)
    writer = TableWriter(path, schemas.SIMILAR_MOVIES, "similar_movies")
    try:
        for q, rank, items, scores in topk_unseen(index, movie_emb, self_ptr, self_rows, k, chunk_size):
            writer.write(
                pa.table(
                    {
                        "movie_id": pa.array(movie_ids[q], pa.int64()),
                        "rank": pa.array(rank, pa.int32()),
                        "similar_movie_id": pa.array(movie_ids[items], pa.int64()),
                        "score": pa.array(scores, pa.float32()),
                    }
                )
            )
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.rows
