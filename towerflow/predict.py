"""Score user/movie pairs from a file with the latest published model (``towerflow predict``).

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

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks.ingestion.ingest import InputError
from tasks.store import schemas
from tasks.store.storage import write_table

PAIR_COLUMNS = (("userId", "movieId"), ("user_id", "movie_id"))


def read_pairs(path: Path) -> pd.DataFrame:
    """Read ``userId,movieId`` (or ``user_id,movie_id``) pairs from CSV or Parquet."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: pairs file not found")
    try:
        table = (
            pq.read_table(path)
            if path.suffix.lower() in {".parquet", ".pq"}
            else pacsv.read_csv(path)
        )
    except pa.ArrowInvalid as exc:
        raise InputError(f"{path}: cannot read pairs ({exc})") from exc
    for user_col, movie_col in PAIR_COLUMNS:
        if user_col in table.column_names and movie_col in table.column_names:
            try:
                users = table.column(user_col).cast(pa.int64()).to_numpy()
                movies = table.column(movie_col).cast(pa.int64()).to_numpy()
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise InputError(
                    f"{path}: columns {user_col},{movie_col} must be integer ids ({exc})"
                ) from exc
            return pd.DataFrame({"user_id": users, "movie_id": movies})
    raise InputError(
        f"{path}: expected columns userId,movieId (or user_id,movie_id), found {table.column_names}"
    )


def predict_pairs(data_dir: str | Path, pairs_path: Path, output_path: Path) -> dict[str, Any]:
    """Write predictions for every pair to ``output_path`` (:meth:`towerflow.Recommender.predict`);
    return counts.
    """
    from towerflow.recommender import load

    rec = load(data_dir)
    pairs = read_pairs(Path(pairs_path))
    out = rec.predict(pairs)
    ok = out["error"].isna().to_numpy()
    table = pa.table(
        {
            "user_id": pa.array(out["user_id"].to_numpy(), pa.int64()),
            "movie_id": pa.array(out["movie_id"].to_numpy(), pa.int64()),
            "predicted_rating": pa.array(
                out["predicted_rating"].to_numpy(), pa.float32(), mask=~ok
            ),
            "error": pa.array(out["error"].tolist(), pa.string(), from_pandas=True),
        }
    )
    write_table(
        Path(output_path), table, schemas.PREDICTIONS, "predictions", {"model_version": rec.version}
    )
    counts = {"rows": len(out), "scored": int(ok.sum()), "errors": int((~ok).sum())}
    return {**counts, "model_version": rec.version, "output": str(output_path)}
