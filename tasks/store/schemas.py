"""Every table towerflow reads or writes, declared once as a pyarrow schema.

Each written Parquet file carries ``towerflow.schema_version`` and
``towerflow.table`` in its schema metadata; :func:`check_schema` verifies both
and the column names and types when a table is written and when it is read.
Bump :data:`SCHEMA_VERSION` (and note it in the README) on any change to the
published tables.
"""

from __future__ import annotations

import pyarrow as pa

from tasks.errors import TowerflowError

# 2: served embeddings carry the popularity prior (tasks/serving/popularity.py), serving.json
SCHEMA_VERSION = "2"
VERSION_KEY = b"towerflow.schema_version"
TABLE_KEY = b"towerflow.table"

# Ingested store (internal).
RATINGS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("movie_id", pa.int64()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
    ]
)
MOVIES = pa.schema(
    [
        ("movie_id", pa.int64()),
        ("title", pa.string()),
        ("genres", pa.string()),
        ("year", pa.int32()),
    ]
)

# Quarantined input rows: DIR/rejects/run_date=YYYY-MM-DD/part-<input-hash>.parquet. The four
# MovieLens fields exactly as read (strings; null when the line could not be split into them, then
# ``raw`` holds the line), the source file, its 1-based line (row number for Parquet input), a
# reason code from ``tasks.ingestion.rejects.REASONS`` and a message naming the column and value.
REJECTS = pa.schema(
    [
        ("source_file", pa.string()),
        ("line", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("userId", pa.string()),
        ("movieId", pa.string()),
        ("rating", pa.string()),
        ("timestamp", pa.string()),
        ("raw", pa.string()),
    ]
)

# Features (internal): one row per entity, the unscaled feature vector.
USER_FEATURES = pa.schema([("user_id", pa.int64()), ("features", pa.list_(pa.float32()))])
MOVIE_FEATURES = pa.schema([("movie_id", pa.int64()), ("features", pa.list_(pa.float32()))])
# The user's most recent rated movies (newest first) and their rating minus the user's mean,
# fed to the user tower's history vectors.
USER_HISTORY = pa.schema(
    [
        ("user_id", pa.int64()),
        ("movie_ids", pa.list_(pa.int64())),
        ("deviations", pa.list_(pa.float32())),
    ]
)

# Model artifacts referenced from latest.json.
MOVIE_INDEX_IDS = pa.schema([("movie_id", pa.int64())])

# Published tables (the contract).
RECOMMENDATIONS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("rank", pa.int32()),
        ("movie_id", pa.int64()),
        ("score", pa.float32()),
        ("predicted_rating", pa.float32()),
        ("model_version", pa.string()),
    ]
)
SIMILAR_MOVIES = pa.schema(
    [
        ("movie_id", pa.int64()),
        ("rank", pa.int32()),
        ("similar_movie_id", pa.int64()),
        ("score", pa.float32()),
    ]
)
PREDICTIONS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("movie_id", pa.int64()),
        ("predicted_rating", pa.float32()),
        ("error", pa.string()),
    ]
)
METRICS = pa.schema(
    [
        ("model", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)
# The record of every night (outputs/history/, tasks/store/nights.py): one row per night, whatever
# its outcome.
NIGHTS = pa.schema(
    [
        ("run_date", pa.string()),
        ("finished_at", pa.string()),
        ("outcome", pa.string()),
        ("verdict", pa.string()),
        ("reason", pa.string()),
        ("model_version", pa.string()),
        ("users", pa.int64()),
        ("ndcg", pa.float64()),
        ("ndcg_low", pa.float64()),
        ("ndcg_high", pa.float64()),
        ("most_popular_ndcg", pa.float64()),
        ("rmse", pa.float64()),
        ("coverage", pa.float64()),
        ("prior_weight", pa.float64()),
        ("drift", pa.float64()),
        ("changed_share", pa.float64()),
        ("seconds", pa.float64()),
    ]
)


def movie_embeddings_schema(dim: int) -> pa.Schema:
    """``movie_id int64, embedding fixed_size_list<float32>[dim]``."""
    return pa.schema([("movie_id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))])


def user_embeddings_schema(dim: int) -> pa.Schema:
    """``user_id int64, embedding fixed_size_list<float32>[dim]``."""
    return pa.schema([("user_id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))])


class SchemaError(TowerflowError, ValueError):
    """A table does not match its declared schema."""


def stamp(schema: pa.Schema, table: str, extra: dict[str, str] | None = None) -> pa.Schema:
    """Return ``schema`` with the schema version, table name and ``extra`` in its metadata."""
    meta = {VERSION_KEY: SCHEMA_VERSION.encode(), TABLE_KEY: table.encode()}
    for key, value in (extra or {}).items():
        meta[f"towerflow.{key}".encode()] = value.encode()
    return schema.with_metadata(meta)


def check_schema(
    actual: pa.Schema, expected: pa.Schema, where: str, *, versioned: bool = True
) -> None:
    """Raise :class:`SchemaError` naming ``where`` if ``actual`` differs from ``expected``."""
    if actual.names != expected.names:
        raise SchemaError(f"{where}: columns are {actual.names}, expected {expected.names}")
    for field in expected:
        got = actual.field(field.name).type
        if got != field.type:
            raise SchemaError(
                f"{where}: column {field.name!r} has type {got}, expected {field.type}"
            )
    if versioned:
        meta = actual.metadata or {}
        version = meta.get(VERSION_KEY, b"<none>").decode()
        if version != SCHEMA_VERSION:
            raise SchemaError(
                f"{where}: schema version {version}, this towerflow reads version "
                f"{SCHEMA_VERSION}; re-run `towerflow run` to rebuild it"
            )
