"""The two phases of a night, ``train`` (the holdout left out) and ``full`` (every rating): the
features and scalers stages, and the scaled model inputs (:class:`Prepared`) that training,
evaluation and export read back.

Each stage reads files, writes files and returns their paths (:mod:`tasks.stage_results`), so the
flow passes paths between tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from tasks.preparation.feature_tables import read_features, write_features
from tasks.preparation.features import Features, compute_features, per_user_holdout
from tasks.preparation.history import History, read_history, user_history, write_history
from tasks.preparation.scalers import Scalers, fit_scalers, load_scalers, save_scalers
from tasks.preparation.training import TowerInput, TrainData
from tasks.presets import ModelConfig
from tasks.stage_results import FeatureDirs, Phases
from tasks.store.tables import load_movies, load_ratings

PHASES: tuple[Literal["train"], Literal["full"]] = ("train", "full")


def run_features(
    ratings_path: Path,
    movies_path: Path,
    out_dir: Path,
    config: ModelConfig,
    holdout_fraction: float,
) -> FeatureDirs:
    """Features of the train phase (holdout excluded) and of the full phase (every rating)."""
    ratings, movies = load_ratings(ratings_path), load_movies(movies_path)
    users = np.sort(ratings["user_id"].unique())
    hold = per_user_holdout(ratings, holdout_fraction)
    dirs: dict[str, str] = {}
    for phase, subset in (("train", ratings[~hold]), ("full", ratings)):
        kind, k = config.features, config.factors
        feats = compute_features(subset, movies, users, kind, config.shrinkage, factors=k)
        d = Path(out_dir) / phase
        write_features(
            d / "user_features.parquet", feats.user_ids, feats.user_x, feats.user_names, "user"
        )
        write_features(
            d / "movie_features.parquet", feats.movie_ids, feats.movie_x, feats.movie_names, "movie"
        )
        if config.history_length > 0:
            hist = user_history(subset, feats.user_ids, feats.movie_ids, config.history_length)
            write_history(d / "user_history.parquet", feats.user_ids, feats.movie_ids, hist)
        dirs[phase] = str(d)
    return FeatureDirs(
        train=dirs["train"],
        full=dirs["full"],
        holdout_ratings=int(hold.sum()),
        train_ratings=int((~hold).sum()),
    )


def load_phase(feature_dir: Path) -> Features:
    uid, ux, un = read_features(Path(feature_dir) / "user_features.parquet", "user")
    mid, mx, mn = read_features(Path(feature_dir) / "movie_features.parquet", "movie")
    return Features(uid, ux, un, mid, mx, mn)


def run_scalers(
    ratings_path: Path, feature_dirs: Phases, holdout_fraction: float, out_dir: Path | None = None
) -> Phases:
    """Fit scalers per phase on that phase's features and ratings; write them as JSON.

    To ``out_dir/<phase>/scalers.json`` (default: into the phase's feature directory).
    """
    ratings = load_ratings(ratings_path)
    hold = per_user_holdout(ratings, holdout_fraction)
    out: dict[str, str] = {}
    for phase in PHASES:
        feats = load_phase(Path(feature_dirs[phase]))
        y = (
            ratings["rating"].to_numpy()[~hold]
            if phase == "train"
            else ratings["rating"].to_numpy()
        )
        path = (
            Path(out_dir) / phase if out_dir is not None else Path(feature_dirs[phase])
        ) / "scalers.json"
        save_scalers(
            fit_scalers(feats.user_x, feats.movie_x, y, feats.user_names, feats.movie_names), path
        )
        out[phase] = str(path)
    return Phases(train=out["train"], full=out["full"])


@dataclass(frozen=True)
class Prepared:
    """Scaled features and rating triples of one phase, ready for training or scoring."""

    feats: Features
    scalers: Scalers
    user_x: np.ndarray
    movie_x: np.ndarray
    user_hist: History | None = None

    @property
    def user_input(self) -> TowerInput:
        """What the user tower takes: the scaled features, and the history if it has one."""
        return (
            self.user_x
            if self.user_hist is None
            else (self.user_x, self.user_hist.ids, self.user_hist.values)
        )

    def train_data(self, ratings: pd.DataFrame, config: ModelConfig) -> TrainData:
        """Training triples of ``ratings`` (the ratings these features came from), with what
        ``config`` trains on.
        """
        from tasks.preparation.loo import leave_one_out

        loo = (
            leave_one_out(ratings, self.feats, self.scalers, config.shrinkage)
            if config.leave_one_out
            else None
        )
        return TrainData(
            self.user_x, self.movie_x, *self.triples(ratings), user_hist=self.user_hist, loo=loo
        )

    def triples(self, ratings: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = pd.Index(self.feats.user_ids).get_indexer(ratings["user_id"].to_numpy())
        m = pd.Index(self.feats.movie_ids).get_indexer(ratings["movie_id"].to_numpy())
        return u, m, self.scalers.rating_to_target(ratings["rating"].to_numpy())


def prepared(feats: Features, scalers: Scalers, user_hist: History | None = None) -> Prepared:
    """Scale ``feats`` with ``scalers`` (which must have been fitted on the same columns)."""
    if scalers.user_names != feats.user_names or scalers.movie_names != feats.movie_names:
        raise ValueError("the scalers were fitted on other feature columns than these features")
    ux = scalers.user.transform(feats.user_x).astype(np.float32)
    mx = scalers.movie.transform(feats.movie_x).astype(np.float32)
    return Prepared(feats, scalers, ux, mx, user_hist)


def prepare(feature_dir: Path, scalers_path: Path) -> Prepared:
    """Load a phase's features and scalers from files and scale the features."""
    try:
        feats = load_phase(feature_dir)
        hist_path = Path(feature_dir) / "user_history.parquet"
        hist = (
            read_history(hist_path, feats.user_ids, feats.movie_ids) if hist_path.exists() else None
        )
        return prepared(feats, load_scalers(scalers_path), hist)
    except ValueError as exc:
        raise ValueError(f"{scalers_path} and {feature_dir}: {exc}") from exc
