"""The nightly evaluate stage and the quality gate's inputs.

The validation model (trained without each user's most recent ratings) is scored on those held-out
ratings over the full catalog, seen movies excluded, beside most-popular computed in the same run.
The stage also chooses the popularity prior's weight (:mod:`tasks.serving.popularity`): the model's
row is cross-fitted (each user scored with the weight chosen on the other half of the users), so
choosing on the holdout does not flatter the figure the gate decides on. Every NDCG@k carries its
bootstrap interval and the number of users behind it; :mod:`tasks.evaluation.gate` turns them into a
verdict.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.errors import TowerflowError
from tasks.evaluation.baselines import popularity_lists
from tasks.evaluation.evaluate import (
    Fitted,
    ServedQueries,
    method_row,
    model_rmse,
    served_lists,
)
from tasks.evaluation.gate import Interval, Verdict, decide, paired_difference
from tasks.evaluation.metrics import per_user_metrics, relevant_sets
from tasks.preparation.features import per_user_holdout
from tasks.preparation.phases import prepare
from tasks.serving.export import embed_all
from tasks.serving.popularity import WEIGHTS, Selection, select_weight, sweep_users
from tasks.stage_results import Evaluation, GateResult, PriorChoice, Skipped
from tasks.store import schemas
from tasks.store.latest import Latest
from tasks.store.storage import write_table
from tasks.store.tables import load_ratings

# Above this many holdout users the figures rest on a seeded sample of this many: the cost of the
# stage stays bounded at any scale (157k users took most of a 25M night's evaluate), and 20,000
# users still put NDCG@10 within about +-0.003 (95%); every figure says how many users it rests on.
JUDGED_USERS = 20_000
MODEL_ROW = "two-tower"
NO_PRIOR_ROW = "two-tower without popularity prior"
BASELINE_ROW = "most-popular"


class QualityGateError(TowerflowError, RuntimeError):
    """The new model is not good enough to publish; ``verdict`` is the gate's verdict (latest.json's
    ``gate`` shape)."""

    rerun_helps = False

    def __init__(self, message: str, verdict: GateResult | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


def run_evaluate(
    ratings_path: Path,
    feature_dir: Path,
    scalers_path: Path,
    validation_model: Path,
    holdout_fraction: float,
    k: int,
    popularity_prior: bool = True,
    seed: int = 0,
) -> Evaluation | Skipped:
    """Holdout metrics of the validation model and most-popular, the prior weight, the paired
    interval.

    Returns ``{"metrics": {method: {metric: value}}, "vs_baseline": interval of NDCG@k model -
    most-popular, "users": users behind the ranking figures, "prior": {"weight",
    "ndcg_by_weight"}}``, or ``{"skipped": reason}`` when the holdout has nothing to measure (the
    gate is then undecided and the night publishes).
    """
    from tasks.modeling.model import load_model

    ratings = load_ratings(Path(ratings_path))
    hold = per_user_holdout(ratings, holdout_fraction)
    if not hold.any():
        return Skipped(
            skipped=(
                "the holdout is empty: no user has two ratings to hold one out of "
                f"(holdout_fraction {holdout_fraction})"
            )
        )
    fitted = Fitted(
        load_model(Path(validation_model)),
        prepare(Path(feature_dir), Path(scalers_path)),
        best_epoch=0,
        seconds=0.0,
    )
    movie_ids = fitted.prepared.feats.movie_ids
    train, test = ratings[~hold], ratings[hold]
    relevant = relevant_sets(test)
    if not relevant:
        return Skipped(
            skipped=(
                f"no held-out rating of 4 or more among {len(test):,} held-out ratings: "
                "nothing to rank against"
            )
        )
    weights = WEIGHTS if popularity_prior else (0.0,)
    users, model_lists, no_prior, choice = _choose_prior(fitted, train, relevant, k, weights, seed)
    # all users, or those the weight was chosen on
    without_prior = {u: relevant[u] for u in no_prior}
    relevant = {int(u): relevant[int(u)] for u in users}  # the users every other figure rests on
    popular = popularity_lists(train, users, movie_ids, k)
    rows = [
        method_row(name, lists, relevant, k, len(movie_ids), seed)
        for name, lists in ((BASELINE_ROW, popular), (MODEL_ROW, model_lists))
    ]
    if popularity_prior:
        rows.append(method_row(NO_PRIOR_ROW, no_prior, without_prior, k, len(movie_ids), seed))
    model_rmse_stars, n_ratings = model_rmse(fitted, test)
    metrics = {
        row.pop("method"): {name: float(value) for name, value in row.items()} for row in rows
    }
    for name in (MODEL_ROW, NO_PRIOR_ROW):
        if name in metrics:
            metrics[name] |= {"rmse": model_rmse_stars, "rmse_ratings": float(n_ratings)}
    metrics[MODEL_ROW]["prior_weight"] = choice.weight
    _, pop_values = per_user_metrics(popular, relevant, k)
    _, model_values = per_user_metrics(model_lists, relevant, k)
    vs_baseline = paired_difference(model_values["ndcg"], pop_values["ndcg"], seed)
    return Evaluation(
        metrics=metrics,
        vs_baseline=asdict(vs_baseline),
        users=len(users),
        prior=PriorChoice(
            weight=choice.weight,
            ndcg_by_weight={f"{w:g}": round(v, 5) for w, v in choice.mean_by_weight.items()},
            chosen_on_users=len(choice.cross_index),
        ),
    )


Lists = dict[int, list[int]]


def _choose_prior(
    fitted: Fitted,
    train: pd.DataFrame,
    relevant: dict[int, set[int]],
    k: int,
    weights: tuple[float, ...],
    seed: int,
) -> tuple[np.ndarray, Lists, Lists, Selection]:
    """The prior's weight, the users the figures rest on with the model's lists, and the lists
    without the prior.

    Up to ``2 * SWEEP_USERS`` users, every weight is scored on every user and the model's lists are
    cross-fitted (:func:`tasks.serving.popularity.select_weight`). Above, the weight is chosen on a
    seeded sample of ``SWEEP_USERS`` users and the figures rest on the other users (a seeded sample
    of :data:`JUDGED_USERS` of them when there are more): the cost stays bounded and the gate still
    judges users the weight was not chosen on. The lists without the prior (a diagnostic row) are
    the sweep's weight 0, on the users the sweep ran on.
    """
    p = fitted.prepared
    embeddings = embed_all(fitted.model, p.user_input, p.movie_x)
    users = np.array(sorted(relevant), dtype=np.int64)
    chooser = sweep_users(users, seed) if len(weights) > 1 else users
    # the seen movies of the sweep's users, found once (not once per weight in all of train);
    # popularity stays global
    seen = train[train["user_id"].isin(chooser)] if len(chooser) < len(users) else train
    queries = ServedQueries.of(fitted, embeddings, train, chooser, seen=seen)
    sweep = [queries.lists(k, w) for w in weights]
    asked = {int(u): relevant[int(u)] for u in chooser}
    choice = select_weight(
        np.column_stack([per_user_metrics(lists, asked, k)[1]["ndcg"] for lists in sweep]),
        weights,
        seed,
    )
    if len(chooser) == len(users):  # every user chose and is judged: cross-fitted
        # each user's lists under the weight chosen on the other half
        picked = [sweep[i] for i in choice.cross_index]
        return users, {int(u): picked[j][int(u)] for j, u in enumerate(users)}, sweep[0], choice
    judged = np.setdiff1d(users, chooser)
    if len(judged) > JUDGED_USERS:
        judged = np.sort(
            np.random.default_rng(seed + 1).choice(judged, JUDGED_USERS, replace=False)
        )
    return (
        judged,
        served_lists(fitted, embeddings, train, judged, k, choice.weight),
        sweep[0],
        choice,
    )


def write_metrics(path: Path, metrics: dict[str, dict[str, float]]) -> Path:
    """The published ``metrics`` table: one row per (model or measure, metric, value)."""
    long = [
        (method, name, value)
        for method, values in metrics.items()
        for name, value in values.items()
    ]
    table = pa.table(
        {
            "model": pa.array([x[0] for x in long], pa.string()),
            "metric": pa.array([x[1] for x in long], pa.string()),
            "value": pa.array([x[2] for x in long], pa.float64()),
        }
    )
    return write_table(path, table, schemas.METRICS, "metrics")


def gate_verdict(
    evaluation: Evaluation | Skipped | None, previous: Latest | None, margin: float, k: int
) -> Verdict:
    """The gate's verdict on an evaluate stage's result (None: no holdout, nothing measured)."""
    if evaluation is None:
        return Verdict(
            "undecided",
            "undecided: no holdout (holdout_fraction 0), nothing measured; "
            "published without a verdict",
            0,
        )
    if "skipped" in evaluation:
        return Verdict(
            "undecided", f"undecided: {evaluation['skipped']}; published without a verdict", 0
        )
    model = evaluation["metrics"][MODEL_ROW]
    own = Interval(model["ndcg"], model["ndcg_low"], model["ndcg_high"])
    baseline = evaluation["metrics"][BASELINE_ROW]["ndcg"]
    return decide(
        own,
        baseline,
        Interval(**evaluation["vs_baseline"]),
        int(evaluation["users"]),
        previous,
        margin,
        k,
    )
