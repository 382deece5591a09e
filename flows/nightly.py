"""The nightly flow: ingest -> features -> scalers -> train -> evaluate -> gate -> refit -> export ->
recommend / similar -> drift -> publish -> report.

Each stage is a Prefect task (:mod:`flows.stage_tasks`, :mod:`flows.shards`) wrapping a plain function from
``tasks/``; tasks pass file paths, never data frames or models. ``latest.json`` is written by the publish
task, last. Whatever a night's outcome, :mod:`flows.outcome` records it.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows import caching, failures, incremental, outcome, report, runners, shards
from flows.lock import data_dir_lock
from flows.params import NightlyParams
from flows.stage_tasks import (
    drift_task,
    evaluate_task,
    export_task,
    features_task,
    gate_task,
    generate_task,
    ingest_task,
    publish_task,
    refit_task,
    scalers_task,
    train_task,
)
from tasks import faults, stages
from tasks.errors import TowerflowError
from tasks.ingestion import rejects
from tasks.modeling import warmstart
from tasks.modeling.config import preset
from tasks.runtime import default_threads, pin_threads
from tasks.store import resume
from tasks.store.layout import Layout, model_version
from tasks.store.storage import sha256_text


class StageError(TowerflowError, RuntimeError):
    """A stage failed; the message names the stage and the cause."""


class _Stages:
    """Runs stages in order, timing each and naming the stage in any error; resumable ones keep results in ``work``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []
        self.work: Path | None = None

    def __call__(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            faults.point(f"before:{name}")
            result, reused = caching.run_stage(fn, self.work, *args, **kwargs)
        except Exception as exc:
            raise StageError(f"stage {name} failed: {exc}{resume.hint(exc, self.work)}") from exc
        finally:
            self.timings[name] = round(time.perf_counter() - started, 3)
        if reused:
            self.cached.append(name)
        faults.point(f"after:{name}")
        return result


# shards: TOWERFLOW_DASK_ADDRESS or threads; a failed run's exception is stored by Prefect as JSON, never pickled
@flow(
    name="towerflow-nightly", log_prints=True, task_runner=runners.task_runner(), persist_result=False, result_serializer=caching.SERIALIZER
)
def nightly(params: NightlyParams = NightlyParams()) -> dict[str, Any]:  # noqa: B008
    """Run the whole nightly job once and return its summary; a refused or failed night is recorded, then raised."""
    failures.hide_expected_tracebacks()
    started = time.perf_counter()
    run_date = params.run_date or dt.date.today()
    layout = Layout(Path(params.data_dir).resolve())
    known: dict[str, Any] = {}  # what the night has measured so far, in latest.json's shape (for its history row)
    try:
        return _night(params, run_date, layout, known)
    except Exception as exc:
        outcome.failed(layout, run_date, exc, known, time.perf_counter() - started)
        raise


def _night(params: NightlyParams, run_date: dt.date, layout: Layout, known: dict[str, Any]) -> dict[str, Any]:
    logger = get_run_logger()
    started = time.perf_counter()
    threads = params.threads or default_threads()
    pin_threads(threads)
    config = preset(params.preset, max_epochs=params.max_epochs, patience=params.patience)
    run = _Stages()
    with data_dir_lock(layout.lock):
        if (params.ratings is None) != (params.movies is None):
            raise StageError("stage inputs failed: give both --ratings and --movies, or neither for the embedded data set")
        if incremental.is_incremental(params.ratings):  # several files or a drop folder: only new files, a task each
            ingested = run(
                "ingest", incremental.ingest_all, params.ratings, str(Path(params.movies or "").resolve()), str(layout.data_dir),
                run_date, params.max_reject_share,
            )  # fmt: skip
            inputs, input_hash = ingested["inputs"], ingested["input_hash"]
        else:
            if params.ratings is None:
                inputs = run("generate", generate_task, str(layout.data_dir / "embedded"))
            else:
                inputs = {"ratings": incremental.single(params.ratings), "movies": str(Path(params.movies or "").resolve())}
            input_hash = run("hash-inputs", stages.input_hash, Path(inputs["ratings"]), Path(inputs["movies"]))
            rejects_path = rejects.rejects_path(layout.data_dir, run_date, input_hash)
            ingested = run(
                "ingest", ingest_task, inputs["ratings"], inputs["movies"], str(layout.store(input_hash)),
                str(rejects_path), params.max_reject_share, str(layout.data_dir),
            )  # fmt: skip
        # The version names all the outputs depend on (data, configuration, seed, k, code): a re-run resumes its work dir.
        config_text = json.dumps(config.to_dict(), sort_keys=True)
        facts: tuple[str, ...] = (
            input_hash,
            config_text,
            str(params.seed),
            str(params.holdout_fraction),
            str(params.k),
            caching.code_version(),
        )
        facts += (f"warm:{params.warm_epochs}",) if params.warm_start else ()
        version = model_version(run_date, sha256_text(*facts))
        known["model_version"] = version
        work = layout.work(version)
        for note in resume.prepare_work(layout, work):
            logger.info(note)
        run.work = work
        logger.info("model version %s, staging in %s", version, work)
        feats = run(
            "features",
            features_task,
            ingested["ratings"],
            ingested["movies"],
            str(work / "features"),
            params.preset,
            params.holdout_fraction,
        )
        feature_dirs = {"train": feats["train"], "full": feats["full"]}
        scalers = run("scalers", scalers_task, ingested["ratings"], feature_dirs, params.holdout_fraction, str(work / "scalers"))
        warm = None  # or the published model to start from (--warm-start, tasks/modeling/warmstart.py)
        if params.warm_start:
            warm = run("warm-start", incremental.warm_source_task, str(layout.data_dir), feats["full"], config.to_dict())
        trained = run(
            "train",
            train_task,
            ingested["ratings"],
            feature_dirs,
            scalers,
            str(work / "train"),
            params.preset,
            warmstart.warm_epochs(config.max_epochs, params.warm_epochs) if warm else params.max_epochs,
            params.patience,
            params.seed,
            params.holdout_fraction,
            warm,
        )
        evaluation = None
        if params.holdout_fraction > 0:
            evaluation = run(
                "evaluate", evaluate_task, ingested["ratings"], feature_dirs["train"], scalers["train"], trained["validation_model"],
                params.holdout_fraction, params.k, config.popularity_prior, params.seed,
            )  # fmt: skip
        measured: dict[str, Any] = evaluation if evaluation is not None and "skipped" not in evaluation else {}
        if measured:
            known["metrics"] = measured["metrics"]
        prior_weight = measured["prior"]["weight"] if measured else 0.0
        known["popularity_prior"] = {
            "weight": prior_weight,
            "chosen_on": "NDCG@k of the validation model on the holdout" if measured else "nothing (no holdout to measure on)",
            "ndcg_by_weight": measured["prior"]["ndcg_by_weight"] if measured else {},
        }
        known["gate"] = run("quality-gate", gate_task, evaluation, str(layout.latest), params.gate_margin, params.k, params.gate)
        refit = run(
            "refit", refit_task, ingested["ratings"], feature_dirs, scalers, trained["validation_model"], str(work / "train"),
            params.preset, trained["best_epoch"], params.seed, params.holdout_fraction, warm,
        )  # fmt: skip
        exported = run(
            "export", export_task, refit["model"], feature_dirs["full"], scalers["full"], str(work / "model"),
            ingested["ratings"], prior_weight,
        )  # fmt: skip
        # one task per shard on the flow's task runner (threads, or Dask: flows/runners.py); parts in shard order
        recs = run(
            "recommend", shards.recommend_all, ingested["ratings"], exported["model_dir"], str(work / "recommendations"),
            params.k, version, params.chunk_size, params.shard_size, str(work),
        )  # fmt: skip
        similar = run(
            "similar", shards.similar_all, exported["model_dir"], str(work / "similar_movies"),
            params.k, params.chunk_size, params.shard_size, str(work),
        )  # fmt: skip
        run.cached += [name for name, out in (("recommend", recs), ("similar", similar)) if out["shards_reused"] == out["shards"]]
        known["drift"] = run(
            "drift", drift_task, recs["parts"], str(layout.latest), ingested["ratings"], ingested["movies"],
            known.get("metrics"), str(work / "metrics.parquet"),
        )  # fmt: skip
        extra = {
            "preset": params.preset,
            "k": params.k,
            "inputs": {"ratings": inputs["ratings"], "movies": inputs["movies"], "sha256": input_hash},
            "ingest": ingested["stats"],
            "training": {
                "val_rmse": trained["val_rmse"],
                "best_epoch": trained["best_epoch"],
                "epochs_run": trained["epochs_run"],
                "refit_epochs": refit["refit_epochs"],
                "warm_start": refit.get("warm_start", trained.get("warm_start")) if params.warm_start else None,
            },
            "config": config.to_dict(),
            "threads": threads,
            "metrics": known.get("metrics"),
            "gate": known["gate"],
            "popularity_prior": known["popularity_prior"],
            "drift": known["drift"],
            "timings": dict(run.timings),
            "reused_stages": list(run.cached),  # finished by an interrupted run of this version, not recomputed
        }
        tables: dict[str, str | list[str]] = {
            "recommendations": recs["parts"],
            "similar_movies": similar["parts"],
            "metrics": str(work / "metrics.parquet"),
        }
        latest = run("publish", publish_task, str(layout.data_dir), run_date, version, exported["model_dir"], tables, extra)
        outcome.published(layout, latest, time.perf_counter() - started)  # history row, events, history artifact
        histories = {"validate": trained.get("history", []), "refit": refit.get("history", [])}
        run("report", report.report_task, str(layout.data_dir), latest, dict(run.timings), histories, recs["score_hist"], runners.current())
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        **latest,
        "timings": dict(run.timings),
        "reused_stages": list(run.cached),
        "data_dir": str(layout.data_dir),
        "users": recs["users"],
        "movies": exported["movies"],
    }
    logger.info("published %s: %s", version, json.dumps(latest["tables"]))
    return summary
