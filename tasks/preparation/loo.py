"""Leave-one-out features: each training example is fed its user's and movie's statistics without
its own rating.

The confidence features (a user's shrunk mean, per-genre means and counts; a
movie's shrunk mean and count) are computed from the training ratings, so in
training the rating to predict is part of the means it is predicted from;
when the model is used, it is not (that rating is in the future). A model
trained on in-sample features learns to trust those means more than they
deserve: on ml-latest-small (per-user temporal protocol) it scored 0.78 RMSE
on its training ratings and 0.92 on the held-out ones. Trained on
leave-one-out rows the default preset scores 0.88 held out, and ranks better
too (README, "Model quality").

:func:`leave_one_out` collects the sums and counts (numpy, once per training
phase); :func:`example_rows` recomputes, inside the training step, each
example's scaled user row and movie row with the example's rating taken out,
using the same formulas as :mod:`tasks.preparation.features`. A rating whose user or movie
has no other rating gets the rows of a newcomer or of an unrated movie, which is
also what cold start needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks.preparation import factors as collab
from tasks.preparation.features import (
    GENRES,
    MOVIE_RATING_COLUMNS,
    confidence_movie_columns,
    confidence_user_columns,
)
from tasks.preparation.sparse import rating_matrices

if TYPE_CHECKING:
    from tasks.preparation.features import Features
    from tasks.preparation.scalers import Scalers


@dataclass(frozen=True)
class LeaveOneOut:
    """Rating sums and counts of the training ratings, and how features are scaled (all float32)."""

    user_cnt: np.ndarray  # (users,)
    user_sum: np.ndarray
    genre_cnt: np.ndarray  # (users, genres)
    genre_sum: np.ndarray
    movie_cnt: np.ndarray  # (movies,)
    movie_sum: np.ndarray
    movie_genres: np.ndarray  # (movies, genres), 0/1
    user_mean: np.ndarray  # the user StandardScaler's mean and scale, per column
    user_scale: np.ndarray
    movie_columns: np.ndarray  # positions of MOVIE_RATING_COLUMNS in a movie row
    movie_mean: np.ndarray  # the movie StandardScaler's mean and scale of those columns
    movie_scale: np.ndarray
    mu: float  # the global mean rating the means are shrunk toward
    shrinkage: float
    stars: tuple[float, float]  # rating in stars = stars[0] * target + stars[1]
    # Collaborative factors (tasks.preparation.factors), last in both rows; (n, 0) without them.
    movie_v: np.ndarray  # (movies, k): each movie's factors as in its row
    user_seen: np.ndarray  # (users, k): sum of the factors of the user's movies
    user_rated: np.ndarray  # (users, k): the same weighted by the rating
    inv_s2: np.ndarray  # (k,): 1 / singular value^2 (0 for a factor beyond the rank)
    factor_mean: np.ndarray  # the movie StandardScaler's mean and scale of the factor columns
    factor_scale: np.ndarray

    @property
    def factors(self) -> int:
        return int(self.movie_v.shape[1])

    def tensors(self) -> dict[str, Any]:
        """The arrays as constants for a training step (keys are the field names)."""
        import tensorflow as tf

        return {
            k: tf.constant(v)
            for k, v in vars(self).items()
            if isinstance(v, np.ndarray) and k != "movie_columns"
        }


def _columns(names: list[str], wanted: list[str], what: str) -> np.ndarray:
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ValueError(
            f"leave-one-out needs the confidence features; the {what} rows lack columns {missing}"
        )
    return np.array([names.index(n) for n in wanted], dtype=np.int64)


def leave_one_out(
    ratings: pd.DataFrame, feats: Features, scalers: Scalers, shrinkage: float
) -> LeaveOneOut:
    """Sums and counts of ``ratings``, which must be the ratings ``feats`` were computed from.

    Raises ``ValueError`` when ``feats`` is not the confidence feature set or
    when the ratings' counts differ from the features' ``log_count`` column
    (the features came from other ratings).
    """
    user_cols = _columns(feats.user_names, ["log_count"], "user")
    movie_cols = _columns(feats.movie_names, list(MOVIE_RATING_COLUMNS), "movie")
    genre_cols = _columns(feats.movie_names, [f"is_{g}" for g in GENRES], "movie")
    u = pd.Index(feats.user_ids).get_indexer(ratings["user_id"].to_numpy())
    m = pd.Index(feats.movie_ids).get_indexer(ratings["movie_id"].to_numpy())
    if (u < 0).any() or (m < 0).any():
        raise ValueError(
            f"{int((u < 0).sum())} ratings of unknown users and "
            f"{int((m < 0).sum())} of unknown movies"
        )
    r = ratings["rating"].to_numpy(dtype=np.float64)
    n_u, n_m = len(feats.user_ids), len(feats.movie_ids)
    user_cnt = np.bincount(u, minlength=n_u).astype(np.float64)
    if not np.allclose(np.log1p(user_cnt), feats.user_x[:, user_cols[0]], atol=1e-4):
        raise ValueError(
            "these ratings are not the ones the features were computed from "
            "(user rating counts differ)"
        )
    genres = feats.movie_x[:, genre_cols].astype(np.float64)
    rated_m, seen_m = rating_matrices(u, m, (n_u, n_m), r, np.ones_like(r))
    genre_sum = np.asarray(rated_m @ genres)
    genre_cnt = np.asarray(seen_m @ genres)
    target = scalers.rating_to_target(np.array([0.0, 1.0]))
    a = 1.0 / float(target[1] - target[0])
    f32 = np.float32
    k = sum(n.startswith(collab.MOVIE_PREFIX) for n in feats.movie_names)
    factor_cols = _columns(feats.movie_names, collab.factor_names(k)[1], "movie")
    if k and (factor_cols != np.arange(len(feats.movie_names) - k, len(feats.movie_names))).any():
        where = factor_cols.tolist()
        raise ValueError(f"factor columns must come last in a movie row, not at {where}")
    v = feats.movie_x[:, factor_cols]
    seen, rated = collab.user_sums(seen_m, rated_m, v)
    s2 = np.square(seen).sum(axis=0)  # |X v|^2 = s^2 for each factor (X v = s u)
    return LeaveOneOut(
        user_cnt=user_cnt.astype(f32),
        user_sum=np.bincount(u, weights=r, minlength=n_u).astype(f32),
        genre_cnt=genre_cnt.astype(f32),
        genre_sum=genre_sum.astype(f32),
        movie_cnt=np.bincount(m, minlength=n_m).astype(f32),
        movie_sum=np.bincount(m, weights=r, minlength=n_m).astype(f32),
        movie_genres=genres.astype(f32),
        user_mean=scalers.user.mean_.astype(f32),
        user_scale=scalers.user.scale_.astype(f32),
        movie_columns=movie_cols,
        movie_mean=scalers.movie.mean_[movie_cols].astype(f32),
        movie_scale=scalers.movie.scale_[movie_cols].astype(f32),
        mu=float(r.mean()) if len(r) else 3.5,
        shrinkage=float(shrinkage),
        stars=(a, -a * float(target[0])),
        movie_v=v.astype(f32),
        user_seen=seen.astype(f32),
        user_rated=rated.astype(f32),
        inv_s2=np.where(s2 > 1e-12, 1.0 / np.maximum(s2, 1e-12), 0.0).astype(f32),
        factor_mean=scalers.movie.mean_[factor_cols].astype(f32),
        factor_scale=scalers.movie.scale_[factor_cols].astype(f32),
    )


def example_rows(
    loo: LeaveOneOut, t: dict[str, Any], movie_rows: Any, u: Any, m: Any, y: Any
) -> tuple[Any, Any]:
    """Scaled (user rows, movie rows) of examples (user row ``u``, movie row ``m``, target ``y``),
    each without its rating.

    ``t`` is :meth:`LeaveOneOut.tensors`; ``movie_rows`` are the examples'
    scaled movie rows as computed from every rating (their non-rating columns are kept).
    """
    from keras import ops

    r = loo.stars[0] * y + loo.stars[1]
    g = ops.take(t["movie_genres"], m, axis=0)
    cnt, total = ops.take(t["user_cnt"], u) - 1.0, ops.take(t["user_sum"], u) - r
    user = confidence_user_columns(
        ops,
        cnt,
        total,
        ops.take(t["genre_cnt"], u, axis=0) - g,
        ops.take(t["genre_sum"], u, axis=0) - ops.expand_dims(r, -1) * g,
        loo.mu,
        loo.shrinkage,
    )
    if loo.factors:  # the rating out of the user's sums, and the user out of the movie's factors
        v = ops.take(t["movie_v"], m, axis=0)
        seen = ops.take(t["user_seen"], u, axis=0)
        mean = (total + loo.shrinkage * loo.mu) / (cnt + loo.shrinkage)
        rated = ops.take(t["user_rated"], u, axis=0) - ops.expand_dims(r, -1) * v
        projected = collab.user_factor_columns(ops, cnt, seen - v, rated, mean)
        user = ops.concatenate([user, projected], axis=-1)
        movie_v = ((v - seen * t["inv_s2"]) - t["factor_mean"]) / t["factor_scale"]
        movie_rows = ops.concatenate([movie_rows[:, : -loo.factors], movie_v], axis=-1)
    user = (user - t["user_mean"]) / t["user_scale"]
    cols = confidence_movie_columns(
        ops,
        ops.take(t["movie_cnt"], m) - 1.0,
        ops.take(t["movie_sum"], m) - r,
        loo.mu,
        loo.shrinkage,
    )
    # the rating columns replaced in one pass: keep the others, place the new values by a (2, width)
    # matmul
    width = movie_rows.shape[-1]
    place = np.zeros((len(cols), width), dtype=np.float32)
    place[np.arange(len(cols)), loo.movie_columns] = 1.0
    scaled = ops.stack(
        [(value - t["movie_mean"][i]) / t["movie_scale"][i] for i, value in enumerate(cols)],
        axis=-1,
    )
    return user, movie_rows * (1.0 - place.sum(axis=0)) + ops.matmul(scaled, place)
