"""Each user's recent rated movies: the input of the user tower's history vectors.

A history is two ``(users, length)`` matrices: movie ids as catalog row + 1
(0 pads) and the user's rating of each minus their mean rating. Tables store
movie ids (not rows), so a history stays valid when the catalog grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.store import schemas
from tasks.store.storage import read_table, table_meta, write_table


@dataclass(frozen=True)
class History:
    """``ids``: catalog row + 1 (0 pads), int32; ``values``: rating minus the user's mean,
    float32.
    """

    ids: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.ids.shape != self.values.shape or self.ids.ndim != 2:
            raise ValueError(
                f"history ids {self.ids.shape} and values {self.values.shape} must be equal "
                "2-d shapes"
            )

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])


def user_history(
    ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray, length: int
) -> History:
    """Each user's ``length`` most recent ratings, newest first (ties: later rows are newer).

    Ratings of users or movies not in the given id lists are ignored. The mean
    a rating is centred on is the user's mean over all of ``ratings``.
    """
    length = max(length, 0)
    ids = np.zeros((len(user_ids), length), dtype=np.int32)
    values = np.zeros((len(user_ids), length), dtype=np.float32)
    if length == 0 or len(ratings) == 0:
        return History(ids, values)
    u = pd.Index(user_ids).get_indexer(ratings["user_id"].to_numpy())
    m = pd.Index(movie_ids).get_indexer(ratings["movie_id"].to_numpy())
    keep = (u >= 0) & (m >= 0)
    u, m = u[keep], m[keep]
    r = ratings["rating"].to_numpy(dtype=np.float64)[keep]
    mean = np.bincount(u, weights=r, minlength=len(user_ids)) / np.maximum(
        np.bincount(u, minlength=len(user_ids)), 1
    )
    order = np.lexsort((-np.arange(len(u)), -ratings["timestamp"].to_numpy()[keep], u))
    u, m, r = u[order], m[order], r[order]
    rank = np.arange(len(u)) - np.searchsorted(u, u, side="left")
    take = rank < length
    ids[u[take], rank[take]] = m[take] + 1
    values[u[take], rank[take]] = r[take] - mean[u[take]]
    return History(ids, values)


def write_history(
    path: Path, user_ids: np.ndarray, movie_ids: np.ndarray, history: History
) -> None:
    """Write one row per user: the movie ids of the history and the rating deviations."""
    keep = history.ids > 0
    offsets = pa.array(np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32))
    ids = pa.ListArray.from_arrays(offsets, pa.array(movie_ids[history.ids[keep] - 1], pa.int64()))
    values = pa.ListArray.from_arrays(offsets, pa.array(history.values[keep], pa.float32()))
    table = pa.table(
        {"user_id": pa.array(user_ids, pa.int64()), "movie_ids": ids, "deviations": values},
        schema=schemas.USER_HISTORY,
    )
    write_table(
        path, table, schemas.USER_HISTORY, "user_history", {"history_length": str(history.length)}
    )


def read_history(path: Path, user_ids: np.ndarray, movie_ids: np.ndarray) -> History:
    """The history of :func:`write_history` for these user rows; a movie not in ``movie_ids``
    pads.
    """
    table = read_table(Path(path), schemas.USER_HISTORY, "user_history")
    length = int(table_meta(Path(path), "history_length") or 0)
    if not np.array_equal(table.column("user_id").to_numpy(), user_ids):
        raise ValueError(f"{path}: its user rows differ from the user features' rows")
    lists = table.column("movie_ids").combine_chunks()
    offsets = lists.offsets.to_numpy()
    rows = np.repeat(np.arange(len(user_ids)), np.diff(offsets))
    cols = np.arange(len(rows)) - offsets[rows]
    flat = pd.Index(movie_ids).get_indexer(lists.flatten().to_numpy()) + 1
    known = flat > 0
    ids = np.zeros((len(user_ids), length), dtype=np.int32)
    values = np.zeros((len(user_ids), length), dtype=np.float32)
    ids[rows[known], cols[known]] = flat[known]
    values[rows[known], cols[known]] = (
        table.column("deviations").combine_chunks().flatten().to_numpy()[known]
    )
    return History(ids, values)
