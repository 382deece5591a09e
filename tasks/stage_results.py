"""What the nightly stages hand each other: file paths and small facts, one typed shape per stage.

They are ``TypedDict`` rather than dataclasses because a resumable stage's result is stored as plain
JSON (:mod:`flows.caching`) and comes back from a re-run as the same dict, with no decoding step
that could drift from the class; mypy still checks every key the flow reads. The gate's verdict is
typed here too (:class:`GateResult`, latest.json's ``gate``); the drift figures stay documents.
``latest.json`` itself is a pydantic model with one reader, :class:`tasks.store.latest.Latest`.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict, final


class Inputs(TypedDict):
    """The input files of a night: one ratings file, or the several files of a drop folder."""

    ratings: str | list[str]
    movies: str


class Ingested(TypedDict):
    """The stored ratings and movies (Parquet, schema-checked) and the ingest report."""

    ratings: str
    movies: str
    stats: dict[str, Any]


class LedgerIngested(Ingested):
    """An incremental ingest also names the files it read and the hash the night's version rests
    on.
    """

    input_hash: str
    inputs: Inputs


class Phases(TypedDict):
    """One path per phase: ``train`` (the holdout excluded) and ``full`` (every rating)."""

    train: str
    full: str


class FeatureDirs(Phases):
    """The feature directories of both phases, and how the ratings were split."""

    holdout_ratings: int
    train_ratings: int


class LossCandidate(TypedDict):
    """One MSE weight the night tried (:mod:`tasks.evaluation.selection`) and what its validation
    model scored on the holdout."""

    mse_weight: float
    ndcg: float  # mean NDCG@k of its top-k at its best prior weight, on the choice's users
    prior_weight: float
    val_rmse: float | None
    best_epoch: int


class Trained(TypedDict):
    """The validation model (trained without the holdout) and how its training went."""

    validation_model: str
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    examples_per_second: float
    val_rmse: float | None
    warm_start: NotRequired[str]
    # the MSE weight it was trained with, the weights tried and the users the choice rests on
    mse_weight: NotRequired[float]
    candidates: NotRequired[list[LossCandidate]]
    chosen_on_users: NotRequired[int]


class Refit(TypedDict):
    """The model to publish and the scalers it reads its features with: trained again on every
    rating for the validation run's best number of epochs (``refit="full"``), or the validation
    model itself."""

    model: str
    scalers: str
    refit_epochs: int
    history: NotRequired[list[dict[str, float]]]
    warm_start: NotRequired[str]


class PriorChoice(TypedDict):
    """The popularity prior's weight and the NDCG@k each candidate weight reached."""

    weight: float
    ndcg_by_weight: dict[str, float]
    chosen_on_users: int


@final
class Evaluation(TypedDict):
    """Holdout metrics per method, the paired interval against most-popular, the users behind them,
    the prior.
    """

    metrics: dict[str, dict[str, float]]
    vs_baseline: dict[str, Any]
    users: int
    prior: PriorChoice


@final
class Skipped(TypedDict):
    """Why the holdout could not be measured (the gate is then undecided and the night
    publishes).
    """

    skipped: str


class Exported(TypedDict):
    """The model directory: embeddings, FAISS index, scalers, serving.json."""

    model_dir: str
    users: int
    movies: int
    dim: int
    prior_weight: float


class Scored(TypedDict):
    """Part files of a sharded table, in shard order."""

    parts: list[str]
    shards: int
    shards_reused: int
    rows: int


class Recommended(Scored):
    """The recommendations' parts, the users they cover and a histogram of their scores."""

    users: int
    score_hist: list[int]


class SimilarScored(Scored):
    """The similar-movies parts and the movies they cover."""

    movies: int


class IntervalDoc(TypedDict):
    """A mean and its 95% interval (:class:`tasks.evaluation.gate.Interval`)."""

    mean: float
    low: float
    high: float


class ComparisonDoc(TypedDict):
    """One comparison the gate made (:class:`tasks.evaluation.gate.Comparison`)."""

    against: str
    model: float
    other: float
    difference: IntervalDoc
    outcome: Literal["better", "worse", "undecided"]


class GateResult(TypedDict):
    """The quality-gate stage's result and latest.json's ``gate``: the verdict, and whether it was
    enforced.
    """

    verdict: Literal["passed", "undecided", "refused"]
    reason: str
    users: int
    comparisons: list[ComparisonDoc]
    confidence: float
    resamples: int
    enforced: bool
