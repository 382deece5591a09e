"""Drift against the published lists and beyond-accuracy measures, checked on lists small enough to
count by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tasks.evaluation.drift import (
    beyond_accuracy,
    measure,
    popularity_rank,
    read_published_parts,
    versus,
)
from tasks.store import schemas
from tasks.store.storage import write_table
from tests.documents import a_latest

MOVIES = pd.DataFrame(
    {"movie_id": [1, 2, 3, 4], "genres": ["Action", "Action", "Comedy", "Action|Comedy"]}
)
# popularity ranks: 1 -> 1, 2 -> 2, 3 -> 3, 4 -> 4
RATINGS = pd.DataFrame({"movie_id": [1, 1, 1, 2, 2, 3]})


def _lists(rows: dict[int, list[int]], score: float = 0.5) -> pd.DataFrame:
    out = [
        (u, r + 1, m, score - 0.1 * r) for u, movies in rows.items() for r, m in enumerate(movies)
    ]
    return pd.DataFrame(out, columns=["user_id", "rank", "movie_id", "score"])


def test_versus_counts_overlap_and_changed_lists() -> None:
    old = _lists({1: [1, 2], 2: [3, 4], 3: [1, 3]})
    assert versus(old, old) == pytest.approx(
        {
            "users_compared": 3,
            "mean_jaccard": 1.0,
            "drift": 0.0,
            "changed_share": 0.0,
            "score_mean_shift": 0.0,
            "score_ks": 0.0,
        }
    )
    # user 1 reordered, user 2 all new, user 4 not published before
    new = _lists({1: [2, 1], 2: [1, 2], 4: [1, 2]}, score=0.7)
    out = versus(new, old)
    assert (
        out["users_compared"] == 2
        and out["mean_jaccard"] == pytest.approx(0.5)
        and out["changed_share"] == 1.0
    )
    assert out["drift"] == pytest.approx(0.5) and out["score_mean_shift"] == pytest.approx(0.2)
    assert versus(new, _lists({9: [1]})) == {"users_compared": 0.0}


def test_beyond_accuracy_by_hand() -> None:
    ranks = popularity_rank(RATINGS, MOVIES)
    assert ranks.to_dict() == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
    lists = _lists({1: [1, 2], 2: [1, 3]})
    out = beyond_accuracy(lists, MOVIES, ranks)
    assert out["coverage"] == pytest.approx(3 / 4)
    assert out["novelty"] == pytest.approx((1 + 2 + 1 + 3) / 4)
    # Action/Action: distance 0; Action/Comedy: 1
    assert out["diversity"] == pytest.approx((0.0 + 1.0) / 2)
    assert out["personalization"] == pytest.approx(1 - 1 / 3)  # the two lists share 1 of 3 movies
    # no pair in a list, no second user: unknown, not NaN
    single = beyond_accuracy(_lists({1: [4]}), MOVIES, ranks)
    assert (
        single["diversity"] is None
        and single["personalization"] is None
        and single["novelty"] == 4.0
    )


def test_measure_and_published_parts(tmp_path: Path) -> None:
    def part(name: str, frame: pd.DataFrame) -> Path:
        table = pa.table(
            {
                "user_id": pa.array(frame.user_id, pa.int64()),
                "rank": pa.array(frame["rank"], pa.int32()),
                "movie_id": pa.array(frame.movie_id, pa.int64()),
                "score": pa.array(frame.score, pa.float32()),
                "predicted_rating": pa.array(np.full(len(frame), 4.0), pa.float32()),
                "model_version": pa.array(["v"] * len(frame), pa.string()),
            }
        )
        return write_table(tmp_path / name, table, schemas.RECOMMENDATIONS, "recommendations")

    old, new = (
        part("old.parquet", _lists({1: [1, 2], 2: [3, 4]})),
        part("new.parquet", _lists({1: [3, 4], 2: [1, 2]})),
    )
    first = measure([new], None, RATINGS, MOVIES, None)
    assert set(first) == {"lists"}  # nothing published: nothing to compare with
    out = measure([new], [old], RATINGS, MOVIES, "v1")
    # every list changed: past DRIFT_ALERT
    assert out["versus_published"]["drift"] == 1.0 and out["drifted"] is True
    assert out["published"]["model_version"] == "v1" and out["lists"]["coverage"] == 1.0
    latest = a_latest(
        tables={"recommendations": {"path": "outputs/r", "files": ["old.parquet"], "rows": 4}}
    )
    assert read_published_parts(tmp_path, latest) == [old]
    gone = a_latest(
        tables={"recommendations": {"path": "outputs/r", "files": ["gone.parquet"], "rows": 4}}
    )
    assert read_published_parts(tmp_path, gone) is None
    assert read_published_parts(tmp_path, None) is None
