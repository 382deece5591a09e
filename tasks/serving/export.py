"""Export embeddings: run both towers, write the FAISS inner-product index and the tables.

Row i of the FAISS index is row i of the movie id table and of the
``movie_embeddings`` table. Every catalog movie is embedded, including movies
nobody rated, from their content features (cold start).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import pyarrow as pa

from tasks.errors import DataError
from tasks.store import schemas
from tasks.store.storage import atomic_path, read_table, write_table

# Keras is imported where a tower runs, so reading an index or embeddings never loads TensorFlow
if TYPE_CHECKING:
    import keras

    from tasks.preparation.training import TowerInput

NORM_TOLERANCE = 1e-3


def embed(tower: keras.Model, x: TowerInput, batch: int = 65536) -> np.ndarray:
    """Run a tower over feature rows; the tower's last layer already L2-normalizes."""
    from tasks.modeling.model import run_tower

    out = run_tower(tower, x, batch)
    norms = np.linalg.norm(out, axis=1)
    bad = ~((np.abs(norms - 1.0) < NORM_TOLERANCE) | (norms == 0.0))
    if bad.any():
        raise ValueError(
            f"tower {tower.name} produced a non-unit embedding at row {int(np.argmax(bad))} "
            f"(norm {norms[bad][0]:.6f})"
        )
    return np.ascontiguousarray(out)


def embed_all(
    model: keras.Model, user_x: TowerInput, movie_x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(user embeddings, movie embeddings) for scaled feature rows."""
    from tasks.modeling.model import towers

    user_tower, movie_tower = towers(model)
    return embed(user_tower, user_x), embed(movie_tower, movie_x)


def build_index(movie_emb: np.ndarray) -> faiss.Index:
    """Exact inner-product index (``IndexFlatIP``, metric set explicitly) over unit vectors."""
    index = faiss.IndexFlat(movie_emb.shape[1], faiss.METRIC_INNER_PRODUCT)
    index.add(np.ascontiguousarray(movie_emb, dtype=np.float32))
    return index


def write_index(index: faiss.Index, path: Path) -> Path:
    with atomic_path(Path(path)) as tmp:
        faiss.write_index(index, str(tmp))
    return Path(path)


def read_index(path: Path) -> faiss.Index:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"FAISS index not found: {path}")
    index = faiss.read_index(str(path))
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise DataError(f"{path}: index metric is {index.metric_type}, expected inner product")
    return index


def write_embeddings(path: Path, ids: np.ndarray, emb: np.ndarray, kind: str) -> Path:
    """Write ``movie_embeddings`` or ``user_embeddings`` (id int64, fixed-size list of float32)."""
    dim = emb.shape[1]
    schema = (
        schemas.movie_embeddings_schema(dim)
        if kind == "movie"
        else schemas.user_embeddings_schema(dim)
    )
    values = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=pa.float32()), dim)
    table = pa.table(
        {f"{kind}_id": pa.array(ids, type=pa.int64()), "embedding": values}, schema=schema
    )
    return write_table(path, table, schema, f"{kind}_embeddings")


def read_embeddings(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Read an embeddings table back as (ids, float32 matrix)."""
    import pyarrow.parquet as pq

    dim = pq.read_schema(path).field("embedding").type.list_size
    schema = (
        schemas.movie_embeddings_schema(dim)
        if kind == "movie"
        else schemas.user_embeddings_schema(dim)
    )
    table = read_table(path, schema, f"{kind}_embeddings")
    flat = table.column("embedding").combine_chunks().flatten().to_numpy()
    return table.column(f"{kind}_id").to_numpy(), flat.reshape(-1, dim).astype(np.float32)


def write_id_table(path: Path, movie_ids: np.ndarray) -> Path:
    return write_table(
        path,
        pa.table({"movie_id": pa.array(movie_ids, type=pa.int64())}),
        schemas.MOVIE_INDEX_IDS,
        "movie_index_ids",
    )
