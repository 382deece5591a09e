"""The nightly evaluate stage and the quality gate.

The validation model (trained without the most recent ratings) is scored on
those held-out ratings of users who rated before the cut (the users the batch
publishes lists for) over the full catalog, seen movies excluded, beside a
most-popular baseline computed in the same run. The gate refuses to publish a
model below the baseline or too far below the last published model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from tasks import schemas
from tasks.evaluate import Fitted, compare
from tasks.features import temporal_holdout
from tasks.stages import load_ratings, prepare
from tasks.storage import write_table

MODEL_ROW = "two-tower"
BASELINE_ROW = "most-popular"
METRIC_NAMES = ("ndcg", "precision", "recall", "map", "hit_rate", "coverage", "rmse", "users")


class QualityGateError(RuntimeError):
    """The new model is not good enough to publish."""


def run_evaluate(
    ratings_path: Path, feature_dir: Path, scalers_path: Path, validation_model: Path, holdout_fraction: float, k: int, out_path: Path
) -> dict[str, dict[str, float]]:
    """Metrics of the validation model and most-popular on the global temporal holdout; written as a table."""
    from tasks.model import load_model

    ratings = load_ratings(Path(ratings_path))
    hold = temporal_holdout(ratings["timestamp"].to_numpy(), holdout_fraction)
    if not hold.any():
        raise ValueError("cannot evaluate: holdout_fraction is 0, nothing is held out")
    fitted = Fitted(load_model(Path(validation_model)), prepare(Path(feature_dir), Path(scalers_path)), best_epoch=0, seconds=0.0)
    catalog = pd.DataFrame({"movie_id": fitted.prepared.feats.movie_ids})
    train, test = ratings[~hold], ratings[hold]
    # The batch publishes lists for users with history; users first seen in the holdout have only prior
    # features, so they are measured by `towerflow evaluate`'s per-user protocol, not by the gate.
    test = test[test["user_id"].isin(train["user_id"].unique())]
    if test.empty:
        raise ValueError("cannot evaluate: no held-out rating belongs to a user with earlier ratings")
    table = compare(train, test, catalog, {MODEL_ROW: fitted}, k=k, with_als=False)
    metrics = {row["method"]: {m: float(row[m]) for m in METRIC_NAMES if m in row and pd.notna(row[m])} for _, row in table.iterrows()}
    long = [(method, name, value) for method, values in metrics.items() for name, value in values.items()]
    write_table(
        Path(out_path),
        pa.table(
            {
                "model": pa.array([x[0] for x in long], pa.string()),
                "metric": pa.array([x[1] for x in long], pa.string()),
                "value": pa.array([x[2] for x in long], pa.float64()),
            }
        ),
        schemas.METRICS,
        "metrics",
    )
    return metrics


def check_gate(metrics: dict[str, dict[str, float]], previous: dict[str, Any] | None, margin: float) -> str:
    """Return a one-line verdict, or raise :class:`QualityGateError` saying why the model is refused."""
    new = metrics[MODEL_ROW]["ndcg"]
    base = metrics[BASELINE_ROW]["ndcg"]
    if new < base:
        raise QualityGateError(
            f"quality gate: NDCG@k {new:.4f} is below the most-popular baseline {base:.4f}; "
            "not published (latest.json still points to the previous run); try more epochs or another preset"
        )
    prev = ((previous or {}).get("metrics") or {}).get(MODEL_ROW, {}).get("ndcg")
    if prev is not None and new < prev - margin:
        raise QualityGateError(
            f"quality gate: NDCG@k {new:.4f} is more than {margin:g} below the published model "
            f"{previous.get('model_version') if previous else '?'} ({prev:.4f}); not published"
        )
    vs_prev = f", published model {prev:.4f}" if prev is not None else ""
    return f"quality gate passed: NDCG@k {new:.4f} vs most-popular {base:.4f}{vs_prev}"
