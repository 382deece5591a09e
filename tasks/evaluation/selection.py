"""The night's choice of loss balance: one validation model per MSE weight, the holdout keeps one.

Why: the loss weighs the rating (the MSE term) against the ranking (the in-batch softmax), and
that balance is the setting the data sets disagree on most. Measured with
``benchmarks/nightly_quality.py`` (seed 42, the published top-10's NDCG@10), MSE weight 40 against
10: ml-latest-small 0.1270 against 0.1164, the generator's latent law 0.2382 against 0.2696
(EASE^R 0.1038 and 0.2359). A preset tuned on either would lose the other, so the night trains a
validation model per weight (``ModelConfig.mse_weight`` first, then each of its
``mse_weight_alternatives``, going on from the first's weights for a quarter of its epochs) and
keeps the one whose top-k, with its best popularity prior
weight, scores best on the holdout; the first unless another is better with confidence
(:func:`tasks.evaluation.evaluate.best_candidate`).

The choice rests on at most :data:`tasks.evaluation.evaluate.CHOICE_USERS` of the users the
prior's weight is chosen on (:func:`tasks.evaluation.evaluate.choice_users`). Above twice
``SWEEP_USERS`` holdout users the gate judges users the choice never saw; below, the gate's users
include them, and the alternative is only taken when it is better with confidence.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tasks.evaluation.evaluate import best_candidate, choice_users, holdout_score
from tasks.evaluation.metrics import relevant_sets
from tasks.modeling.fitting import train_validation, validation_inputs, weights_of
from tasks.presets import ModelConfig
from tasks.stage_results import LossCandidate, Phases, Trained


def run_train_choosing(
    ratings_path: Path,
    feature_dirs: Phases,
    scaler_paths: Phases,
    out_dir: Path,
    config: ModelConfig,
    seed: int,
    holdout_fraction: float,
    k: int,
    on_epoch: Callable[[str, dict[str, float]], None] | None = None,
    warm: dict[str, str] | None = None,
) -> Trained:
    """The train stage: a validation model (:func:`tasks.modeling.fitting.train_validation`)
    per MSE weight, on one load of the inputs (:func:`tasks.modeling.fitting.validation_inputs`),
    and the holdout's choice as ``model_validation.keras``; the result says which weight
    (``mse_weight``) and what each scored (``candidates``).

    With no alternative, or nothing held out to choose on, it trains ``config.mse_weight`` alone.
    """
    from tasks.modeling.model import load_model
    from tasks.modeling.warmstart import initializer

    configs = config.candidates()
    # the ratings, features and training data once, for every candidate
    inputs = validation_inputs(
        ratings_path, feature_dirs, scaler_paths, configs[0], holdout_fraction
    )
    ratings, hold = inputs.ratings, inputs.hold
    relevant = relevant_sets(ratings[hold]) if hold.any() else {}
    outcome: dict[str, Any] = {}

    def train(i: int, out: Path, init: Callable[[Any], None] | None) -> Trained:
        hook = _offset(on_epoch, sum(c.max_epochs for c in configs[:i]))
        trained = train_validation(inputs, out, configs[i], seed, hook, init)
        if "warm_start" in outcome:
            trained["warm_start"] = outcome["warm_start"]
        return {**trained, "mse_weight": configs[i].mse_weight}

    first_init = initializer(warm, inputs.train.feats.movie_ids, outcome)
    if len(configs) == 1 or not relevant:
        return train(0, Path(out_dir), first_init)
    weights = [c.mse_weight for c in configs]
    asked = choice_users(relevant, seed)
    phase = inputs.train
    seen = ratings[~hold]
    runs: list[Trained] = []
    scores: list[np.ndarray] = []
    candidates: list[LossCandidate] = []
    for i, weight in enumerate(weights):
        # an alternative goes on from the first's weights
        init = first_init if i == 0 else weights_of(Path(runs[0]["validation_model"]))
        trained = train(i, Path(out_dir) / f"mse-weight-{i}", init)
        model = load_model(Path(trained["validation_model"]))
        ndcg, prior = holdout_score(model, phase, seen, asked, k, config.popularity_prior)
        runs.append(trained)
        scores.append(ndcg)
        candidates.append(
            LossCandidate(
                mse_weight=weight,
                ndcg=round(float(np.mean(ndcg)), 6),
                prior_weight=prior,
                val_rmse=trained["val_rmse"],
                best_epoch=trained["best_epoch"],
            )
        )
    best = best_candidate(scores, seed)
    path = Path(out_dir) / "model_validation.keras"
    shutil.copyfile(runs[best]["validation_model"], path)
    # an alternative's epochs count on from the first's (the refit's epochs follow them)
    epochs_before = runs[0]["best_epoch"] if best else 0
    return {
        **runs[best],
        "best_epoch": runs[best]["best_epoch"] + epochs_before,
        "epochs_run": runs[best]["epochs_run"] + (runs[0]["epochs_run"] if best else 0),
        "validation_model": str(path),
        "candidates": candidates,
        "chosen_on_users": len(asked),
    }


def _offset(
    on_epoch: Callable[[str, dict[str, float]], None] | None, epochs_before: int
) -> Callable[[str, dict[str, float]], None] | None:
    """``on_epoch`` counting on from ``epochs_before`` (the stage's progress spans every
    candidate)."""
    if on_epoch is None or epochs_before == 0:
        return on_epoch
    callback = on_epoch

    def shifted(phase: str, rec: dict[str, float]) -> None:
        callback(phase, {**rec, "epoch": rec["epoch"] + epochs_before})

    return shifted
