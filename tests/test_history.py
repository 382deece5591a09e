"""User histories: newest first, centred on the user's mean, stored by movie id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.preparation.history import read_history, user_history, write_history


def _ratings() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [7, 7, 7, 9, 5],
            "movie_id": [30, 10, 20, 10, 999],
            "rating": [4.0, 2.0, 3.0, 5.0, 1.0],
            "timestamp": [300, 100, 200, 50, 10],
        }
    )


def test_newest_first_capped_and_centred() -> None:
    hist = user_history(_ratings(), np.array([7, 8, 9]), np.array([10, 20, 30]), length=2)
    # catalog row + 1; user 8 has none
    np.testing.assert_array_equal(hist.ids, [[3, 2], [0, 0], [1, 0]])
    # user 7's mean is 3
    np.testing.assert_allclose(hist.values, [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])


def test_round_trip_by_movie_id_and_unknown_movies_pad(tmp_path: Path) -> None:
    users, movies = np.array([7, 8, 9]), np.array([10, 20, 30])
    hist = user_history(_ratings(), users, movies, length=3)
    write_history(tmp_path / "h.parquet", users, movies, hist)
    back = read_history(tmp_path / "h.parquet", users, movies)
    np.testing.assert_array_equal(back.ids, hist.ids)
    np.testing.assert_array_equal(back.values, hist.values)
    # Read against a catalog without movie 30: user 7's newest entry becomes padding.
    smaller = read_history(tmp_path / "h.parquet", users, np.array([10, 20]))
    np.testing.assert_array_equal(smaller.ids[0], [0, 2, 1])
