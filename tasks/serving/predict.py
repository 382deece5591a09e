"""Score user/movie pairs with the latest published model (``towerflow predict``).

Predictions are the model's own dot products, read from the published user and
movie embeddings (the vectors behind the recommendations' ``score``, without
their popularity prior: :mod:`tasks.serving.popularity`), mapped back to stars.
Movies in the catalog but never rated have embeddings from their content
features (cold start). A user or movie the published model does not know gets
a null prediction and a per-row ``error`` that says why, never a made-up value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks.ingestion.ingest import InputError
from tasks.store import schemas
from tasks.store.layout import read_latest, verified
from tasks.store.storage import write_table

PAIR_COLUMNS = (("userId", "movieId"), ("user_id", "movie_id"))


def read_pairs(path: Path) -> pd.DataFrame:
    """Read ``userId,movieId`` (or ``user_id,movie_id``) pairs from CSV or Parquet."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: pairs file not found")
    try:
        table = pq.read_table(path) if path.suffix.lower() in {".parquet", ".pq"} else pacsv.read_csv(path)
    except pa.ArrowInvalid as exc:
        raise InputError(f"{path}: cannot read pairs ({exc})") from exc
    for user_col, movie_col in PAIR_COLUMNS:
        if user_col in table.column_names and movie_col in table.column_names:
            try:
                users = table.column(user_col).cast(pa.int64()).to_numpy()
                movies = table.column(movie_col).cast(pa.int64()).to_numpy()
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise InputError(f"{path}: columns {user_col},{movie_col} must be integer ids ({exc})") from exc
            return pd.DataFrame({"user_id": users, "movie_id": movies})
    raise InputError(f"{path}: expected columns userId,movieId (or user_id,movie_id), found {table.column_names}")


def predict_pairs(data_dir: Path, pairs_path: Path, output_path: Path) -> dict[str, Any]:
    """Write predictions for every pair to ``output_path``; return counts."""
    from tasks.preparation.scalers import load_scalers
    from tasks.serving.export import read_embeddings
    from tasks.serving.popularity import ServingSpace

    data_dir = Path(data_dir)
    latest = read_latest(data_dir)
    files = {key: verified(data_dir, latest["model"][key]) for key in ("scalers", "user_embeddings", "movie_embeddings", "serving")}
    pairs = read_pairs(Path(pairs_path))
    user_ids, user_emb = read_embeddings(files["user_embeddings"], "user")
    movie_ids, movie_emb = read_embeddings(files["movie_embeddings"], "movie")
    u = pd.Index(user_ids).get_indexer(pairs["user_id"].to_numpy())
    m = pd.Index(movie_ids).get_indexer(pairs["movie_id"].to_numpy())
    ok = (u >= 0) & (m >= 0)
    errors = np.full(len(pairs), None, dtype=object)
    version = latest["model_version"]
    errors[u < 0] = [f"unknown user {x}: no ratings in the data of model {version}" for x in pairs["user_id"].to_numpy()[u < 0]]
    only_movie = (u >= 0) & (m < 0)
    errors[only_movie] = [
        f"unknown movie {x}: not in the movie catalog of model {version}" for x in pairs["movie_id"].to_numpy()[only_movie]
    ]
    stars = np.full(len(pairs), np.nan, dtype=np.float32)
    if ok.any():
        scores = ServingSpace.read(files["serving"]).tower_scores(user_emb[u[ok]], movie_emb[m[ok]])
        stars[ok] = load_scalers(files["scalers"]).target_to_rating(scores)
    table = pa.table(
        {
            "user_id": pa.array(pairs["user_id"].to_numpy(), pa.int64()),
            "movie_id": pa.array(pairs["movie_id"].to_numpy(), pa.int64()),
            "predicted_rating": pa.array(stars, pa.float32(), mask=~ok),
            "error": pa.array(errors, pa.string()),
        }
    )
    write_table(Path(output_path), table, schemas.PREDICTIONS, "predictions", {"model_version": version})
    return {"rows": len(pairs), "scored": int(ok.sum()), "errors": int((~ok).sum()), "model_version": version, "output": str(output_path)}
