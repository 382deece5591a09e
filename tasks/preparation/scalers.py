"""Feature and target scalers, persisted as JSON of their fitted values (never a serialized object).

User and movie features use :class:`~sklearn.preprocessing.StandardScaler`;
the rating target uses ``MinMaxScaler(feature_range=(-1, 1))`` so it lives on
the same [-1, 1] scale as the dot product of two unit vectors. Target mode
``"stars"`` (only the ablation uses it) leaves the rating in stars: both
mappings are then the identity. JSON without the mode reads as ``"minmax"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from tasks.errors import DataError
from tasks.presets import TargetScale
from tasks.store.storage import read_json, write_json

FORMAT = "towerflow-scalers/1"


# scikit-learn takes over a second to import: loaded where a scaler is fitted or rebuilt
if TYPE_CHECKING:
    from sklearn.preprocessing import MinMaxScaler, StandardScaler


@dataclass
class Scalers:
    """The three fitted scalers of one model."""

    user: StandardScaler
    movie: StandardScaler
    target: MinMaxScaler
    user_names: list[str]
    movie_names: list[str]
    target_scale: TargetScale = "minmax"

    def rating_to_target(self, stars: np.ndarray) -> np.ndarray:
        if self.target_scale == "stars":
            return np.asarray(stars, dtype=np.float32).ravel()
        return np.asarray(
            self.target.transform(np.asarray(stars, dtype=np.float64).reshape(-1, 1)),
            dtype=np.float32,
        ).ravel()

    def target_to_rating(self, score: np.ndarray) -> np.ndarray:
        if self.target_scale == "stars":
            return np.asarray(score, dtype=np.float32).ravel()
        return np.asarray(
            self.target.inverse_transform(np.asarray(score, dtype=np.float64).reshape(-1, 1)),
            dtype=np.float32,
        ).ravel()


def fit_scalers(
    user_x: np.ndarray,
    movie_x: np.ndarray,
    ratings: np.ndarray,
    user_names: list[str],
    movie_names: list[str],
    target_scale: TargetScale = "minmax",
) -> Scalers:
    """Fit the scalers on training feature rows and training ratings (``target_scale``: see the
    module doc).
    """
    if len(ratings) == 0:
        raise DataError("cannot fit the target scaler: no training ratings")
    if target_scale not in get_args(TargetScale):
        raise ValueError(
            f"unknown target scale {target_scale!r}; choose one of {list(get_args(TargetScale))}"
        )
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    target = MinMaxScaler(feature_range=(-1, 1)).fit(
        np.asarray(ratings, dtype=np.float64).reshape(-1, 1)
    )
    return Scalers(
        user=StandardScaler().fit(user_x),
        movie=StandardScaler().fit(movie_x),
        target=target,
        user_names=list(user_names),
        movie_names=list(movie_names),
        target_scale=target_scale,
    )


def _standard_to_dict(s: StandardScaler, names: list[str]) -> dict[str, Any]:
    return {
        "feature_names": names,
        "mean": s.mean_.tolist(),
        "scale": s.scale_.tolist(),
        "var": s.var_.tolist(),
        "n_samples_seen": int(np.max(s.n_samples_seen_)),
    }


def _standard_from_dict(d: dict[str, Any]) -> StandardScaler:
    from sklearn.preprocessing import StandardScaler

    s = StandardScaler()
    s.mean_ = np.asarray(d["mean"], dtype=np.float64)
    s.scale_ = np.asarray(d["scale"], dtype=np.float64)
    s.var_ = np.asarray(d["var"], dtype=np.float64)
    s.n_samples_seen_ = int(d["n_samples_seen"])
    s.n_features_in_ = len(s.mean_)
    return s


def save_scalers(scalers: Scalers, path: Path) -> Path:
    """Write the fitted values of all three scalers to ``path`` as JSON."""
    t = scalers.target
    return write_json(
        Path(path),
        {
            "format": FORMAT,
            "user": _standard_to_dict(scalers.user, scalers.user_names),
            "movie": _standard_to_dict(scalers.movie, scalers.movie_names),
            "target": {
                "feature_range": list(t.feature_range),
                "data_min": float(t.data_min_[0]),
                "data_max": float(t.data_max_[0]),
                "n_samples_seen": int(t.n_samples_seen_),
                "scale": scalers.target_scale,
            },
        },
    )


@dataclass(frozen=True)
class QueryScalers:
    """What query time needs of a model's scalers, read from the same JSON without scikit-learn.

    Why not :func:`load_scalers`: importing scikit-learn takes over a second, more than the rest of
    :func:`towerflow.load`, and answering needs only the fitted values: the user features'
    standardization and the target's inverse. The formulas are scikit-learn's own
    (``StandardScaler.transform``, ``MinMaxScaler.inverse_transform``) in the same float64 steps, so
    the results are identical (tests/test_scalers.py).
    """

    user_names: list[str]
    user_mean: np.ndarray
    user_scale: np.ndarray
    target_min: float
    target_step: float
    target_scale: TargetScale = "minmax"

    @classmethod
    def read(cls, path: Path) -> QueryScalers:
        data, t, scale, (lo, hi) = _read_scalers_json(path)
        span = float(t["data_max"]) - float(t["data_min"])
        step = (hi - lo) / (span if span != 0 else 1.0)
        user = data["user"]
        mean, std = (
            np.asarray(user["mean"], dtype=np.float64),
            np.asarray(user["scale"], dtype=np.float64),
        )
        return cls(
            list(user["feature_names"]), mean, std, lo - float(t["data_min"]) * step, step, scale
        )

    def user(self, x: np.ndarray) -> np.ndarray:
        """Standardized user feature rows (``StandardScaler.transform``), float32."""
        x = np.asarray(x)
        # as scikit-learn
        out = np.array(x, dtype=x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)
        # scikit-learn casts the fitted values to the rows' dtype first
        out -= self.user_mean.astype(out.dtype)
        out /= self.user_scale.astype(out.dtype)
        return out.astype(np.float32)

    def target_to_rating(self, score: np.ndarray) -> np.ndarray:
        """Stars of scaled scores (``MinMaxScaler.inverse_transform``)."""
        if self.target_scale == "stars":
            return np.asarray(score, dtype=np.float32).ravel()
        out = np.array(score, dtype=np.float64).reshape(-1, 1)
        out -= self.target_min
        out /= self.target_step
        return out.astype(np.float32).ravel()


def _read_scalers_json(
    path: Path,
) -> tuple[dict[str, Any], dict[str, Any], TargetScale, tuple[float, float]]:
    """The JSON of :func:`save_scalers`, checked: (document, its target part, target scale, feature
    range).
    """
    data = read_json(Path(path))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    t = data["target"]
    scale = t.get("scale", "minmax")
    if scale not in get_args(TargetScale):
        raise ValueError(f"{path}: unknown target scale {scale!r}")
    lo, hi = (float(v) for v in t["feature_range"])
    return data, t, scale, (lo, hi)


def load_scalers(path: Path) -> Scalers:
    """Rebuild the scalers from the JSON written by :func:`save_scalers`."""
    data, t, scale, (lo, hi) = _read_scalers_json(path)
    from sklearn.preprocessing import MinMaxScaler

    target = MinMaxScaler(feature_range=(lo, hi))
    target.data_min_ = np.array([t["data_min"]], dtype=np.float64)
    target.data_max_ = np.array([t["data_max"]], dtype=np.float64)
    target.data_range_ = target.data_max_ - target.data_min_
    target.scale_ = (hi - lo) / np.where(target.data_range_ == 0, 1.0, target.data_range_)
    target.min_ = lo - target.data_min_ * target.scale_
    target.n_samples_seen_ = int(t["n_samples_seen"])
    target.n_features_in_ = 1
    return Scalers(
        user=_standard_from_dict(data["user"]),
        movie=_standard_from_dict(data["movie"]),
        target=target,
        user_names=list(data["user"]["feature_names"]),
        movie_names=list(data["movie"]["feature_names"]),
        target_scale=scale,
    )
