"""The nightly flow: ingest -> features -> scalers -> train -> evaluate -> gate -> refit -> export
-> recommend / similar -> drift -> publish -> report.

Each stage is a Prefect task (:mod:`flows.stage_tasks`, :mod:`flows.shard_tasks`) wrapping a plain
function from ``tasks/``; tasks pass file paths, never data frames or models. ``latest.json`` is
written by the publish task, last. Whatever a night's outcome, :mod:`flows.outcome` records it.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import flow, get_run_logger

from flows import caching, failures, incremental_tasks, outcome, report, runners, shard_tasks
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
from tasks.presets import ModelConfig, preset
from tasks.runtime import default_threads, pin_threads
from tasks.serving.rules import Rules
from tasks.stage_results import (
    Evaluation,
    Exported,
    Ingested,
    Inputs,
    Phases,
    Recommended,
    Refit,
    SimilarScored,
    Skipped,
    Trained,
)
from tasks.store import resume
from tasks.store import tables as stored
from tasks.store.latest import Latest
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
    if incremental_tasks.is_incremental(params.ratings):
        ledger = run(
            "ingest",
            incremental_tasks.ingest_all,
            ratings=params.ratings,
            movies=movies,
            data_dir=str(layout.data_dir),
            run_date=run_date,
            max_reject_share=params.max_reject_share,
        )
        return ledger, ledger["inputs"], ledger["input_hash"]
    if params.ratings is None:
        inputs = run("generate", generate_task, out_dir=str(layout.data_dir / "embedded"))
    else:
        inputs = Inputs(ratings=incremental_tasks.single(params.ratings), movies=movies)
    ratings = str(inputs["ratings"])
    input_hash = run(
        "hash-inputs",
        stored.input_hash,
        ratings_src=Path(ratings),
        movies_src=Path(inputs["movies"]),
    )
    ingested = run(
        "ingest",
        ingest_task,
        ratings=ratings,
        movies=inputs["movies"],
        store_dir=str(layout.store(input_hash)),
        rejects_path=str(rejects.rejects_path(layout.data_dir, run_date, input_hash)),
        max_reject_share=params.max_reject_share,
        data_dir=str(layout.data_dir),
    )
    return ingested, inputs, input_hash


def _listed(ratings: str | list[str] | None) -> list[str]:
    return [] if ratings is None else [ratings] if isinstance(ratings, str) else list(ratings)


def _version(night: _Night, input_hash: str) -> str:
    """The model version: a hash of everything the outputs depend on (data, configuration, seed, k,
    rules, code), so a re-run of the same night resumes its work directory."""
    params, rules = night.params, night.rules_doc
    facts: tuple[str, ...] = (
        input_hash,
        json.dumps(night.config.to_dict(), sort_keys=True),
        str(params.seed),
    )
    facts += (str(params.holdout_fraction), str(params.k), caching.code_version())
    facts += (f"warm:{params.warm_epochs}",) if params.warm_start else ()
    facts += (json.dumps(rules, sort_keys=True),) if rules else ()
    return model_version(night.run_date, sha256_text(*facts))


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
    night: _Night,
    inputs: Inputs,
    input_hash: str,
    ingested: Ingested,
    trained: Trained,
    refit: Refit,
    known: dict[str, Any],
) -> dict[str, Any]:
    """What latest.json holds besides the tables and model files
    (:class:`tasks.store.latest.Latest`).
    """
    params, run = night.params, night.run
    warm_start = refit.get("warm_start", trained.get("warm_start")) if params.warm_start else None
    training = {
        "val_rmse": trained["val_rmse"],
        "best_epoch": trained["best_epoch"],
        "epochs_run": trained["epochs_run"],
        "loss_choice": _loss_choice(trained),
    }
    return {
        "preset": params.preset,
        "k": params.k,
        "inputs": {"ratings": inputs["ratings"], "movies": inputs["movies"], "sha256": input_hash},
        "ingest": ingested["stats"],
        "training": {**training, "refit_epochs": refit["refit_epochs"], "warm_start": warm_start},
        # the settings the published model was trained with: the MSE weight the holdout chose
        "config": {**night.config.to_dict(), "mse_weight": trained.get("mse_weight")},
        "rules": night.rules.document(),
        "threads": night.threads,
        "metrics": known.get("metrics"),
        "gate": known["gate"],
        "popularity_prior": known["popularity_prior"],
        "drift": known["drift"],
        "timings": dict(run.timings),
        # finished by an interrupted run of this version, not recomputed
        "reused_stages": list(run.cached),
    }


def _loss_choice(trained: Trained) -> dict[str, Any] | None:
    """The MSE weights the train stage tried and what each scored (tasks/evaluation/selection.py),
    or None when it trained one."""
    if "candidates" not in trained:
        return None
    return {
        "mse_weight": trained.get("mse_weight"),
        "users": trained.get("chosen_on_users"),
        "candidates": trained["candidates"],
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


@dataclass
class _Night:
    """What every stage of one night shares: its settings, where it writes, and the stage runner."""

    params: NightlyParams
    run_date: dt.date
    layout: Layout
    store: str | None  # the s3:// data directory, or None on a local one
    config: ModelConfig
    rules: Rules
    rules_doc: dict[str, Any] | None  # the business rules as latest.json holds them, or None
    threads: int
    run: _Stages = field(default_factory=_Stages)
    work: Path = Path()  # the version's staging directory, once the inputs say which version

    @staticmethod
    def of(params: NightlyParams, run_date: dt.date, target: Target) -> _Night:
        threads = params.threads or default_threads()
        pin_threads(threads)
        overrides: dict[str, Any] = {"max_epochs": params.max_epochs, "patience": params.patience}
        overrides |= {"refit": params.refit, "factors": params.factors}
        config = preset(params.preset, loss_choice=params.loss_choice, **overrides)
        rules = params.rules()  # which movies may be recommended (tasks/serving/rules.py)
        store = str(target.uri) if target.uri else None
        rules_doc = None if rules.empty else rules.document()
        return _Night(params, run_date, target.layout, store, config, rules, rules_doc, threads)


@dataclass(frozen=True)
class _Prepared:
    """The ingested tables and both phases' features and scalers: what training reads."""

    ingested: Ingested
    feature_dirs: Phases
    scalers: Phases

    @property
    def ratings(self) -> str:
        return self.ingested["ratings"]


def _night(
    params: NightlyParams, run_date: dt.date, target: Target, known: dict[str, Any]
) -> dict[str, Any]:
    """The pipeline: each line one stage or one group of them, in the order they run."""
    started = time.perf_counter()
    night = _Night.of(params, run_date, target)
    with data_dir_lock(night.layout.lock):
        etag = _pull(night)
        ingested, inputs, input_hash = _ingest(night.run, params, night.layout, run_date)
        known["model_version"] = version = _version(night, input_hash)
        _stage_in(night, version)
        prep = _prepare(night, ingested)
        warm = _warm_source(night, prep.feature_dirs) if params.warm_start else None
        trained = _train(night, prep, warm)
        prior_weight = _judge(night, prep, trained, known)
        refit = _refit(night, prep, trained, warm)
        exported = _export(night, prep, refit, prior_weight)
        recs, similar = _serve(night, ingested, exported, version)
        known["drift"] = _drift(night, ingested, recs, known)
        facts = _published_facts(night, inputs, input_hash, ingested, trained, refit, known)
        latest = _publish(night, version, exported, recs, similar, facts, etag)
        outcome.published(night.layout, latest.document(), time.perf_counter() - started)
        _report(night, latest, trained, refit, recs)
        _push(night, version)
        shutil.rmtree(night.work, ignore_errors=True)
    summary = {
        **latest.document(),
        "timings": dict(night.run.timings),
        "reused_stages": list(night.run.cached),
        "data_dir": target.name,
        "users": recs["users"],
        "movies": exported["movies"],
    }
    get_run_logger().info("published %s: %s", version, json.dumps(latest.document()["tables"]))
    return summary


def _pull(night: _Night) -> str | None:
    """On a store: make the scratch's published run the store's; the ETag of its latest.json."""
    if night.store is None:
        return None
    return night.run("pull", pull_task, store_uri=night.store, data_dir=str(night.layout.data_dir))


def _stage_in(night: _Night, version: str) -> None:
    """The version's work directory made ready (an interrupted run of it resumed)."""
    night.work = night.layout.work(version)
    logger = get_run_logger()
    for note in resume.prepare_work(night.layout, night.work):
        logger.info(note)
    night.run.work = night.work
    logger.info("model version %s, staging in %s", version, night.work)


def _prepare(night: _Night, ingested: Ingested) -> _Prepared:
    """The features and scalers of both phases (train: holdout excluded; full: every rating)."""
    p, run, work = night.params, night.run, night.work
    feats = run(
        "features",
        features_task,
        ratings=ingested["ratings"],
        movies=ingested["movies"],
        out_dir=str(work / "features"),
        preset_name=p.preset,
        holdout=p.holdout_fraction,
        factors=p.factors,
    )
    feature_dirs = Phases(train=feats["train"], full=feats["full"])
    scalers = run(
        "scalers",
        scalers_task,
        ratings=ingested["ratings"],
        feature_dirs=feature_dirs,
        holdout=p.holdout_fraction,
        out_dir=str(work / "scalers"),
    )
    return _Prepared(ingested, feature_dirs, scalers)


def _warm_source(night: _Night, feature_dirs: Phases) -> dict[str, str] | None:
    """The published model to start from (--warm-start, tasks/modeling/warmstart.py)."""
    return night.run(
        "warm-start",
        incremental_tasks.warm_source_task,
        data_dir=str(night.layout.data_dir),
        feature_dir=feature_dirs["full"],
        config=night.config.to_dict(),
    )


def _train(night: _Night, prep: _Prepared, warm: dict[str, str] | None) -> Trained:
    """The validation model, trained without each user's most recent ratings."""
    p = night.params
    epochs = warmstart.warm_epochs(night.config.max_epochs, p.warm_epochs) if warm else p.max_epochs
    return night.run(
        "train", train_task, ratings=prep.ratings, feature_dirs=prep.feature_dirs,
        scaler_paths=prep.scalers, out_dir=str(night.work / "train"), preset_name=p.preset,
        max_epochs=epochs, patience=p.patience, seed=p.seed, holdout=p.holdout_fraction,
        warm=warm, factors=p.factors, k=p.k, loss_choice=p.loss_choice,
    )  # fmt: skip


def _judge(night: _Night, prep: _Prepared, trained: Trained, known: dict[str, Any]) -> float:
    """Evaluate the validation model on the holdout, choose the prior, and let the gate decide.

    Records the metrics, the prior and the verdict in ``known``; returns the prior's weight.
    """
    p, run = night.params, night.run
    evaluation: Evaluation | Skipped | None = None
    if p.holdout_fraction > 0:
        evaluation = run(
            "evaluate",
            evaluate_task,
            ratings=prep.ratings,
            train_dir=prep.feature_dirs["train"],
            scalers_path=prep.scalers["train"],
            validation_model=trained["validation_model"],
            holdout=p.holdout_fraction,
            k=p.k,
            popularity_prior=night.config.popularity_prior,
            seed=p.seed,
        )
    measured = evaluation if evaluation is not None and "skipped" not in evaluation else None
    if measured is not None:
        known["metrics"] = measured["metrics"]
    known["popularity_prior"] = _prior(measured)
    known["gate"] = run(
        "quality-gate",
        gate_task,
        evaluation=evaluation,
        latest_path=str(night.layout.latest),
        margin=p.gate_margin,
        k=p.k,
        enforce=p.gate,
    )
    return float(known["popularity_prior"]["weight"])


def _refit(night: _Night, prep: _Prepared, trained: Trained, warm: dict[str, str] | None) -> Refit:
    """The published model: the validation model brought to every rating (--refit)."""
    p = night.params
    return night.run(
        "refit", refit_task, ratings=prep.ratings, feature_dirs=prep.feature_dirs,
        scaler_paths=prep.scalers, validation_model=trained["validation_model"],
        out_dir=str(night.work / "train"), preset_name=p.preset, epochs=trained["best_epoch"],
        seed=p.seed, holdout=p.holdout_fraction, warm=warm, refit=p.refit, factors=p.factors,
        mse_weight=trained.get("mse_weight"),
    )  # fmt: skip


def _export(night: _Night, prep: _Prepared, refit: Refit, prior_weight: float) -> Exported:
    """Embeddings of every user and movie and the FAISS index, from the published model."""
    return night.run(
        "export",
        export_task,
        model_path=refit["model"],
        full_dir=prep.feature_dirs["full"],
        scalers_path=refit["scalers"],
        model_dir=str(night.work / "model"),
        ratings=prep.ratings,
        prior_weight=prior_weight,
    )


def _serve(
    night: _Night, ingested: Ingested, exported: Exported, version: str
) -> tuple[Recommended, SimilarScored]:
    """The recommendations and similar-movie tables, one task per shard on the flow's task runner
    (threads, or Dask: flows/runners.py), parts in shard order.

    On Dask with a store, the shards' inputs and parts go through the store
    (tasks/store/exchange.py).
    """
    p, run, work, store = night.params, night.run, night.work, night.store
    exchange = (store, str(night.layout.data_dir)) if store and runners.on_dask() else None
    recs = run(
        "recommend", shard_tasks.recommend_all, ratings=ingested["ratings"],
        model_dir=exported["model_dir"], out_dir=str(work / "recommendations"), k=p.k,
        version=version, chunk_size=p.chunk_size, shard_size=p.shard_size, work=str(work),
        rules=night.rules_doc, movies=ingested["movies"], exchange=exchange,
    )  # fmt: skip
    similar = run(
        "similar", shard_tasks.similar_all, model_dir=exported["model_dir"],
        out_dir=str(work / "similar_movies"), k=p.k, chunk_size=p.chunk_size,
        shard_size=p.shard_size, work=str(work), rules=night.rules_doc,
        movies=ingested["movies"], exchange=exchange,
    )  # fmt: skip
    for name, out in (("recommend", recs), ("similar", similar)):
        if out["shards_reused"] == out["shards"]:
            run.cached.append(name)
    return recs, similar


def _drift(
    night: _Night, ingested: Ingested, recs: Recommended, known: dict[str, Any]
) -> dict[str, Any]:
    """How far tonight's lists and metrics moved from the published night's."""
    return night.run(
        "drift",
        drift_task,
        parts=recs["parts"],
        latest_path=str(night.layout.latest),
        ratings=ingested["ratings"],
        movies=ingested["movies"],
        metrics=known.get("metrics"),
        out_path=str(night.work / "metrics.parquet"),
    )


def _publish(
    night: _Night,
    version: str,
    exported: Exported,
    recs: Recommended,
    similar: SimilarScored,
    facts: dict[str, Any],
    etag: str | None,
) -> Latest:
    """latest.json, last: the night's tables and model become the published run."""
    tables: dict[str, str | list[str]] = {
        "recommendations": recs["parts"],
        "similar_movies": similar["parts"],
        "metrics": str(night.work / "metrics.parquet"),
    }
    return night.run(
        "publish",
        publish_task,
        data_dir=str(night.layout.data_dir),
        run_date=night.run_date,
        version=version,
        model_dir=exported["model_dir"],
        tables=tables,
        extra=facts,
        store_uri=night.store,
        expect_etag=etag,
    )


def _report(
    night: _Night, latest: Latest, trained: Trained, refit: Refit, recs: Recommended
) -> None:
    """The run report: history row, events, the Prefect artifact and plots."""
    histories = {"validate": trained.get("history", []), "refit": refit.get("history", [])}
    night.run(
        "report",
        report.report_task,
        data_dir=str(night.layout.data_dir),
        latest=latest.document(),
        timings=dict(night.run.timings),
        histories=histories,
        score_hist=recs["score_hist"],
        runner=runners.current(),
    )


def _push(night: _Night, version: str) -> None:
    """On a store: the history row, the report and the rejects; the exchanged keys removed."""
    if night.store is None:
        return
    night.run(
        "push",
        push_task,
        store_uri=night.store,
        data_dir=str(night.layout.data_dir),
        exchanged=f"work/{version}",
    )
