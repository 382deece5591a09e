"""A popularity prior in the vectors the index serves, its weight chosen per data set on the nightly
holdout.

Why: the two-tower dot product is trained mostly on the rating (the MSE term), so it ranks by how
much a user would like a movie, not by how likely they are to watch it next. Where what people rate
is driven by popularity, most-popular beats that ranking by a wide margin; where it is driven by
taste (ml-latest-small) a little popularity still helps. So the ranking score adds a prior with a
weight ``w``:

    score(u, m) = (u . m + w * p(m)) / (1 + w),    p(m) = log(1 + n_m) / log(1 + max n)  in [0, 1]

where ``u``, ``m`` are the towers' unit vectors and ``n_m`` the movie's number of ratings. It is the
inner product of two unit vectors of dimension d + 2 (:class:`ServingSpace`):

    user:   [u, sqrt(w), 0] / sqrt(1 + w)
    movie:  [m, sqrt(w) p, sqrt(w) sqrt(1 - p^2)] / sqrt(1 + w)

so FAISS's exact inner-product index serves it as it is, the score stays in [-1, 1], and the
published embeddings remain the vectors that produced ``score``. The model's own dot product
``u . m`` (the predicted rating, similar movies) is ``1 + w`` times the inner product of the first d
components. ``w = 0`` serves ``u . m`` unchanged. The weight is chosen among :data:`WEIGHTS` by
NDCG@k on the nightly holdout (:func:`select_weight`), with no flag: popularity-led data picks a
large weight, taste-led data a small one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.store.storage import read_json, write_json

WEIGHTS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
EXTRA_DIMS = 2
# above twice this many holdout users, the weight is chosen on a seeded sample of this many
SWEEP_USERS = 4000


def movie_popularity(ratings: pd.DataFrame, movie_ids: np.ndarray) -> np.ndarray:
    """``p(m)``: log(1 + ratings of m) / log(1 + ratings of the most-rated movie), over
    ``movie_ids`` order, in [0, 1]."""
    counts = (
        ratings["movie_id"]
        .value_counts()
        .reindex(np.asarray(movie_ids), fill_value=0)
        .to_numpy(dtype=np.float64)
    )
    top = counts.max() if len(counts) else 0.0
    return (np.log1p(counts) / np.log1p(top) if top > 0 else np.zeros(len(counts))).astype(
        np.float32
    )


@dataclass(frozen=True)
class ServingSpace:
    """How tower embeddings (dimension ``tower_dim``) become the served vectors, for a prior weight
    ``weight``."""

    tower_dim: int
    weight: float

    def __post_init__(self) -> None:
        if self.tower_dim < 1 or not self.weight >= 0:
            raise ValueError(
                "serving space needs tower_dim >= 1 and weight >= 0, "
                f"got {self.tower_dim} and {self.weight!r}"
            )

    @property
    def dim(self) -> int:
        return self.tower_dim + EXTRA_DIMS

    def _check(self, x: np.ndarray, dim: int, what: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"{what} must be (rows, {dim}), got {x.shape}")
        return x

    def users(self, user_emb: np.ndarray) -> np.ndarray:
        """Served user vectors ``[u, sqrt(w), 0] / sqrt(1 + w)`` (unit when ``u`` is)."""
        u = self._check(user_emb, self.tower_dim, "tower user embeddings")
        extra = np.zeros((len(u), EXTRA_DIMS), np.float32)
        extra[:, 0] = np.sqrt(self.weight)
        return np.ascontiguousarray(np.hstack([u, extra]) / np.float32(np.sqrt(1.0 + self.weight)))

    def movies(self, movie_emb: np.ndarray, popularity: np.ndarray) -> np.ndarray:
        """Served movie vectors ``[m, sqrt(w) p, sqrt(w) sqrt(1 - p^2)] / sqrt(1 + w)`` (unit when
        ``m`` is)."""
        m = self._check(movie_emb, self.tower_dim, "tower movie embeddings")
        p = np.asarray(popularity, dtype=np.float64)
        if p.shape != (len(m),) or ((p < 0) | (p > 1)).any():
            raise ValueError(f"popularity must be {len(m)} values in [0, 1], got shape {p.shape}")
        extra = np.sqrt(self.weight) * np.column_stack([p, np.sqrt(1.0 - p**2)])
        return np.ascontiguousarray(
            (np.hstack([m, extra]) / np.sqrt(1.0 + self.weight)).astype(np.float32)
        )

    def tower_scores(self, user_vecs: np.ndarray, movie_vecs: np.ndarray) -> np.ndarray:
        """The model's own dot products ``u . m`` of row-aligned served user and movie vectors."""
        u = self._check(user_vecs, self.dim, "served user vectors")
        m = self._check(movie_vecs, self.dim, "served movie vectors")
        d = self.tower_dim
        return np.asarray(
            (1.0 + self.weight) * np.einsum("ij,ij->i", u[:, :d], m[:, :d]), dtype=np.float32
        )

    def content_queries(self, movie_vecs: np.ndarray) -> np.ndarray:
        """Query vectors whose inner product with a served movie vector is ``m . m'``: similar
        movies by content."""
        m = self._check(movie_vecs, self.dim, "served movie vectors")
        out = np.zeros_like(m)
        out[:, : self.tower_dim] = m[:, : self.tower_dim] * np.float32(1.0 + self.weight)
        return out

    def write(self, path: Path) -> Path:
        write_json(Path(path), asdict(self))
        return Path(path)

    @classmethod
    def read(cls, path: Path) -> ServingSpace:
        data: dict[str, Any] = read_json(Path(path))
        try:
            return cls(tower_dim=int(data["tower_dim"]), weight=float(data["weight"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: not a serving space ({exc}): {json.dumps(data)[:200]}"
            ) from exc


@dataclass(frozen=True)
class Selection:
    """The chosen weight, each user's weight index as chosen on the other half of the users, the
    mean NDCG per weight."""

    weight: float
    cross_index: np.ndarray
    mean_by_weight: dict[float, float]


def sweep_users(users: np.ndarray, seed: int = 0) -> np.ndarray:
    """The users the weight is chosen on: all of them, or a seeded sample of :data:`SWEEP_USERS`
    above twice that."""
    users = np.asarray(users)
    if len(users) <= 2 * SWEEP_USERS:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, SWEEP_USERS, replace=False))


def select_weight(
    ndcg: np.ndarray, weights: tuple[float, ...] = WEIGHTS, seed: int = 0
) -> Selection:
    """Pick the weight with the best mean NDCG over users (rows of ``ndcg``, one column per weight).

    The weight to publish is the best over all users. The figure to report is cross-fitted, so that
    choosing the weight on the holdout does not flatter it: users are split in two halves at random
    and each user is scored with the weight that was best on the other half (``cross_index``). Ties
    go to the smaller weight.
    """
    ndcg = np.asarray(ndcg, dtype=np.float64)
    if ndcg.ndim != 2 or ndcg.shape[1] != len(weights) or len(ndcg) == 0:
        raise ValueError(f"ndcg must be (users >= 1, {len(weights)} weights), got {ndcg.shape}")
    half = np.random.default_rng(seed).permutation(len(ndcg)) % 2 == 0
    cross = np.zeros(len(ndcg), dtype=np.int64)
    for fold in (half, ~half):
        other = ~fold if (~fold).any() else fold
        cross[fold] = int(np.argmax(ndcg[other].mean(axis=0)))
    means = ndcg.mean(axis=0)
    return Selection(
        float(weights[int(np.argmax(means))]),
        cross,
        {float(w): float(v) for w, v in zip(weights, means, strict=True)},
    )
