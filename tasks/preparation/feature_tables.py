"""The user and movie feature tables on disk: ids, a list of floats per row, the feature names in
the metadata.

Written by the features stage and read by training, export and the warm start, which compares the
feature names of the published model with tonight's; kept apart from the stage glue so both can
import it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from tasks.store import schemas
from tasks.store.storage import read_table, table_meta, write_table


def write_features(path: Path, ids: np.ndarray, x: np.ndarray, names: list[str], kind: str) -> None:
    """Write a features table: one id and one list of floats per row, the column names in the file's
    metadata.
    """
    schema = schemas.USER_FEATURES if kind == "user" else schemas.MOVIE_FEATURES
    values = pa.ListArray.from_arrays(
        pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32)),
        pa.array(x.reshape(-1), pa.float32()),
    )
    table = pa.table({f"{kind}_id": pa.array(ids, pa.int64()), "features": values}, schema=schema)
    write_table(path, table, schema, f"{kind}_features", {"feature_names": json.dumps(names)})


def read_features(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(ids, float32 matrix, feature names) of a features table."""
    schema = schemas.USER_FEATURES if kind == "user" else schemas.MOVIE_FEATURES
    table = read_table(Path(path), schema, f"{kind}_features")
    names = json.loads(table_meta(Path(path), "feature_names") or "[]")
    flat = table.column("features").combine_chunks().flatten().to_numpy()
    return (
        table.column(f"{kind}_id").to_numpy(),
        flat.reshape(table.num_rows, len(names)).astype(np.float32),
        names,
    )
