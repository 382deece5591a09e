"""The train and refit stages: the validation model (early-stopped on the holdout), then the
published model trained on every rating for the validation run's best number of epochs.

Keras and the training loop are imported inside the functions: the modules that only read the
prepared inputs (evaluation, export, the shard workers) stay free of TensorFlow until they load a
model.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import faults
from tasks.preparation.features import per_user_holdout
from tasks.preparation.phases import Prepared, prepare
from tasks.preparation.training import TrainData
from tasks.presets import ModelConfig
from tasks.stage_results import Phases, Refit, Trained
from tasks.store.tables import load_ratings

# a warm refit's epochs, as a share of the validation run's (the newest 20% of ratings)
WARM_REFIT_SHARE = 0.2


def _epoch_hook(
    phase: str, on_epoch: Callable[[str, dict[str, float]], None] | None
) -> Callable[[dict[str, float]], None]:
    """The per-epoch callback of one training phase; also the crash tests' ``<phase>:epoch-N`` fault
    point."""

    def hook(rec: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(phase, rec)
        faults.point(f"{phase}:epoch-{int(rec['epoch'])}")

    return hook


@dataclass(frozen=True)
class ValidationInputs:
    """What every validation model of a night trains and is judged on: the ratings, the holdout
    mask, the train phase's scaled features, its training data and the held-out triples (built
    once, however many models train on them)."""

    ratings: pd.DataFrame
    hold: np.ndarray
    train: Prepared
    data: TrainData
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None


def validation_inputs(
    ratings_path: Path,
    feature_dirs: Phases,
    scaler_paths: Phases,
    config: ModelConfig,
    holdout_fraction: float,
) -> ValidationInputs:
    """The train phase's inputs (:class:`ValidationInputs`) for models of ``config``'s features."""
    ratings = load_ratings(ratings_path)
    hold = per_user_holdout(ratings, holdout_fraction)
    train = prepare(Path(feature_dirs["train"]), Path(scaler_paths["train"]))
    val = train.triples(ratings[hold]) if hold.any() else None
    return ValidationInputs(ratings, hold, train, train.train_data(ratings[~hold], config), val)


def train_validation(
    inputs: ValidationInputs,
    out_dir: Path,
    config: ModelConfig,
    seed: int,
    on_epoch: Callable[[str, dict[str, float]], None] | None = None,
    init: Callable[[Any], None] | None = None,
) -> Trained:
    """One validation model on ``inputs`` (``init`` may set its weights first), saved as
    ``out_dir/model_validation.keras``, with its RMSE in stars on the held-out ratings."""
    from tasks.modeling.model import save_model
    from tasks.modeling.train import predict_scores, train_model

    train, val = inputs.train, inputs.val
    hook = _epoch_hook("validate", on_epoch)
    first = train_model(inputs.data, config, seed, validation=val, on_epoch=hook, init=init)
    path = save_model(first.model, Path(out_dir) / "model_validation.keras")
    val_rmse = None
    if val is not None:
        stars = train.scalers.target_to_rating(
            predict_scores(first.model, train.user_input, train.movie_x, val[0], val[1])
        )
        held = inputs.ratings["rating"].to_numpy()[inputs.hold]
        val_rmse = float(np.sqrt(np.mean((stars - held) ** 2)))
    return Trained(
        validation_model=str(path),
        best_epoch=first.best_epoch,
        epochs_run=first.epochs_run,
        history=first.history,
        examples_per_second=first.examples_per_second,
        val_rmse=val_rmse,
    )


def weights_of(path: Path) -> Callable[[Any], None]:
    """An ``init`` hook of :func:`tasks.modeling.train.train_model`: the weights of the model saved
    at ``path``."""
    from tasks.modeling.model import load_model

    weights = load_model(Path(path)).get_weights()
    return lambda model: model.set_weights(weights)


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
    """Train the published ``model.keras`` on every rating (full-phase features and scalers), from
    ``warm`` if given.

    With ``config.refit == "warm"`` training goes on from the validation model's weights for
    :data:`WARM_REFIT_SHARE` of ``epochs`` and of the examples a full refit would see (the example
    budget of big data sets bounds the full refit's epochs, so the warm one is bounded by a fifth of
    that). With ``"none"``, or no holdout (the train phase then already is every rating), the
    validation model is published as it is, with the train phase's scalers it was trained with.
    """
    from tasks.modeling.model import save_model
    from tasks.modeling.train import train_model
    from tasks.modeling.warmstart import initializer

    outcome: dict[str, Any] = {}
    ratings = load_ratings(ratings_path)
    final_path = Path(out_dir) / "model.keras"
    if config.refit == "none" or not per_user_holdout(ratings, holdout_fraction).any():
        shutil.copyfile(validation_model, final_path)
        return Refit(model=str(final_path), scalers=scaler_paths["train"], refit_epochs=0)
    full = prepare(Path(feature_dirs["full"]), Path(scaler_paths["full"]))
    init = initializer(warm, full.feats.movie_ids, outcome)
    # the validation weights, then a fifth of a full refit's epochs and examples
    if config.refit == "warm":
        from tasks.modeling.train import examples_per_epoch

        full_examples = examples_per_epoch(len(ratings), max(1, epochs), config.max_examples) * max(
            1, epochs
        )
        config = dataclasses.replace(
            config, max_examples=max(1, math.ceil(full_examples * WARM_REFIT_SHARE))
        )
        epochs, init = math.ceil(max(1, epochs) * WARM_REFIT_SHARE), weights_of(validation_model)
    final = train_model(
        full.train_data(ratings, config),
        config,
        seed,
        epochs=max(1, epochs),
        on_epoch=_epoch_hook("refit", on_epoch),
        init=init,
    )
    save_model(final.model, final_path)
    result = Refit(
        model=str(final_path),
        scalers=scaler_paths["full"],
        refit_epochs=final.epochs_run,
        history=final.history,
    )
    if "warm_start" in outcome:
        result["warm_start"] = outcome["warm_start"]
    return result
