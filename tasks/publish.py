"""The serving half of the nightly job: export, recommend, similar movies, publish.

Everything is built in the run's staging directory; :func:`run_publish`
moves the model directory and the tables into place and writes
``outputs/latest.json`` last, atomically. Until that rename, readers keep
seeing the previous run.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tasks import schemas
from tasks.export import build_index, embed_all, read_index, write_embeddings, write_id_table, write_index
from tasks.layout import Layout
from tasks.stages import load_ratings, prepare
from tasks.storage import read_json, sha256_file, write_json

MODEL_FILES = {
    "keras": "model.keras",
    "scalers": "scalers.json",
    "user_features": "user_features.parquet",
    "movie_features": "movie_features.parquet",
    "index": "movie_index.faiss",
    "index_ids": "movie_index_ids.parquet",
    "movie_embeddings": "movie_embeddings.parquet",
    "user_embeddings": "user_embeddings.parquet",
    "movies": "movies.parquet",  # the ingested catalog (titles, genres) the run served, copied at publish
}


def run_export(model_path: Path, full_dir: Path, scalers_path: Path, model_dir: Path) -> dict[str, Any]:
    """Embed every user and catalog movie with the final model; write index, ids and tables."""
    from tasks.model import load_model

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(Path(full_dir), Path(scalers_path))
    user_emb, movie_emb = embed_all(load_model(Path(model_path)), prepared.user_input, prepared.movie_x)
    write_index(build_index(movie_emb), model_dir / MODEL_FILES["index"])
    write_id_table(model_dir / MODEL_FILES["index_ids"], prepared.feats.movie_ids)
    write_embeddings(model_dir / MODEL_FILES["movie_embeddings"], prepared.feats.movie_ids, movie_emb, "movie")
    write_embeddings(model_dir / MODEL_FILES["user_embeddings"], prepared.feats.user_ids, user_emb, "user")
    shutil.copyfile(model_path, model_dir / MODEL_FILES["keras"])
    for name in ("user_features.parquet", "movie_features.parquet"):
        shutil.copyfile(Path(full_dir) / name, model_dir / name)
    shutil.copyfile(scalers_path, model_dir / MODEL_FILES["scalers"])
    return {"model_dir": str(model_dir), "users": len(user_emb), "movies": len(movie_emb), "dim": int(movie_emb.shape[1])}


def _load_served(model_dir: Path) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from tasks.export import read_embeddings

    index = read_index(model_dir / MODEL_FILES["index"])
    movie_ids = pq.read_table(model_dir / MODEL_FILES["index_ids"]).column("movie_id").to_numpy()
    user_ids, user_emb = read_embeddings(model_dir / MODEL_FILES["user_embeddings"], "user")
    movie_ids_emb, movie_emb = read_embeddings(model_dir / MODEL_FILES["movie_embeddings"], "movie")
    if not np.array_equal(movie_ids, movie_ids_emb) or index.ntotal != len(movie_ids):
        raise ValueError(f"{model_dir}: index, id table and movie embeddings disagree on the movie rows")
    return index, movie_ids, user_ids, user_emb, movie_emb


def run_recommend(
    ratings_path: Path, model_dir: Path, out_path: Path, k: int, model_version: str, chunk_size: int,
    on_chunk: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    from tasks.recommend import seen_csr, write_recommendations
    from tasks.scalers import load_scalers

    model_dir = Path(model_dir)
    index, movie_ids, user_ids, user_emb, _ = _load_served(model_dir)
    indptr, rows = seen_csr(load_ratings(Path(ratings_path)), user_ids, movie_ids)
    scalers = load_scalers(model_dir / MODEL_FILES["scalers"])
    n = write_recommendations(
        Path(out_path), index, movie_ids, user_ids, user_emb, indptr, rows, k,
        scalers.target_to_rating, model_version, chunk_size, on_chunk,
    )  # fmt: skip
    return {"path": str(out_path), "rows": n, "users": len(user_ids)}


def run_similar(model_dir: Path, out_path: Path, k: int, chunk_size: int) -> dict[str, Any]:
    from tasks.recommend import write_similar_movies

    index, movie_ids, _, _, movie_emb = _load_served(Path(model_dir))
    n = write_similar_movies(Path(out_path), index, movie_ids, movie_emb, k, chunk_size)
    return {"path": str(out_path), "rows": n}


def _replace_dir(src: Path, dest: Path) -> None:
    """Move directory ``src`` to ``dest``; an existing ``dest`` is swapped out, then removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    trash = None
    if dest.exists():
        trash = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, trash)
    os.replace(src, dest)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def run_publish(
    layout: Layout,
    run_date: dt.date,
    model_version: str,
    staged_model_dir: Path,
    staged_tables: dict[str, str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Move the model and tables into place, then write ``latest.json`` last, atomically."""
    model_dir = layout.model(model_version)
    shutil.copyfile(layout.store(extra["inputs"]["sha256"]) / "movies.parquet", Path(staged_model_dir) / MODEL_FILES["movies"])
    _replace_dir(Path(staged_model_dir), model_dir)
    tables: dict[str, Any] = {}
    for name, staged in staged_tables.items():
        final = layout.table(name, run_date, model_version)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        tables[name] = {"path": str(final.relative_to(layout.data_dir)), "rows": pq.ParquetFile(final).metadata.num_rows}
    model = {
        key: {"path": str((model_dir / name).relative_to(layout.data_dir)), "sha256": sha256_file(model_dir / name)}
        for key, name in MODEL_FILES.items()
    }
    latest = {
        "run_date": run_date.isoformat(),
        "model_version": model_version,
        "schema_version": schemas.SCHEMA_VERSION,
        "tables": tables,
        "model": model,
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }
    write_json(layout.latest, latest)
    for name in staged_tables:  # older runs' parts of the same partitions are no longer pointed to
        final = layout.table(name, run_date, model_version)
        for other in final.parent.glob("part-*.parquet"):
            if other != final:
                other.unlink(missing_ok=True)
    return latest


def read_latest(data_dir: Path) -> dict[str, Any]:
    """Read ``outputs/latest.json``, with a clear error if nothing has been published yet."""
    path = Layout(Path(data_dir)).latest
    if not path.exists():
        raise FileNotFoundError(f"no published run in {data_dir}: {path} does not exist; run `towerflow run` first")
    latest = read_json(path)
    if latest.get("schema_version") != schemas.SCHEMA_VERSION:
        raise ValueError(f"{path}: schema version {latest.get('schema_version')}, this towerflow reads {schemas.SCHEMA_VERSION}")
    return latest
