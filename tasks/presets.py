"""Model presets: the course's lab configuration and towerflow's default.

A preset fixes the feature set and the training recipe. ``lab`` reproduces the
course (raw mean-rating features, MSE only, Adam 0.01, batch 32, 30 epochs);
``default`` keeps the same architecture (two MLP towers, L2-normalized
outputs, dot product, MinMax(-1, 1) rating target) but uses confidence-aware
features, trains on leave-one-out rows (:mod:`tasks.preparation.loo`) and adds a
popularity-corrected in-batch softmax beside the MSE.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from tasks.errors import ConfigError

# An alternative MSE weight's model (tasks.evaluation.selection) goes on from the first's validation
# model for this share of its epochs and of its example budget. Measured on the latent law (seed
# 42): 0.2724, against 0.2702 for an alternative trained from scratch for every epoch, in a quarter
# of its time; ml-latest-small kept 40 either way.
ALTERNATIVE_SHARE = 0.25

FeatureSet = Literal["lab", "confidence"]
TargetScale = Literal["minmax", "stars"]
Refit = Literal["full", "warm", "none"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides what the model learns; hashed into the model version."""

    preset: str
    features: FeatureSet
    hidden: tuple[int, ...] = (256, 128)
    embedding_dim: int = 32
    learning_rate: float = 3e-3
    batch_size: int = 1024
    max_epochs: int = 40
    patience: int | None = 5
    mse_weight: float = 40.0
    # Other MSE weights the night tries (tasks.evaluation.selection): the validation phase trains
    # one model per weight, mse_weight's first, and the holdout keeps the one whose top-k scores
    # best; () = mse_weight alone.
    mse_weight_alternatives: tuple[float, ...] = ()
    softmax_weight: float = 1.0
    temperature: float = 0.1
    logq_correction: bool = True
    dropout: float = 0.2
    shrinkage: float = 10.0
    history_length: int = 0
    # Collaborative factors beside the content (tasks.preparation.factors): k SVD factors per
    # movie of the night's binary rating matrix, each user's projection onto them (2k columns);
    # 0 = content only.
    factors: int = 0
    # Train on leave-one-out feature rows (tasks.preparation.loo): confidence features only.
    leave_one_out: bool = True
    # Rank by the model's score plus a popularity prior whose weight the nightly holdout chooses
    # (tasks.serving.popularity); off, the served score is the towers' dot product alone (the
    # course).
    popularity_prior: bool = True
    # At most this many training examples in all (epochs shrink to random subsets above it):
    # ml-latest-small (20 epochs x 80k) is under it; 2.5M and 25M ratings train on 2.4M examples,
    # what keeps a 2.5M night (two trainings at about 35k leave-one-out examples/s on 2 cores)
    # within 4 minutes.
    max_examples: int | None = 2_400_000
    # The two switches of ``benchmarks/ablation.py``: L2-normalize the tower outputs, and
    # train on the rating MinMax-scaled to [-1, 1] ("minmax") or left in stars ("stars").
    normalize: bool = True
    target_scale: TargetScale = "minmax"
    # What the night publishes: "full" trains the model again on every rating (the validation run's
    # best number of epochs); "warm" goes on from the validation model's weights on every rating for
    # a fifth of those epochs; "none" publishes the validation model itself, the one the holdout and
    # the gate judged, reading features computed on every rating (so the newest ratings still reach
    # every user).
    refit: Refit = "full"

    def __post_init__(self) -> None:
        positive: dict[str, float] = {
            "embedding_dim": self.embedding_dim,
            "batch_size": self.batch_size,
            "max_epochs": self.max_epochs,
        }
        positive |= {"learning_rate": self.learning_rate, "temperature": self.temperature}
        # a user or movie with no (other) rating falls back on the prior alone
        if self.features == "confidence":
            positive["shrinkage"] = self.shrinkage
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"model config {name} must be > 0, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model config dropout must be in [0, 1), got {self.dropout!r}")
        if self.refit not in ("full", "warm", "none"):
            raise ConfigError(
                f"model config refit must be 'full', 'warm' or 'none', got {self.refit!r}"
            )
        if self.factors < 0 or (self.factors > 0 and self.features != "confidence"):
            what = f"{self.factors!r} with the {self.features!r} features"
            need = "must be >= 0, and 0 without confidence features"
            raise ConfigError(f"model config factors {need}; got {what}")
        if any(not w > 0 for w in self.mse_weight_alternatives):
            raise ConfigError(
                f"model config mse_weight_alternatives must all be > 0, got "
                f"{self.mse_weight_alternatives!r}"
            )
        if any(width < 1 for width in self.hidden) or self.history_length < 0:
            raise ConfigError(
                "model config needs hidden widths >= 1 and history_length >= 0, "
                f"got {self.hidden}, {self.history_length}"
            )

    def candidates(self) -> list[ModelConfig]:
        """The config of each MSE weight's validation model: ``mse_weight``'s as it is, then each
        alternative's with :data:`ALTERNATIVE_SHARE` of the epochs and of the example budget (it
        goes on from the first's weights); none with alternatives of its own."""
        first = dataclasses.replace(self, mse_weight_alternatives=())
        epochs = max(1, math.ceil(self.max_epochs * ALTERNATIVE_SHARE))
        budget = None if self.max_examples is None else self.max_examples * ALTERNATIVE_SHARE
        return [first] + [
            dataclasses.replace(
                first,
                mse_weight=weight,
                max_epochs=epochs,
                max_examples=None if budget is None else max(1, math.ceil(budget)),
            )
            for weight in self.mse_weight_alternatives
        ]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hidden"] = list(self.hidden)
        data["mse_weight_alternatives"] = list(self.mse_weight_alternatives)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}"
            )
        values = dict(data)
        values["hidden"] = tuple(values.get("hidden", (256, 128)))
        values["mse_weight_alternatives"] = tuple(values.get("mse_weight_alternatives", ()))
        return cls(**values)


PRESETS: dict[str, ModelConfig] = {
    # Measured on ml-latest-small (per-user temporal protocol, benchmarks/quality.py, seeds 1, 2, 3,
    # 42): NDCG@10 0.099-0.105 (ALS 0.084-0.086), RMSE 0.879-0.881. Early stopping on the global
    # temporal holdout stopped after one epoch (NDCG@10 0.077), so the epochs are fixed.
    # The night publishes a warm refit (a fifth of the epochs and examples, from the validation
    # weights): benchmarks/nightly_quality.py, 592 users, seeds 42/1/2: NDCG@10 0.1050 (full refit
    # 0.1079, inside every interval), RMSE 0.883 (0.880), train + refit 73-79 s (131-140 s);
    # popularity-led 600k, 3,930 users: 0.1604 / RMSE 0.660 (full 0.1599-0.1613 / 0.659-0.663).
    # 16 collaborative factors (tasks.preparation.factors), benchmarks/nightly_quality.py side by
    # side with --factors 0: ml-latest-small NDCG@10 0.1228 / 0.1263 (seeds 42 / 1; content only
    # 0.1063 / 0.1030, EASE^R 0.1038), RMSE 0.879 / 0.872; latent law 0.2416 (0.1137, EASE^R
    # 0.2359); popularity-led 0.1588 (0.1604, EASE^R 0.1270); train + refit no slower (56-70 s vs
    # 64-74 s).
    # MSE weight 10 beside 40, the holdout choosing (tasks.evaluation.selection): the latent law
    # 0.2382 -> 0.2696 (10 kept), ml-latest-small unchanged (40 kept); see docs/model-quality.md.
    "default": ModelConfig(
        preset="default",
        features="confidence",
        max_epochs=20,
        patience=None,
        refit="warm",
        factors=16,
        mse_weight_alternatives=(10.0,),
    ),
    # The default's recipe tilted toward the rating: a history vector (the user's last 64 movies and
    # how they rated them), more MSE weight, dropout and shrinkage, 10 epochs. Same benchmark:
    # NDCG@10 0.084-0.092, RMSE 0.867-0.874.
    "balanced": ModelConfig(
        preset="balanced",
        features="confidence",
        max_epochs=10,
        patience=None,
        mse_weight=60.0,
        dropout=0.3,
        shrinkage=25.0,
        history_length=64,
    ),
    "lab": ModelConfig(
        preset="lab",
        features="lab",
        learning_rate=0.01,
        batch_size=32,
        max_epochs=30,
        patience=None,
        mse_weight=1.0,
        softmax_weight=0.0,
        logq_correction=False,
        dropout=0.0,
        leave_one_out=False,
        popularity_prior=False,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Return preset ``name`` with ``overrides`` (``None`` values are ignored);
    ``loss_choice=False`` (``--no-loss-choice``) keeps its first MSE weight alone."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    loss_choice = overrides.pop("loss_choice", True)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not loss_choice:
        changes["mse_weight_alternatives"] = ()
    return dataclasses.replace(PRESETS[name], **changes)
