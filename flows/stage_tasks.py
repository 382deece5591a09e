"""The nightly flow's stages as Prefect tasks: each wraps one plain function of ``tasks/`` and
passes paths.

Resumable stages (:func:`flows.caching.stage_task`) are reused by a re-run after a crash when their
inputs, code and outputs are unchanged; the stages that read or write files retry transient I/O
errors (:data:`flows.runners.IO_RETRY`). Training is never retried. The flow (:mod:`flows.nightly`)
only wires them.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import caching, report
from flows.runners import IO_RETRY
from tasks.errors import ConfigError
from tasks.evaluation import drift, quality
from tasks.evaluation.selection import run_train_choosing
from tasks.ingestion import rejects
from tasks.ingestion.ingest import run_ingest
from tasks.modeling.fitting import run_refit
from tasks.preparation.phases import run_features, run_scalers
from tasks.presets import preset
from tasks.serving import publish
from tasks.sources.generate import generate
from tasks.stage_results import (
    Evaluation,
    Exported,
    FeatureDirs,
    GateResult,
    Ingested,
    Inputs,
    Phases,
    Refit,
    Skipped,
    Trained,
)
from tasks.store import mirror
from tasks.store.latest import Latest, comparable_latest
from tasks.store.layout import Layout
from tasks.store.remote import ObjectStore, is_uri


@task(name="generate-embedded-data", cache_policy=NO_CACHE)
def generate_task(out_dir: str) -> Inputs:
    data = generate(Path(out_dir))
    get_run_logger().info(
        "embedded data set: %d ratings, %d users, %d movies",
        data.n_ratings,
        data.n_users,
        data.n_movies,
    )
    return Inputs(ratings=str(data.ratings_csv), movies=str(data.movies_csv))


@task(name="ingest", cache_policy=NO_CACHE, **IO_RETRY)
def ingest_task(
    ratings: str,
    movies: str,
    store_dir: str,
    rejects_path: str,
    max_reject_share: float,
    data_dir: str,
) -> Ingested:
    from prefect.artifacts import create_table_artifact

    def report(stats: dict[str, Any], outcome: str) -> None:
        create_table_artifact(
            rejects.report_rows(stats),
            key="towerflow-ingest",
            description=f"Ingest of {ratings}: {outcome}",
        )

    try:
        out = run_ingest(
            Path(ratings), Path(movies), Path(store_dir), Path(rejects_path), max_reject_share
        )
    except rejects.RejectThresholdError as exc:
        report(exc.stats, f"FAILED, too many rows rejected; rejected rows in {rejects_path}")
        raise
    # relative, like the tables in latest.json
    out["stats"]["rejects_path"] = str(Path(rejects_path).relative_to(data_dir))
    report(out["stats"], f"{out['stats']['rows_rejected']:,} rows rejected, see {rejects_path}")
    get_run_logger().info("ingested %s", json.dumps(out["stats"]))
    return out


@caching.stage_task("features", outputs=("out_dir",), **IO_RETRY)
def features_task(
    ratings: str,
    movies: str,
    out_dir: str,
    preset_name: str,
    holdout: float,
    factors: int | None = None,
) -> FeatureDirs:
    config = preset(preset_name, factors=factors)
    return run_features(Path(ratings), Path(movies), Path(out_dir), config, holdout)


@caching.stage_task("scalers", outputs=("out_dir",), **IO_RETRY)
def scalers_task(ratings: str, feature_dirs: Phases, holdout: float, out_dir: str) -> Phases:
    return run_scalers(Path(ratings), feature_dirs, holdout, Path(out_dir))


@caching.stage_task("train", outputs=("out_dir",))
def train_task(
    ratings: str,
    feature_dirs: Phases,
    scaler_paths: Phases,
    out_dir: str,
    preset_name: str,
    max_epochs: int | None,
    patience: int | None,
    seed: int,
    holdout: float,
    warm: dict[str, str] | None = None,
    factors: int | None = None,
    k: int = 10,
    loss_choice: bool = True,
) -> Trained:
    overrides = {"max_epochs": max_epochs, "patience": patience, "factors": factors}
    config = preset(preset_name, loss_choice=loss_choice, **overrides)
    # epoch logs and the towerflow-train-progress artifact, over every candidate MSE weight
    on_epoch = report.EpochProgress("train", sum(c.max_epochs for c in config.candidates()))
    return on_epoch.finish(
        run_train_choosing(
            Path(ratings),
            feature_dirs,
            scaler_paths,
            Path(out_dir),
            config,
            seed,
            holdout,
            k,
            on_epoch,
            warm,
        )
    )


@caching.stage_task("refit", outputs=("out_dir",))
def refit_task(
    ratings: str,
    feature_dirs: Phases,
    scaler_paths: Phases,
    validation_model: str,
    out_dir: str,
    preset_name: str,
    epochs: int,
    seed: int,
    holdout: float,
    warm: dict[str, str] | None = None,
    refit: str | None = None,
    factors: int | None = None,
    mse_weight: float | None = None,
) -> Refit:
    # the MSE weight the train stage's holdout chose (tasks/evaluation/selection.py)
    config = preset(preset_name, refit=refit, factors=factors, mse_weight=mse_weight)
    # epoch logs and the towerflow-refit-progress artifact
    on_epoch = report.EpochProgress("refit", epochs)
    return on_epoch.finish(
        run_refit(
            Path(ratings),
            feature_dirs,
            scaler_paths,
            Path(validation_model),
            Path(out_dir),
            config,
            seed,
            epochs,
            holdout,
            on_epoch,
            warm,
        )
    )


@caching.stage_task("evaluate", **IO_RETRY)
def evaluate_task(
    ratings: str,
    train_dir: str,
    scalers_path: str,
    validation_model: str,
    holdout: float,
    k: int,
    popularity_prior: bool,
    seed: int,
) -> Evaluation | Skipped:
    from prefect.artifacts import create_table_artifact

    evaluation = quality.run_evaluate(
        Path(ratings),
        Path(train_dir),
        Path(scalers_path),
        Path(validation_model),
        holdout,
        k,
        popularity_prior,
        seed,
    )
    if "skipped" in evaluation:
        get_run_logger().warning("holdout not measured: %s", evaluation["skipped"])
        return evaluation
    rows = [
        {"method": method, **{name: round(value, 4) for name, value in values.items()}}
        for method, values in evaluation["metrics"].items()
    ]
    create_table_artifact(
        rows,
        key="towerflow-metrics",
        description=(
            f"Holdout metrics at k={k}: each user's most recent {holdout:.0%} of ratings, "
            f"{evaluation['users']:,} users; ndcg_low/ndcg_high: 95% bootstrap interval; "
            f"popularity prior weight {evaluation['prior']['weight']:g}"
        ),
    )
    get_run_logger().info("holdout metrics (%d users): %s", evaluation["users"], json.dumps(rows))
    return evaluation


@task(name="quality-gate", cache_policy=NO_CACHE)
def gate_task(
    evaluation: Evaluation | Skipped | None, latest_path: str, margin: float, k: int, enforce: bool
) -> GateResult:
    """The gate's verdict; a refused model stops the run (unless ``enforce`` is off, as with
    --no-gate).
    """
    previous = comparable_latest(Path(latest_path).parent.parent)
    verdict = quality.gate_verdict(evaluation, previous, margin, k)
    get_run_logger().info("quality gate %s", verdict.reason)
    out = verdict.document(enforced=enforce)
    if verdict.verdict == "refused" and enforce:
        raise quality.QualityGateError(
            f"quality gate {verdict.reason} (latest.json still points to the previous run)", out
        )
    return out


@caching.stage_task("drift", outputs=("out_path",), **IO_RETRY)
def drift_task(
    parts: list[str],
    latest_path: str,
    ratings: str,
    movies: str,
    metrics: dict[str, Any] | None,
    out_path: str,
) -> dict[str, Any]:
    """Tonight's lists against the published run's; the metrics table (holdout metrics and
    drift).
    """
    out = drift.run_drift(
        parts, Path(latest_path), Path(ratings), Path(movies), metrics, Path(out_path)
    )
    versus = out.get("versus_published")
    get_run_logger().info(
        "drift: %s", json.dumps(versus) if versus else "nothing published to compare with"
    )
    return out


@caching.stage_task("export", outputs=("model_dir",), **IO_RETRY)
def export_task(
    model_path: str,
    full_dir: str,
    scalers_path: str,
    model_dir: str,
    ratings: str,
    prior_weight: float,
) -> Exported:
    return publish.run_export(
        Path(model_path),
        Path(full_dir),
        Path(scalers_path),
        Path(model_dir),
        Path(ratings),
        prior_weight,
    )


@task(name="publish", cache_policy=NO_CACHE, **IO_RETRY)
def publish_task(
    data_dir: str,
    run_date: dt.date,
    version: str,
    model_dir: str,
    tables: dict[str, str | list[str]],
    extra: dict[str, Any],
    store_uri: str | None = None,
    expect_etag: str | None = None,
) -> Latest:
    layout = Layout(Path(data_dir))
    store = ObjectStore(store_uri) if store_uri else None
    latest = publish.run_publish(
        layout, run_date, version, Path(model_dir), tables, extra, store, expect_etag
    )
    if store is not None:
        _log_traffic("publish", store)
    return latest


def _log_traffic(stage: str, store: ObjectStore) -> None:
    """One line per stage that used the store: requests and bytes (benchmarks/objectstore.py adds
    them up).
    """
    get_run_logger().info("store traffic of %s: %s", stage, json.dumps(mirror.describe(store)))


@task(name="pull-published", cache_policy=NO_CACHE, **IO_RETRY)
def pull_task(store_uri: str, data_dir: str) -> str | None:
    """The store's published run into the scratch (:func:`tasks.store.mirror.pull`); its
    latest.json's ETag.
    """
    store = ObjectStore(store_uri)
    store.check()
    etag = mirror.pull(store, Layout(Path(data_dir)))
    _log_traffic("pull", store)
    get_run_logger().info(
        "store %s: %s", store_uri, f"latest.json {etag}" if etag else "nothing published yet"
    )
    return etag


@task(name="fetch-inputs", cache_policy=NO_CACHE, **IO_RETRY)
def fetch_inputs_task(
    ratings: str | list[str] | None, movies: str, data_dir: str
) -> dict[str, str]:
    """Input files given as ``s3://`` URIs, copied into the scratch (local paths pass through)."""
    if isinstance(ratings, list):
        if len(ratings) != 1:
            raise ConfigError(
                f"--ratings {ratings}: several files or a drop folder on an object store are "
                "not supported yet"
            )
        ratings = ratings[0]
    dest = Path(data_dir) / "inputs"
    out = {}
    for name, value in (("ratings", str(ratings)), ("movies", movies)):
        out[name] = str(mirror.fetch_input(value, dest)) if is_uri(value) else value
    return out


@task(name="push-extras", cache_policy=NO_CACHE, **IO_RETRY)
def push_task(store_uri: str, data_dir: str, exchanged: str | None = None) -> int:
    """History rows, reports and rejects from the scratch to the store
    (:func:`tasks.store.mirror.push_extras`); what shards on workers without the flow's disk
    exchanged under ``exchanged`` (``work/<version>``, also by an interrupted attempt of this
    version) is removed."""
    layout = Layout(Path(data_dir))
    store = ObjectStore(store_uri)
    sent = mirror.push_extras(store, layout)
    if exchanged:
        store.delete(list(store.keys(exchanged)))
    _log_traffic("push", store)
    return sent
