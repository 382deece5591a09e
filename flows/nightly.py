"""The nightly flow: ingest -> features -> scalers -> train -> evaluate -> gate -> refit -> export
-> recommend / similar -> drift -> publish -> report.

Each stage is a Prefect task (:mod:`flows.stage_tasks`, :mod:`flows.shards`) wrapping a plain
function from ``tasks/``; tasks pass file paths, never data frames or models. ``latest.json`` is
written by the publish task, last. Whatever a night's outcome, :mod:`flows.outcome` records it.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import flow, get_run_logger

from flows import caching, failures, incremental, outcome, report, runners, shards
from flows.lock import data_dir_lock
from flows.params import NightlyParams
from flows.stage_tasks import (
    drift_task,
    evaluate_task,
    export_task,
    features_task,
    fetch_inputs_task,
    gate_task,
    generate_task,
    ingest_task,
    publish_task,
    pull_task,
    push_task,
    refit_task,
    scalers_task,
    train_task,
)
from tasks import faults
from tasks.errors import TowerflowError
from tasks.ingestion import rejects
from tasks.modeling import warmstart
from tasks.modeling.config import ModelConfig, preset
from tasks.runtime import default_threads, pin_threads
from tasks.serving.rules import Rules
from tasks.stage_results import Evaluation, Ingested, Inputs, Phases, Refit, Skipped, Trained
from tasks.store import resume
from tasks.store import tables as stored
from tasks.store.layout import Layout, model_version
from tasks.store.mirror import Target
from tasks.store.remote import is_uri
from tasks.store.storage import sha256_text

P = ParamSpec("P")
R = TypeVar("R")


class StageError(TowerflowError, RuntimeError):
    """A stage failed; the message names the stage and the cause."""


class _Stages:
    """Runs stages in order, timing each and naming the stage in any error; resumable ones keep
    results in ``work``.

    Around each call it only times, offers the crash tests' fault points and names the stage in an
    error; arguments and result are the task's own (keyword arguments, a typed result from
    :mod:`tasks.stage_results`).
    """

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []
        self.work: Path | None = None

    def __call__(self, name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)`` as stage ``name``: its signature and result type pass through for
        mypy.
        """
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


def _ingest(
    run: _Stages, params: NightlyParams, layout: Layout, run_date: dt.date
) -> tuple[Ingested, Inputs, str]:
    """The ingest stages: a drop folder's new files (incremental), one pair of files, or the
    embedded data set.

    Returns what was ingested, the input files and the hash the night's version rests on.
    """
    if (params.ratings is None) != (params.movies is None):
        raise StageError(
            "stage inputs failed: give both --ratings and --movies, or neither for the "
            "embedded data set"
        )
    if is_uri(params.movies) or any(is_uri(r) for r in _listed(params.ratings)):
        local = run(
            "fetch-inputs",
            fetch_inputs_task,
            ratings=params.ratings,
            movies=str(params.movies),
            data_dir=str(layout.data_dir),
        )
        ingested, _, input_hash = _ingest(run, params.model_copy(update=local), layout, run_date)
        return ingested, Inputs(ratings=str(params.ratings), movies=str(params.movies)), input_hash
    movies = str(Path(params.movies or "").resolve())
    # several files or a drop folder: only new files, a task each
    if incremental.is_incremental(params.ratings):
        ledger = run(
            "ingest", incremental.ingest_all, ratings=params.ratings, movies=movies,
            data_dir=str(layout.data_dir), run_date=run_date,
            max_reject_share=params.max_reject_share,
        )  # fmt: skip
        return ledger, ledger["inputs"], ledger["input_hash"]
    if params.ratings is None:
        inputs = run("generate", generate_task, out_dir=str(layout.data_dir / "embedded"))
    else:
        inputs = Inputs(ratings=incremental.single(params.ratings), movies=movies)
    ratings = str(inputs["ratings"])
    input_hash = run(
        "hash-inputs",
        stored.input_hash,
        ratings_src=Path(ratings),
        movies_src=Path(inputs["movies"]),
    )
    ingested = run(
        "ingest", ingest_task, ratings=ratings, movies=inputs["movies"],
        store_dir=str(layout.store(input_hash)),
        rejects_path=str(rejects.rejects_path(layout.data_dir, run_date, input_hash)),
        max_reject_share=params.max_reject_share, data_dir=str(layout.data_dir),
    )  # fmt: skip
    return ingested, inputs, input_hash


def _listed(ratings: str | list[str] | None) -> list[str]:
    return [] if ratings is None else [ratings] if isinstance(ratings, str) else list(ratings)


def _version(
    params: NightlyParams,
    config: ModelConfig,
    input_hash: str,
    rules: dict[str, Any] | None,
    run_date: dt.date,
) -> str:
    """The model version: a hash of everything the outputs depend on (data, configuration, seed, k,
    rules, code), so a re-run of the same night resumes its work directory."""
    facts: tuple[str, ...] = (
        input_hash,
        json.dumps(config.to_dict(), sort_keys=True),
        str(params.seed),
    )
    facts += (str(params.holdout_fraction), str(params.k), caching.code_version())
    facts += (f"warm:{params.warm_epochs}",) if params.warm_start else ()
    facts += (json.dumps(rules, sort_keys=True),) if rules else ()
    return model_version(run_date, sha256_text(*facts))


def _prior(measured: Evaluation | None) -> dict[str, Any]:
    """latest.json's ``popularity_prior``: the weight the evaluate stage chose, or 0 with nothing
    measured.
    """
    if measured is None:
        return {
            "weight": 0.0,
            "chosen_on": "nothing (no holdout to measure on)",
            "ndcg_by_weight": {},
        }
    prior = measured["prior"]
    chosen = "NDCG@k of the validation model on the holdout"
    return {
        "weight": prior["weight"],
        "chosen_on": chosen,
        "ndcg_by_weight": prior["ndcg_by_weight"],
    }


def _published_facts(
    params: NightlyParams,
    config: ModelConfig,
    rules: Rules,
    inputs: Inputs,
    input_hash: str,
    ingested: Ingested,
    trained: Trained,
    refit: Refit,
    known: dict[str, Any],
    run: _Stages,
    threads: int,
) -> dict[str, Any]:
    """What latest.json holds besides the tables and model files
    (:class:`tasks.store.latest.Latest`).
    """
    warm_start = refit.get("warm_start", trained.get("warm_start")) if params.warm_start else None
    training = {
        "val_rmse": trained["val_rmse"],
        "best_epoch": trained["best_epoch"],
        "epochs_run": trained["epochs_run"],
    }
    return {
        "preset": params.preset,
        "k": params.k,
        "inputs": {"ratings": inputs["ratings"], "movies": inputs["movies"], "sha256": input_hash},
        "ingest": ingested["stats"],
        "training": {**training, "refit_epochs": refit["refit_epochs"], "warm_start": warm_start},
        "config": config.to_dict(),
        "rules": rules.document(),
        "threads": threads,
        "metrics": known.get("metrics"),
        "gate": known["gate"],
        "popularity_prior": known["popularity_prior"],
        "drift": known["drift"],
        "timings": dict(run.timings),
        # finished by an interrupted run of this version, not recomputed
        "reused_stages": list(run.cached),
    }


# shards: TOWERFLOW_DASK_ADDRESS or threads; a failed run's exception is stored by Prefect as JSON,
# never pickled
@flow(
    name="towerflow-nightly",
    log_prints=True,
    task_runner=runners.task_runner(),
    persist_result=False,
    result_serializer=caching.SERIALIZER,
)
def nightly(params: NightlyParams = NightlyParams()) -> dict[str, Any]:  # noqa: B008
    """Run the whole nightly job once and return its summary; a refused or failed night is recorded,
    then raised.
    """
    failures.hide_expected_tracebacks()
    started = time.perf_counter()
    run_date = params.run_date or dt.date.today()
    # a local directory, or s3:// and its local scratch
    target = Target.of(params.data_dir, params.scratch_dir)
    # what the night has measured so far, in latest.json's shape (for its history row)
    known: dict[str, Any] = {}
    try:
        return _night(params, run_date, target, known)
    except Exception as exc:
        outcome.failed(target.layout, run_date, exc, known, time.perf_counter() - started)
        if target.uri is not None:
            outcome.push_quietly(str(target.uri), target.layout)
        raise


def _night(
    params: NightlyParams, run_date: dt.date, target: Target, known: dict[str, Any]
) -> dict[str, Any]:
    logger = get_run_logger()
    layout = target.layout
    store = str(target.uri) if target.uri else None
    started = time.perf_counter()
    threads = params.threads or default_threads()
    pin_threads(threads)
    overrides = {"max_epochs": params.max_epochs, "patience": params.patience}
    config = preset(params.preset, **overrides, refit=params.refit, factors=params.factors)
    # business rules: which movies may be recommended (tasks/serving/rules.py)
    rules = params.rules()
    rules_doc = None if rules.empty else rules.document()
    run = _Stages()
    with data_dir_lock(layout.lock):
        etag = (
            run("pull", pull_task, store_uri=store, data_dir=str(layout.data_dir))
            if store
            else None
        )
        ingested, inputs, input_hash = _ingest(run, params, layout, run_date)
        version = known["model_version"] = _version(params, config, input_hash, rules_doc, run_date)
        work = layout.work(version)
        for note in resume.prepare_work(layout, work):
            logger.info(note)
        run.work = work
        logger.info("model version %s, staging in %s", version, work)
        ratings = ingested["ratings"]
        feats = run(
            "features", features_task, ratings=ratings, movies=ingested["movies"],
            out_dir=str(work / "features"), preset_name=params.preset,
            holdout=params.holdout_fraction, factors=params.factors,
        )  # fmt: skip
        feature_dirs = Phases(train=feats["train"], full=feats["full"])
        scalers = run(
            "scalers", scalers_task, ratings=ratings, feature_dirs=feature_dirs,
            holdout=params.holdout_fraction, out_dir=str(work / "scalers"),
        )  # fmt: skip
        # or the published model to start from (--warm-start, tasks/modeling/warmstart.py)
        warm = None
        if params.warm_start:
            warm = run(
                "warm-start", incremental.warm_source_task, data_dir=str(layout.data_dir),
                feature_dir=feats["full"], config=config.to_dict(),
            )  # fmt: skip
        trained = run(
            "train", train_task, ratings=ratings, feature_dirs=feature_dirs, scaler_paths=scalers,
            out_dir=str(work / "train"), preset_name=params.preset,
            max_epochs=(
                warmstart.warm_epochs(config.max_epochs, params.warm_epochs) if warm
                else params.max_epochs
            ),
            patience=params.patience, seed=params.seed, holdout=params.holdout_fraction, warm=warm,
            factors=params.factors,
        )  # fmt: skip
        evaluation: Evaluation | Skipped | None = None
        if params.holdout_fraction > 0:
            evaluation = run(
                "evaluate", evaluate_task, ratings=ratings, train_dir=feature_dirs["train"],
                scalers_path=scalers["train"], validation_model=trained["validation_model"],
                holdout=params.holdout_fraction, k=params.k,
                popularity_prior=config.popularity_prior, seed=params.seed,
            )  # fmt: skip
        measured = evaluation if evaluation is not None and "skipped" not in evaluation else None
        if measured is not None:
            known["metrics"] = measured["metrics"]
        known["popularity_prior"] = _prior(measured)
        prior_weight = float(known["popularity_prior"]["weight"])
        known["gate"] = run(
            "quality-gate", gate_task, evaluation=evaluation, latest_path=str(layout.latest),
            margin=params.gate_margin, k=params.k, enforce=params.gate,
        )  # fmt: skip
        refit = run(
            "refit", refit_task, ratings=ratings, feature_dirs=feature_dirs, scaler_paths=scalers,
            validation_model=trained["validation_model"], out_dir=str(work / "train"),
            preset_name=params.preset, epochs=trained["best_epoch"], seed=params.seed,
            holdout=params.holdout_fraction, warm=warm, refit=params.refit, factors=params.factors,
        )  # fmt: skip
        exported = run(
            "export", export_task, model_path=refit["model"], full_dir=feature_dirs["full"],
            scalers_path=refit["scalers"], model_dir=str(work / "model"), ratings=ratings,
            prior_weight=prior_weight,
        )  # fmt: skip
        # one task per shard on the flow's task runner (threads, or Dask: flows/runners.py); parts
        # in shard order; on Dask with a store, the shards' inputs and parts go through the store
        # (tasks/store/exchange.py)
        exchange = (store, str(layout.data_dir)) if store and runners.on_dask() else None
        recs = run(
            "recommend", shards.recommend_all, ratings=ratings, model_dir=exported["model_dir"],
            out_dir=str(work / "recommendations"), k=params.k, version=version,
            chunk_size=params.chunk_size, shard_size=params.shard_size, work=str(work),
            rules=rules_doc, movies=ingested["movies"], exchange=exchange,
        )  # fmt: skip
        similar = run(
            "similar", shards.similar_all, model_dir=exported["model_dir"],
            out_dir=str(work / "similar_movies"), k=params.k, chunk_size=params.chunk_size,
            shard_size=params.shard_size, work=str(work), rules=rules_doc,
            movies=ingested["movies"], exchange=exchange,
        )  # fmt: skip
        run.cached += [
            name
            for name, out in (("recommend", recs), ("similar", similar))
            if out["shards_reused"] == out["shards"]
        ]
        known["drift"] = run(
            "drift", drift_task, parts=recs["parts"], latest_path=str(layout.latest),
            ratings=ratings, movies=ingested["movies"], metrics=known.get("metrics"),
            out_path=str(work / "metrics.parquet"),
        )  # fmt: skip
        extra = _published_facts(
            params, config, rules, inputs, input_hash, ingested, trained, refit, known, run, threads
        )
        tables: dict[str, str | list[str]] = {
            "recommendations": recs["parts"],
            "similar_movies": similar["parts"],
            "metrics": str(work / "metrics.parquet"),
        }
        latest = run(
            "publish", publish_task, data_dir=str(layout.data_dir), run_date=run_date,
            version=version, model_dir=exported["model_dir"], tables=tables, extra=extra,
            store_uri=store, expect_etag=etag,
        )  # fmt: skip
        # history row, events, artifact
        outcome.published(layout, latest.document(), time.perf_counter() - started)
        histories = {"validate": trained.get("history", []), "refit": refit.get("history", [])}
        run(
            "report", report.report_task, data_dir=str(layout.data_dir), latest=latest.document(),
            timings=dict(run.timings), histories=histories, score_hist=recs["score_hist"],
            runner=runners.current(),
        )  # fmt: skip
        if store:
            run(
                "push",
                push_task,
                store_uri=store,
                data_dir=str(layout.data_dir),
                exchanged=f"work/{version}",
            )
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        **latest.document(),
        "timings": dict(run.timings),
        "reused_stages": list(run.cached),
        "data_dir": target.name,
        "users": recs["users"],
        "movies": exported["movies"],
    }
    logger.info("published %s: %s", version, json.dumps(latest.document()["tables"]))
    return summary
