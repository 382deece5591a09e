"""Cold start for a newcomer: user features from stated genre tastes, the user tower, the FAISS
index.

A newcomer says what they think of a few genres (``"Adventure=5,Fantasy=5"``).
Their features are computed by the same function as every user's, from one
pseudo-rating per stated genre, so the published scalers and user tower read
them exactly as they read real users:

- ``default`` preset (confidence features): a genre the newcomer did not state
  is *unknown*, not disliked. Its mean is shrunk all the way to the newcomer's
  own mean and its share is 0, as for a real user who never rated that genre.
- ``lab`` preset (the course's features): an unstated genre gets 0, as the
  course feeds it, and the scaler then reads 0 as a real, very low rating.
  That is the lab's behaviour, kept on purpose so the two can be compared.

The newcomer has no history, so a history tower gets an empty one (a zero
vector). Nothing is excluded from the results: they have seen nothing.
:meth:`towerflow.Recommender.recommend_for_genres` serves the newcomer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tasks.preparation.features import GENRES, compute_features
from towerflow.query import QueryError

RATING_RANGE = (0.5, 5.0)


def parse_tastes(spec: str) -> dict[str, float]:
    """``"Adventure=5,Fantasy=4.5"`` as {genre: stars}; genre names are matched ignoring case."""
    known = {g.lower(): g for g in GENRES}
    tastes: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        genre = known.get(name.strip().lower())
        if not sep or genre is None:
            what = f"unknown genre {name.strip()!r}" if sep else f"{part!r} is not GENRE=STARS"
            raise QueryError(f"--genres: {what}; genres are {', '.join(GENRES)}")
        try:
            stars = float(value)
        except ValueError:
            raise QueryError(
                f"--genres: {genre}={value.strip()!r} is not a number of stars"
            ) from None
        if not RATING_RANGE[0] <= stars <= RATING_RANGE[1]:
            raise QueryError(
                f"--genres: {genre}={stars:g} is outside {RATING_RANGE[0]}-{RATING_RANGE[1]} stars"
            )
        tastes[genre] = stars
    if not tastes:
        raise QueryError(
            "--genres: say at least one GENRE=STARS, e.g. 'Adventure=5,Fantasy=4'; genres "
            f"are {', '.join(GENRES)}"
        )
    return tastes


def newcomer_features(
    tastes: dict[str, float], config: dict[str, Any]
) -> tuple[np.ndarray, list[str]]:
    """One unscaled user-feature row (and its column names) for the stated tastes."""
    genres = list(tastes)
    movies = pd.DataFrame(
        {
            "movie_id": np.arange(len(genres), dtype=np.int64),
            "genres": genres,
            "year": pd.array([2000] * len(genres)),
        }
    )
    ratings = pd.DataFrame(
        {
            "user_id": np.zeros(len(genres), np.int64),
            "movie_id": movies["movie_id"],
            "rating": list(tastes.values()),
        }
    )
    k = int(config.get("factors", 0))  # a newcomer has no collaborative signal: zero factors
    shrinkage = float(config.get("shrinkage", 10.0))
    none = np.zeros((len(genres), k))
    kind = config["features"]
    feats = compute_features(ratings, movies, np.array([0]), kind, shrinkage, None, k, none)
    return feats.user_x, feats.user_names
