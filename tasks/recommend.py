"""Per-user top-k and similar movies from the FAISS index, streamed to Parquet in chunks.

Seen movies are excluded by over-fetching: users are sorted by history length
and processed in chunks; each chunk asks FAISS for a few more than ``k``
results, masks the seen ones with one vectorized membership test, and asks
again, with a doubled fetch, only for the users still short of ``k`` (see
:func:`topk_unseen`). Memory is bounded by ``chunk_size * fetch`` results; no
dense users x movies matrix is built.
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


def _search_unseen(
    index: faiss.Index, queries: np.ndarray, seen: list[np.ndarray], k: int, fetch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One FAISS search of ``fetch`` results per query; (valid mask, rank, items, scores)."""
    scores, items = index.search(np.ascontiguousarray(queries), fetch)
    n_items = index.ntotal
    lengths = np.fromiter((len(s) for s in seen), dtype=np.int64, count=len(seen))
    if lengths.sum():
        seen_keys = np.repeat(np.arange(len(seen), dtype=np.int64), lengths) * n_items + np.concatenate(seen)
        keys = np.arange(len(seen), dtype=np.int64)[:, None] * n_items + items
        valid = (items >= 0) & ~np.isin(keys, seen_keys)
    else:
        valid = items >= 0
    return valid, np.cumsum(valid, axis=1), items, scores


def topk_unseen(
    index: faiss.Index,
    queries: np.ndarray,
    seen_indptr: np.ndarray,
    seen_rows: np.ndarray,
    k: int,
    chunk_size: int = 4096,
    first_extra: int = 32,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (query rows, ranks, index rows, scores) of each query's best ``k`` unseen items.

    ``seen_indptr``/``seen_rows`` is a CSR over queries: the index rows query i
    has already seen are ``seen_rows[seen_indptr[i]:seen_indptr[i+1]]``.
    Results are grouped by query, best first; a query gets fewer than ``k``
    rows only when fewer than ``k`` unseen items exist.

    Each chunk first asks FAISS for ``k + min(first_extra, largest history)``
    results; the few queries left with fewer than ``k`` unseen items (heavy
    raters whose seen movies crowd their top) are asked again with twice the
    fetch, up to ``k`` plus their own history, which is always enough. So the
    cost follows what each user needs, not the heaviest user of the chunk.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_items = index.ntotal
    counts = np.diff(seen_indptr)
    order = np.argsort(counts, kind="stable")
    for start in range(0, len(order), chunk_size):
        rows = order[start : start + chunk_size]
        seen = [seen_rows[seen_indptr[r] : seen_indptr[r + 1]] for r in rows]
        needed = np.minimum(n_items, k + counts[rows])  # fetching this much always suffices
        done_rank = np.zeros((len(rows), k), dtype=np.int32)
        done_item = np.full((len(rows), k), -1, dtype=np.int64)
        done_score = np.zeros((len(rows), k), dtype=np.float32)
        pending = np.arange(len(rows))
        fetch = int(min(n_items, k + min(first_extra, int(counts[rows].max()))))
        while len(pending):
            valid, rank, items, scores = _search_unseen(index, queries[rows[pending]], [seen[i] for i in pending], k, fetch)
            complete = (rank[:, -1] >= k) | (fetch >= needed[pending])
            keep = valid & (rank <= k) & complete[:, None]
            q_local, col = np.nonzero(keep)
            slot = rank[keep] - 1
            done_rank[pending[q_local], slot] = rank[keep]
            done_item[pending[q_local], slot] = items[q_local, col]
            done_score[pending[q_local], slot] = scores[q_local, col]
            pending = pending[~complete]
            fetch = int(min(n_items, max(2 * fetch, k + 1), needed[pending].max() if len(pending) else n_items))
        filled = done_item >= 0
        q_local, _ = np.nonzero(filled)
        yield rows[q_local], done_rank[filled], done_item[filled], done_score[filled]


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
