"""The fitting half of the nightly job as plain functions: ingest, features, scalers, train.

Each stage reads files and writes files and returns their paths (plus small
JSON-able facts), so the flow can pass paths between tasks.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from tasks import faults
from tasks.ingestion.ingest import ingest
from tasks.modeling.config import ModelConfig
from tasks.preparation.feature_tables import read_features, write_features
from tasks.preparation.features import Features, compute_features, per_user_holdout
from tasks.preparation.history import History, read_history, user_history, write_history
from tasks.preparation.scalers import Scalers, fit_scalers, load_scalers, save_scalers
from tasks.stage_results import FeatureDirs, Ingested, Phases, Refit, Trained
from tasks.store import schemas
from tasks.store.storage import read_table, sha256_file

if TYPE_CHECKING:
    from tasks.modeling.model import TowerInput
    from tasks.modeling.train import TrainData

PHASES: tuple[Literal["train"], Literal["full"]] = ("train", "full")


def input_hash(ratings_src: Path, movies_src: Path) -> str:
    """Content hash of the two input files (what the store is keyed on)."""
    return sha256_file(Path(ratings_src))[:32] + sha256_file(Path(movies_src))[:32]


def run_ingest(
    ratings_src: Path, movies_src: Path, store_dir: Path, rejects_path: Path | None = None, max_reject_share: float = 0.01
) -> Ingested:
    """Ingest both inputs into ``store_dir``; bad ratings rows go to ``rejects_path`` (see :mod:`tasks.ingestion.rejects`)."""
    ratings, movies, stats = ingest(
        Path(ratings_src), Path(movies_src), Path(store_dir), rejects_path=rejects_path, max_reject_share=max_reject_share
    )
    return Ingested(ratings=str(ratings), movies=str(movies), stats=stats.to_dict())


def load_ratings(path: Path) -> pd.DataFrame:
    frame: pd.DataFrame = read_table(Path(path), schemas.RATINGS, "ratings").to_pandas()
    return frame


def load_movies(path: Path) -> pd.DataFrame:
    frame: pd.DataFrame = read_table(Path(path), schemas.MOVIES, "movies").to_pandas()
    return frame


def run_features(ratings_path: Path, movies_path: Path, out_dir: Path, config: ModelConfig, holdout_fraction: float) -> FeatureDirs:
    """Features of the train phase (holdout excluded) and of the full phase (every rating)."""
    ratings, movies = load_ratings(ratings_path), load_movies(movies_path)
    users = np.sort(ratings["user_id"].unique())
    hold = per_user_holdout(ratings, holdout_fraction)
    dirs: dict[str, str] = {}
    for phase, subset in (("train", ratings[~hold]), ("full", ratings)):
        feats = compute_features(subset, movies, users, config.features, config.shrinkage)
        d = Path(out_dir) / phase
        write_features(d / "user_features.parquet", feats.user_ids, feats.user_x, feats.user_names, "user")
        write_features(d / "movie_features.parquet", feats.movie_ids, feats.movie_x, feats.movie_names, "movie")
        if config.history_length > 0:
            hist = user_history(subset, feats.user_ids, feats.movie_ids, config.history_length)
            write_history(d / "user_history.parquet", feats.user_ids, feats.movie_ids, hist)
        dirs[phase] = str(d)
    return FeatureDirs(train=dirs["train"], full=dirs["full"], holdout_ratings=int(hold.sum()), train_ratings=int((~hold).sum()))


def load_phase(feature_dir: Path) -> Features:
    uid, ux, un = read_features(Path(feature_dir) / "user_features.parquet", "user")
    mid, mx, mn = read_features(Path(feature_dir) / "movie_features.parquet", "movie")
    return Features(uid, ux, un, mid, mx, mn)


def run_scalers(ratings_path: Path, feature_dirs: Phases, holdout_fraction: float, out_dir: Path | None = None) -> Phases:
    """Fit scalers per phase on that phase's features and ratings; write them as JSON.

    To ``out_dir/<phase>/scalers.json`` (default: into the phase's feature directory).
    """
    ratings = load_ratings(ratings_path)
    hold = per_user_holdout(ratings, holdout_fraction)
    out: dict[str, str] = {}
    for phase in PHASES:
        feats = load_phase(Path(feature_dirs[phase]))
        y = ratings["rating"].to_numpy()[~hold] if phase == "train" else ratings["rating"].to_numpy()
        path = (Path(out_dir) / phase if out_dir is not None else Path(feature_dirs[phase])) / "scalers.json"
        save_scalers(fit_scalers(feats.user_x, feats.movie_x, y, feats.user_names, feats.movie_names), path)
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
        return self.user_x if self.user_hist is None else (self.user_x, self.user_hist.ids, self.user_hist.values)

    def train_data(self, ratings: pd.DataFrame, config: ModelConfig) -> TrainData:
        """Training triples of ``ratings`` (the ratings these features came from), with what ``config`` trains on."""
        from tasks.modeling.train import TrainData
        from tasks.preparation.loo import leave_one_out

        loo = leave_one_out(ratings, self.feats, self.scalers, config.shrinkage) if config.leave_one_out else None
        return TrainData(self.user_x, self.movie_x, *self.triples(ratings), user_hist=self.user_hist, loo=loo)

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
        hist = read_history(hist_path, feats.user_ids, feats.movie_ids) if hist_path.exists() else None
        return prepared(feats, load_scalers(scalers_path), hist)
    except ValueError as exc:
        raise ValueError(f"{scalers_path} and {feature_dir}: {exc}") from exc


def _epoch_hook(phase: str, on_epoch: Callable[[str, dict[str, float]], None] | None) -> Callable[[dict[str, float]], None]:
    """The per-epoch callback of one training phase; also the crash tests' ``<phase>:epoch-N`` fault point."""

    def hook(rec: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(phase, rec)
        faults.point(f"{phase}:epoch-{int(rec['epoch'])}")

    return hook


def run_train(
    ratings_path: Path,
    feature_dirs: Phases,
    scaler_paths: Phases,
    out_dir: Path,
    config: ModelConfig,
    seed: int,
    holdout_fraction: float,
    on_epoch: Callable[[str, dict[str, float]], None] | None = None,
    warm: dict[str, str] | None = None,
) -> Trained:
    """Train on the train phase, early-stopping on the holdout; save ``model_validation.keras``.

    The validation model is what the evaluate stage scores; :func:`run_refit`
    then trains the published model on every rating for ``best_epoch`` epochs.
    ``warm`` (:func:`tasks.modeling.warmstart.source`) starts from the published model's weights.
    """
    from tasks.modeling.model import save_model
    from tasks.modeling.train import predict_scores, train_model
    from tasks.modeling.warmstart import initializer

    outcome: dict[str, Any] = {}

    ratings = load_ratings(ratings_path)
    hold = per_user_holdout(ratings, holdout_fraction)
    train = prepare(Path(feature_dirs["train"]), Path(scaler_paths["train"]))
    val = train.triples(ratings[hold]) if hold.any() else None
    first = train_model(
        train.train_data(ratings[~hold], config), config, seed, validation=val,
        on_epoch=_epoch_hook("validate", on_epoch), init=initializer(warm, train.feats.movie_ids, outcome),
    )  # fmt: skip
    path = save_model(first.model, Path(out_dir) / "model_validation.keras")
    val_rmse = None
    if val is not None:
        stars = train.scalers.target_to_rating(predict_scores(first.model, train.user_input, train.movie_x, val[0], val[1]))
        val_rmse = float(np.sqrt(np.mean((stars - ratings["rating"].to_numpy()[hold]) ** 2)))
    result = Trained(
        validation_model=str(path),
        best_epoch=first.best_epoch,
        epochs_run=first.epochs_run,
        history=first.history,
        examples_per_second=first.examples_per_second,
        val_rmse=val_rmse,
    )
    if "warm_start" in outcome:
        result["warm_start"] = outcome["warm_start"]
    return result


def run_refit(
    ratings_path: Path,
    feature_dirs: Phases,
    scaler_paths: Phases,
    validation_model: Path,
    out_dir: Path,
    config: ModelConfig,
    seed: int,
    epochs: int,
    holdout_fraction: float,
    on_epoch: Callable[[str, dict[str, float]], None] | None = None,
    warm: dict[str, str] | None = None,
) -> Refit:
    """Train the published ``model.keras`` on every rating (full-phase features and scalers), from ``warm`` if given.

    With no holdout the train phase already is every rating, so the validation
    model is published as it is.
    """
    from tasks.modeling.model import save_model
    from tasks.modeling.train import train_model
    from tasks.modeling.warmstart import initializer

    outcome: dict[str, Any] = {}
    ratings = load_ratings(ratings_path)
    final_path = Path(out_dir) / "model.keras"
    if not per_user_holdout(ratings, holdout_fraction).any():
        shutil.copyfile(validation_model, final_path)
        return Refit(model=str(final_path), refit_epochs=0)
    full = prepare(Path(feature_dirs["full"]), Path(scaler_paths["full"]))
    final = train_model(
        full.train_data(ratings, config), config, seed, epochs=max(1, epochs),
        on_epoch=_epoch_hook("refit", on_epoch), init=initializer(warm, full.feats.movie_ids, outcome),
    )  # fmt: skip
    save_model(final.model, final_path)
    result = Refit(model=str(final_path), refit_epochs=final.epochs_run, history=final.history)
    if "warm_start" in outcome:
        result["warm_start"] = outcome["warm_start"]
    return result
