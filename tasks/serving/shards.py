"""Scoring in shards: per-user top-k by user shard, similar movies by movie shard.

Plain, Prefect-free functions. A shard is a contiguous range of rows of the
exported embedding tables (users and movies sorted by id), so the shards of a
run depend only on the data and ``shard_size``, never on where they run. Each
shard loads the FAISS index and the embeddings from the model directory itself
(paths travel between machines, objects never do), reads only its own users'
ratings, and writes one Parquet part file, atomically. Importing this module
does not import TensorFlow, so a Dask worker starts scoring in about a second.

A user's top-k depends on that user's embedding and history only
(:func:`tasks.serving.recommend.topk_unseen`), so sharding changes which task computes
a row, not the row; the same shards give bit-identical tables on any runner
(another ``shard_size`` can move a score by its last bit: small chunks are
scanned exactly, large ones through FAISS's BLAS path).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tasks.errors import ConfigError, DataError
from tasks.serving.export import read_embeddings
from tasks.serving.popularity import ServingSpace
from tasks.store import schemas
from tasks.store.layout import MODEL_FILES

# histogram of published scores (inner products of unit vectors)
SCORE_BINS = np.linspace(-1.0, 1.0, 81)


def shard_bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of at most ``shard_size`` rows covering ``0..n`` (one empty
    shard if n == 0).
    """
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    count = max(1, math.ceil(n / shard_size))
    return [(i * shard_size, min(n, (i + 1) * shard_size)) for i in range(count)]


@dataclass(frozen=True)
class Served:
    """What scoring reads from a model directory."""

    index: Any  # faiss.Index
    movie_ids: np.ndarray
    movie_emb: np.ndarray
    user_ids: np.ndarray
    user_emb: np.ndarray
    space: ServingSpace


def load_served(model_dir: Path, with_users: bool = True) -> Served:
    """Index, id table and embeddings of a model directory, checked against each other."""
    import faiss

    model_dir = Path(model_dir)
    index_path = model_dir / MODEL_FILES["index"]
    if not index_path.exists():
        raise FileNotFoundError(f"FAISS index not found: {index_path}")
    index = faiss.read_index(str(index_path))
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise DataError(
            f"{index_path}: index metric is {index.metric_type}, expected inner product"
        )
    movie_ids = pq.read_table(model_dir / MODEL_FILES["index_ids"]).column("movie_id").to_numpy()
    emb_ids, movie_emb = read_embeddings(model_dir / MODEL_FILES["movie_embeddings"], "movie")
    if not np.array_equal(movie_ids, emb_ids) or index.ntotal != len(movie_ids):
        raise DataError(
            f"{model_dir}: index, id table and movie embeddings disagree on the movie rows"
        )
    user_ids, user_emb = np.empty(0, np.int64), np.empty((0, movie_emb.shape[1]), np.float32)
    if with_users:
        user_ids, user_emb = read_embeddings(model_dir / MODEL_FILES["user_embeddings"], "user")
    space = ServingSpace.read(model_dir / MODEL_FILES["serving"])
    if space.dim != movie_emb.shape[1] or space.dim != user_emb.shape[1]:
        raise DataError(
            f"{model_dir}: serving.json says {space.dim} dimensions, the embeddings have "
            f"{movie_emb.shape[1]}"
        )
    return Served(index, movie_ids, movie_emb, user_ids, user_emb, space)


def _shard_ratings(ratings_path: Path, user_ids: np.ndarray) -> Any:
    """The (user_id, movie_id) pairs of the users ``user_ids`` (sorted), read with a range
    filter.
    """
    import pandas as pd

    path = Path(ratings_path)
    schemas.check_schema(pq.read_schema(path), schemas.RATINGS, f"reading ratings from {path}")
    if len(user_ids) == 0:
        return pd.DataFrame({"user_id": np.empty(0, np.int64), "movie_id": np.empty(0, np.int64)})
    lo, hi = int(user_ids[0]), int(user_ids[-1])
    filters = [("user_id", ">=", lo), ("user_id", "<=", hi)]
    return pq.read_table(path, columns=["user_id", "movie_id"], filters=filters).to_pandas()


def _score_hist(path: Path) -> list[int]:
    scores = pq.read_table(path, columns=["score"]).column("score").to_numpy()
    return [int(c) for c in np.histogram(np.clip(scores, -1.0, 1.0), bins=SCORE_BINS)[0]]


def allowed_movies(
    rules: dict[str, Any] | None, movies_path: Path | None, movie_ids: np.ndarray
) -> np.ndarray | None:
    """The mask over index rows that the night's business rules let through; None when there are
    none.
    """
    from tasks.serving.rules import Rules

    parsed = Rules.from_document(rules)
    if parsed.empty:
        return None
    if movies_path is None:
        raise ConfigError("business rules need the movie catalog (movies_path)")
    catalog = pq.read_table(Path(movies_path), columns=["movie_id", "genres", "year"]).to_pandas()
    return parsed.allowed(catalog, movie_ids)


def run_recommend_shard(
    ratings_path: Path,
    model_dir: Path,
    out_path: Path,
    k: int,
    model_version: str,
    chunk_size: int,
    start: int,
    stop: int,
    on_chunk: Callable[[int, int], None] | None = None,
    rules: dict[str, Any] | None = None,
    movies_path: Path | None = None,
) -> dict[str, Any]:
    """Top-k unseen movies of users ``start:stop`` (rows of ``user_embeddings``), written to
    ``out_path``.

    ``rules`` (a :class:`tasks.serving.rules.Rules` document) limit which catalog movies
    (``movies_path``) may appear. Returns the part's path, rows, users and a histogram of its scores
    over
    :data:`SCORE_BINS`.
    """
    from tasks.preparation.scalers import load_scalers
    from tasks.serving.recommend import seen_csr, write_recommendations

    served = load_served(Path(model_dir))
    user_ids = served.user_ids[start:stop]
    indptr, rows = seen_csr(
        _shard_ratings(Path(ratings_path), user_ids), user_ids, served.movie_ids
    )
    scalers = load_scalers(Path(model_dir) / MODEL_FILES["scalers"])
    user_emb = served.user_emb[start:stop]

    def stars(
        queries: np.ndarray, items: np.ndarray
    ) -> np.ndarray:  # the model's own dot product, in stars
        return scalers.target_to_rating(
            served.space.tower_scores(user_emb[queries], served.movie_emb[items])
        )

    allowed = allowed_movies(rules, movies_path, served.movie_ids)
    n = write_recommendations(
        Path(out_path),
        served.index,
        served.movie_ids,
        user_ids,
        user_emb,
        indptr,
        rows,
        k,
        stars,
        model_version,
        chunk_size,
        on_chunk,
        allowed,
    )
    return {
        "path": str(out_path),
        "rows": n,
        "users": len(user_ids),
        "score_hist": _score_hist(Path(out_path)),
    }


def run_similar_shard(
    model_dir: Path,
    out_path: Path,
    k: int,
    chunk_size: int,
    start: int,
    stop: int,
    rules: dict[str, Any] | None = None,
    movies_path: Path | None = None,
) -> dict[str, Any]:
    """The k nearest other movies of movies ``start:stop`` (rows of the index), written to
    ``out_path``.

    Only movies the ``rules`` allow appear in the lists; every movie still gets its list.
    """
    from tasks.serving.recommend import write_similar_movies

    served = load_served(Path(model_dir), with_users=False)
    # by the towers' similarity, not popularity
    queries = served.space.content_queries(served.movie_emb)
    allowed = allowed_movies(rules, movies_path, served.movie_ids)
    n = write_similar_movies(
        Path(out_path), served.index, served.movie_ids, queries, k, chunk_size, start, stop, allowed
    )
    return {"path": str(out_path), "rows": n, "movies": stop - start}


def count_rows(model_dir: Path) -> dict[str, int]:
    """Users and movies of an exported model directory (what the shards are cut from)."""
    model_dir = Path(model_dir)
    return {
        "users": pq.ParquetFile(model_dir / MODEL_FILES["user_embeddings"]).metadata.num_rows,
        "movies": pq.ParquetFile(model_dir / MODEL_FILES["index_ids"]).metadata.num_rows,
    }
