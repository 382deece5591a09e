"""The ``towerflow`` command: run, predict, evaluate, generate; recommend, similar, download
(``flows.query_cli``).

Exit status 0 on success; otherwise non-zero and one line on stderr naming
the file, row or stage at fault.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from flows import failures, params, query_cli, serve
from tasks.errors import TowerflowError, is_expected
from tasks.presets import PRESETS

EPHEMERAL_STARTUP_SECONDS = 180


def _quiet_env() -> None:
    from tasks.runtime import default_threads, set_thread_env

    set_thread_env(default_threads())
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks")
    # Prefect waits 20 s for its temporary server; a busy 2-core machine can need more (a night must
    # not fail on it)
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_SECONDS)
    )


def _runner_args(parser: argparse.ArgumentParser) -> None:
    """Where the shard tasks run: options of the command, not flow parameters (a deployment's runner
    has its own).
    """
    parser.add_argument(
        "--dask-address",
        metavar="tcp://HOST:PORT",
        help="run the shard tasks on this Dask scheduler (default: $TOWERFLOW_DASK_ADDRESS)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help=(
            "without Dask: shard tasks at a time on local threads (default: "
            "$TOWERFLOW_WORKERS or 2)"
        ),
    )


def _parser() -> argparse.ArgumentParser:
    # numpy and friends: imported after _quiet_env has pinned their threads
    from tasks.sources.generate import LAWS

    p = argparse.ArgumentParser(
        prog="towerflow",
        description="Nightly two-tower movie recommendations, orchestrated by Prefect.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the nightly flow once, end to end")
    params.add_arguments(run, run_date=True)
    _runner_args(run)
    srv = sub.add_parser(
        "serve",
        help="serve the nightly flow on a cron schedule (needs a Prefect server, PREFECT_API_URL)",
    )
    params.add_arguments(srv, run_date=False)
    _runner_args(srv)
    serve.add_arguments(srv)
    pred = sub.add_parser(
        "predict", help="predicted ratings for user/movie pairs from the latest model"
    )
    pred.add_argument(
        "--data-dir",
        default="data",
        help="where `towerflow run` published: a directory or s3://bucket/prefix",
    )
    pred.add_argument(
        "--pairs", type=Path, required=True, help="CSV or Parquet with userId,movieId"
    )
    pred.add_argument("--output", type=Path, required=True, help="Parquet file to write")
    ev = sub.add_parser(
        "evaluate", help="per-user temporal evaluation against most-popular, ALS and EASE^R"
    )
    ev.add_argument("--ratings", type=Path, required=True)
    ev.add_argument("--movies", type=Path, required=True)
    ev.add_argument(
        "--preset",
        action="append",
        choices=sorted(PRESETS),
        help="model preset(s) to evaluate (repeatable; default: default)",
    )
    ev.add_argument("--k", type=int, default=10)
    ev.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of each user's most recent ratings held out (default: 0.2)",
    )
    ev.add_argument(
        "--seed",
        type=int,
        action="append",
        help="seed (repeatable: one run per seed, then mean and range; default: 42)",
    )
    ev.add_argument("--max-epochs", type=int, help="override the presets' epoch limit")
    ev.add_argument("--no-als", action="store_true", help="skip the ALS baseline")
    ev.add_argument(
        "--no-ease",
        action="store_true",
        help="skip the EASE^R baseline (a movies x movies inverse: seconds to a minute)",
    )
    ev.add_argument("--output", type=Path, help="also write the table to this CSV file")
    gen = sub.add_parser("generate", help="write a synthetic MovieLens-like data set")
    gen.add_argument(
        "--out", type=Path, required=True, help="directory for ratings.csv and movies.csv"
    )
    gen.add_argument("--users", type=int, default=1500)
    gen.add_argument("--movies", type=int, default=2500)
    gen.add_argument("--ratings-per-user", type=float, default=80.0, help="mean ratings per user")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument(
        "--law",
        choices=sorted(LAWS),
        default="taste",
        help=(
            "what drives the picks: genre taste (default), popularity (weak tastes) or "
            "latent (hidden factors genres do not show)"
        ),
    )
    gen.add_argument(
        "--taste-strength",
        type=float,
        help="override the law's weight of genre taste in what users pick",
    )
    gen.add_argument(
        "--popularity-exponent",
        type=float,
        help="override the law's Zipf exponent of movie popularity",
    )
    alerts = sub.add_parser(
        "alerts",
        help="Prefect automations that notify when a night fails, crashes, is refused or drifts",
    )
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    install = alerts_sub.add_parser(
        "install", help="create them (idempotently) on the server at PREFECT_API_URL"
    )
    install.add_argument(
        "--block",
        help="the Prefect notification block to notify through (e.g. a Slack or webhook block)",
    )
    query_cli.add_parsers(sub)
    return p


def _under(root: str, rel: str) -> str:
    """``rel`` under a data directory or an ``s3://`` URI (``Path`` would fold the URI's ``//``)."""
    return f"{str(root).rstrip('/')}/{rel}"


def _summary(s: dict[str, Any]) -> str:
    from flows import report  # Prefect is loaded by now: the run just ended

    t = s["timings"]
    ing = s["ingest"]
    lines = [
        "",
        f"towerflow run {s['run_date']}  model {s['model_version']}  preset {s['preset']}",
        f"  read      {ing['rows_read']:,} ratings -> {ing['rows_accepted']:,} accepted, "
        f"{ing['rows_rejected']:,} rejected "
        f"({ing['reject_share']:.2%}), {ing['duplicates_dropped']:,} older duplicates dropped; "
        f"{s['users']:,} users, {s['movies']:,} movies ({ing['movies_without_year']} without "
        "a year)",
        f"  rejects   {_under(s['data_dir'], ing['rejects_path'])}"
        + (
            " (" + ", ".join(f"{r} {n:,}" for r, n in ing["rejected_by_reason"].items()) + ")"
            if ing["rows_rejected"]
            else " (empty)"
        ),
        f"  training  best epoch {s['training']['best_epoch']}, validation RMSE "
        + (
            f"{s['training']['val_rmse']:.3f} stars"
            if s["training"]["val_rmse"] is not None
            else "n/a (no holdout)"
        ),
    ]
    choice = report.loss_choice(s["training"].get("loss_choice"), s["k"])
    lines += [f"  loss      {choice}"] if choice else []
    if "files_new" in ing:
        lines.insert(
            3,
            f"  files     {ing['files_new']} new, {ing['files_skipped']} already ingested "
            f"(skipped); {ing['rows_total']:,} ratings in all",
        )
    if s["training"].get("warm_start"):
        lines.append(f"  warm      {s['training']['warm_start']}")
    metrics = s.get("metrics") or {}
    if metrics:
        users = int(next(iter(metrics.values())).get("users", 0))
        figures = [
            f"{m} {v['ndcg']:.4f} [{v['ndcg_low']:.4f}, {v['ndcg_high']:.4f}]"
            for m, v in metrics.items()
        ]
        lines.append(
            f"  holdout   NDCG@{s['k']} on {users:,} users (95% interval): " + ";  ".join(figures)
        )
        lines.append(
            f"  prior     popularity weight {s['popularity_prior']['weight']:g}, chosen on "
            "the holdout"
        )
    gate = s.get("gate") or {}
    if gate:
        lines.append(
            f"  gate      {gate['reason']}"
            + ("" if gate.get("enforced", True) else " (not enforced: --no-gate)")
        )
    for name, info in s["tables"].items():
        lines.append(
            f"  {name:<16} {info['rows']:>10,} rows  {_under(s['data_dir'], info['path'])}"
        )
    lines.append(f"  latest.json      {_under(s['data_dir'], 'outputs/latest.json')}")
    lines.append("  seconds   " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    if s.get("reused_stages"):
        lines.append(
            "  resumed   reused from the interrupted run: " + ", ".join(s["reused_stages"])
        )
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.nightly import nightly
    from flows.runners import task_runner

    failures.hide_expected_tracebacks()
    flow = nightly.with_options(task_runner=task_runner(args.dask_address, args.workers))
    try:
        state = flow(params.from_arguments(args), return_state=True)
    except RuntimeError as exc:  # before the flow ran: Prefect's temporary server did not come up
        timeout = failures.ephemeral_timeout(
            exc, os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "?")
        )
        if timeout is None:
            raise
        raise timeout from None
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise failures.RunFailed(result)
    if not state.is_completed():
        raise TowerflowError(f"the flow run ended {state.name}: {state.message}")
    failures.close_prefect()
    print(_summary(result))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    serve.serve(
        params.from_arguments(args),
        args.cron,
        args.timezone,
        args.name,
        args.dask_address,
        args.workers,
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from towerflow.predict import predict_pairs

    out = predict_pairs(args.data_dir, args.pairs, args.output)
    print(
        f"predicted {out['scored']:,} of {out['rows']:,} pairs with model "
        f"{out['model_version']} -> {out['output']}"
    )
    if out["errors"]:
        print(
            f"towerflow predict: {out['errors']:,} pairs have no prediction; see the 'error' "
            f"column of {out['output']}",
            file=sys.stderr,
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile

    import pandas as pd

    from tasks.evaluation.evaluate import compare, fit, over_seeds
    from tasks.ingestion.ingest import ingest
    from tasks.preparation.features import per_user_holdout
    from tasks.presets import preset
    from tasks.runtime import default_threads, pin_threads
    from tasks.store.tables import load_movies, load_ratings

    pin_threads(default_threads())
    with tempfile.TemporaryDirectory(prefix="towerflow-eval-") as tmp:
        r, m, stats = ingest(args.ratings, args.movies, Path(tmp))
        ratings, movies = load_ratings(r), load_movies(m)
    hold = per_user_holdout(ratings, args.holdout)
    train, test = ratings[~hold], ratings[hold]
    print(
        f"per-user temporal split: {len(train):,} train / {len(test):,} held-out ratings, "
        f"{stats.users:,} users, {len(movies):,} movies"
    )
    tables = []
    for seed in args.seed or [42]:
        models = {}
        for name in args.preset or ["default"]:
            print(f"training preset {name} (seed {seed}) ...", flush=True)
            fitted = fit(train, movies, preset(name, max_epochs=args.max_epochs), seed, k=args.k)
            print(
                f"  {fitted.best_epoch} epochs, popularity prior weight "
                f"{fitted.prior_weight:g}, {fitted.seconds:.0f} s"
            )
            models[f"two-tower ({name})"] = fitted
        table = compare(
            train,
            test,
            movies,
            models,
            k=args.k,
            seed=seed,
            with_als=not args.no_als,
            with_ease=not args.no_ease,
            log=print,
        )
        shown = table.rename(
            columns={c: f"{c}@{args.k}" for c in ("precision", "recall", "ndcg", "map", "hit_rate")}
        )
        columns = [
            "method",
            f"ndcg@{args.k}",
            "ndcg_low",
            "ndcg_high",
            f"recall@{args.k}",
            f"hit_rate@{args.k}",
            "coverage",
            "rmse",
            "users",
        ]
        print(
            shown[[*columns, "setting"]].to_string(index=False, float_format=lambda v: f"{v:.4f}")
        )
        tables.append(shown.assign(seed=seed))
    print(
        "relevant = held-out rating >= 4; every ranking figure rests on the "
        f"{int(tables[0]['users'].iloc[0]):,} users with a relevant "
        "held-out movie (ndcg_low..ndcg_high: 95% bootstrap interval over them); seen movies "
        "excluded"
    )
    both = pd.concat(tables, ignore_index=True)
    if len(tables) > 1:
        print(f"over seeds {', '.join(str(s) for s in args.seed)}:")
        summary = over_seeds(both, (f"ndcg@{args.k}", f"recall@{args.k}", "rmse"))
        print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    if args.output:
        both.to_csv(args.output, index=False)
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from flows.alerts import install

    for name, what in install(args.block):
        print(f"{what:<8} {name}")
    print(f"notifications go to block {args.block!r}; see the Automations page of the Prefect UI")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from tasks.sources.generate import generate

    overrides = {
        "taste_strength": args.taste_strength,
        "popularity_exponent": args.popularity_exponent,
    }
    from tasks.sources.generate import LAWS

    law = dataclasses.replace(
        LAWS[args.law], **{name: value for name, value in overrides.items() if value is not None}
    )
    data = generate(
        args.out,
        n_users=args.users,
        n_movies=args.movies,
        mean_ratings_per_user=args.ratings_per_user,
        seed=args.seed,
        law=law,
    )
    print(
        f"wrote {data.n_ratings:,} ratings by {data.n_users:,} users of {data.n_movies:,} "
        f"movies to {args.out} ({law})"
    )
    print(f"next: towerflow run --ratings {data.ratings_csv} --movies {data.movies_csv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    _quiet_env()  # before numpy, TensorFlow or FAISS load: their thread pools read it once
    args = _parser().parse_args(argv)
    commands = {
        "run": cmd_run,
        "predict": cmd_predict,
        "evaluate": cmd_evaluate,
        "generate": cmd_generate,
        **query_cli.COMMANDS,
    }
    commands |= {"serve": cmd_serve, "alerts": cmd_alerts}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        failures.close_prefect()
        print("towerflow: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line on stderr is the reason; a traceback only for a bug
        expected = is_expected(exc)
        # a failed flow run's traceback is in Prefect's log above
        if not expected and not isinstance(exc, failures.RunFailed):
            traceback.print_exception(exc)
        failures.close_prefect()
        bug = "" if expected else " [unexpected error: a bug in towerflow; the traceback is above]"
        print(f"towerflow {args.command} failed: {failures.reason(exc)}{bug}", file=sys.stderr)
        return 1


def entry() -> None:
    """The console script: :func:`main`, then the exit handlers, then exit without tearing the
    interpreter down.

    Why: once TensorFlow is loaded, Python's own teardown (modules, TensorFlow's runtime) took
    2.5 s of every ``towerflow run`` on 2 cores, after the run had published and drained
    Prefect's logs and events (:func:`flows.failures.close_prefect`). The exit handlers
    (``atexit``) still run and logging still flushes, so nothing registered for the end is
    skipped; only the teardown, whose work the operating system does anyway.
    """
    import atexit
    import logging

    code = main()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that went away (``towerflow recommend ... | head``)
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    entry()
