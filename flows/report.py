"""What the Prefect UI shows beside the logs: progress artifacts and the run report.

Artifact keys (stable across runs, so the Artifacts page keeps one history per key):

- ``towerflow-train-progress``, ``towerflow-refit-progress``: epochs done of the epoch budget
- ``towerflow-recommend-progress``, ``towerflow-similar-progress``: shards done
- ``towerflow-report``: the markdown run report, with the plots embedded
- ``towerflow-metrics`` and ``towerflow-ingest`` (tables) come from the evaluate and ingest tasks.

Progress updates are best effort: a failed update is logged, never fails the run.
The plots are also written as PNG files beside the run's outputs
(``outputs/reports/run_date=YYYY-MM-DD/``) with the report as markdown.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.store.layout import Layout
from tasks.store.storage import atomic_path

REPORT_KEY = "towerflow-report"
EPOCH_PROGRESS_KEYS = {"train": "towerflow-train-progress", "refit": "towerflow-refit-progress"}

R = TypeVar("R")


class Progress:
    """A keyed progress artifact of the current run, created at 0 %."""

    def __init__(self, key: str, description: str) -> None:
        self.key = key
        self._id: Any = None
        self._failed = False
        try:
            from prefect.artifacts import create_progress_artifact

            self._id = create_progress_artifact(0.0, key=key, description=description)
        except Exception as exc:  # the UI is a view; the run goes on without it
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        if not self._failed:
            self._failed = True
            get_run_logger().warning("progress artifact %s not updated: %s", self.key, exc)

    def update(self, fraction: float, description: str | None = None) -> None:
        if self._id is None:
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(
                self._id, round(100.0 * min(1.0, max(0.0, fraction)), 1), description=description
            )
        except Exception as exc:
            self._warn(exc)


class EpochProgress:
    """``on_epoch(phase, record)`` for training: logs each epoch and moves the stage's progress
    artifact.
    """

    def __init__(self, stage: str, max_epochs: int) -> None:
        self.logger = get_run_logger()
        self.max_epochs = max(1, max_epochs)
        self.epochs = 0
        self.progress = Progress(
            EPOCH_PROGRESS_KEYS[stage], f"{stage}: 0 of {self.max_epochs} epochs"
        )
        self.stage = stage

    def __call__(self, phase: str, rec: dict[str, float]) -> None:
        val = (
            f" val_loss {rec['val_loss']:.4f} val_mse {rec['val_mse']:.4f}"
            if "val_loss" in rec
            else ""
        )
        self.logger.info(
            "%s epoch %d/%d: loss %.4f mse %.4f%s (%.1fs)",
            phase,
            rec["epoch"],
            self.max_epochs,
            rec["loss"],
            rec["mse"],
            val,
            rec["seconds"],
        )
        self.epochs = int(rec["epoch"])
        self.progress.update(
            self.epochs / self.max_epochs,
            f"{self.stage}: epoch {self.epochs} of {self.max_epochs}, loss {rec['loss']:.4f}",
        )

    def finish(self, result: R) -> R:
        """Mark the stage done (early stopping ends before the budget); return ``result``
        unchanged.
        """
        self.progress.update(
            1.0, f"{self.stage}: done after {self.epochs} of {self.max_epochs} epochs"
        )
        return result


def loss_choice(choice: dict[str, Any] | None, k: int) -> str:
    """latest.json's ``training.loss_choice`` in words: the MSE weight the night kept, what each
    scored; empty when it trained one."""
    if not choice:
        return ""
    tried = " / ".join(f"{c['mse_weight']:g}" for c in choice["candidates"])
    scores = " / ".join(f"{c['ndcg']:.4f}" for c in choice["candidates"])
    return (
        f"MSE weight {choice['mse_weight']:g} kept of {tried} (NDCG@{k} {scores} on "
        f"{choice['users']:,} holdout users)"
    )


def _image(path: Path | None, alt: str, embed: bool) -> str:
    """The plot embedded as a data URI (the UI renders those, never file:// links), or linked by
    file name.
    """
    if path is None:
        return f"({alt}: no plot, see the run's logs)"
    if not embed:
        return f"![{alt}]({Path(path).name})"
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"


def _drift(latest: dict[str, Any]) -> list[str]:
    drift = latest.get("drift") or {}
    if not drift:
        return []
    names = ("coverage", "novelty", "diversity", "personalization")
    lines = [
        "## Tonight's lists and the published run's",
        "",
        f"| lists | {' | '.join(names)} |",
        "|---|" + "---:|" * len(names),
    ]
    for label, values in (
        ("tonight", drift.get("lists")),
        (
            f"published {(drift.get('published') or {}).get('model_version', '')}",
            drift.get("published"),
        ),
    ):
        if values:
            lines.append(
                f"| {label} | "
                + " | ".join(f"{values.get(n, float('nan')):.4f}" for n in names)
                + " |"
            )
    versus = drift.get("versus_published")
    if versus and versus.get("users_compared"):
        lines += [
            "",
            f"Against the published run, over {int(versus['users_compared']):,} users: mean "
            f"top-k Jaccard {versus['mean_jaccard']:.3f} "
            f"(drift {versus['drift']:.3f}"
            f"{', past the alert threshold' if drift.get('drifted') else ''}), "
            f"{versus['changed_share']:.1%} of the lists changed, score mean shift "
            f"{versus['score_mean_shift']:+.4f}, "
            f"KS {versus['score_ks']:.3f}.",
        ]
    elif "versus_published" not in drift:
        lines += ["", "Nothing was published before: no drift to measure."]
    return [*lines, ""]


def _report(
    latest: dict[str, Any],
    timings: dict[str, float],
    runner: str,
    data_dir: Path,
    plots: dict[str, Path | None],
    embed: bool,
    history: str = "",
) -> str:
    """The run report as markdown: inputs, training, metrics, outputs, plots, seconds per stage."""
    ing, train = latest.get("ingest", {}), latest.get("training", {})
    rmse = train.get("val_rmse")
    lines = [
        f"# towerflow nightly {latest['run_date']}: model `{latest['model_version']}`",
        "",
        f"Published {latest.get('published_at', '')}; preset `{latest.get('preset')}`, "
        f"k={latest.get('k')}, "
        f"{latest.get('threads')} threads; shards ran on {runner}.",
        "",
        "## Input",
        "",
        "| | |",
        "|---|---:|",
        f"| rows read | {ing.get('rows_read', 0):,} |",
        f"| rows accepted | {ing.get('rows_accepted', 0):,} |",
        f"| rows rejected | {ing.get('rows_rejected', 0):,} ({ing.get('reject_share', 0.0):.2%}) |",
        f"| older duplicates dropped | {ing.get('duplicates_dropped', 0):,} |",
        f"| users | {ing.get('users', 0):,} |",
        f"| movies | {ing.get('movies', 0):,} |",
        "",
        f"Rejected rows: `{data_dir / ing['rejects_path']}`" if ing.get("rejects_path") else "",
        "",
        "## Training",
        "",
        f"Best epoch {train.get('best_epoch')} of {train.get('epochs_run')} run; refit "
        f"{train.get('refit_epochs')} epochs on every "
        "rating; validation RMSE "
        f"{f'{rmse:.3f} stars' if rmse is not None else 'n/a (no holdout)'}.",
        "",
        loss_choice(train.get("loss_choice"), int(latest.get("k") or 10)),
        "",
        _image(plots.get("loss"), "training loss per epoch", embed),
        "",
    ]
    gate = latest.get("gate") or {}
    if gate:
        enforced = "" if gate.get("enforced", True) else " (not enforced: `--no-gate`)"
        verdict, reason = gate.get("verdict", "?"), gate.get("reason", "")
        # the reason starts with the verdict
        reason = reason.split(": ", 1)[1] if reason.startswith(f"{verdict}: ") else reason
        lines += ["## Quality gate", "", f"**{verdict}**{enforced}: {reason}", ""]
    metrics = latest.get("metrics") or {}
    if metrics:
        names = [
            "ndcg",
            "ndcg_low",
            "ndcg_high",
            "precision",
            "recall",
            "map",
            "hit_rate",
            "coverage",
            "rmse",
        ]
        heads = [
            f"{n}@k" if n in ("ndcg", "precision", "recall", "map", "hit_rate") else n
            for n in names
        ]
        lines += ["## Holdout metrics", "", f"| method | {' | '.join(heads)} | users |"]
        lines.append("|---|" + "---:|" * (len(names) + 1))
        for method, values in metrics.items():
            cells = " | ".join("" if values.get(n) is None else f"{values[n]:.4f}" for n in names)
            lines.append(f"| {method} | {cells} | {int(values.get('users', 0)):,} |")
        prior = latest.get("popularity_prior") or {}
        by_weight = ", ".join(
            f"{w} {v:.4f}" for w, v in (prior.get("ndcg_by_weight") or {}).items()
        )
        lines += [
            "",
            "Each user's most recent ratings held out; ndcg_low..ndcg_high is the 95% "
            "bootstrap interval over the users. "
            f"Popularity prior weight {prior.get('weight', 0):g}, chosen on this holdout "
            f"(NDCG@k by weight: {by_weight}).",
            "",
        ]
    lines += _drift(latest)
    lines += ["## Outputs", "", "| table | rows | files | path |", "|---|---:|---:|---|"]
    for name, info in latest.get("tables", {}).items():
        lines.append(
            f"| {name} | {info['rows']:,} | {len(info.get('files', [info['path']]))} | "
            f"`{data_dir / info['path']}` |"
        )
    lines += [
        "",
        f"`latest.json`: `{data_dir / 'outputs' / 'latest.json'}`; model files: "
        f"`{data_dir / 'models' / latest['model_version']}`.",
        "",
        "## Scores",
        "",
        _image(plots.get("scores"), "distribution of recommendation scores", embed),
        "",
        "## Seconds per stage",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *(f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items()),
        "",
        history,
    ]
    return "\n".join(lines)


@task(name="report", cache_policy=NO_CACHE, tags=["report"])
def report_task(
    data_dir: str, latest: dict[str, Any], timings: dict[str, float],
    histories: dict[str, list[dict[str, float]]], score_hist: list[int], runner: str,
) -> dict[str, str]:  # fmt: skip
    """Plots (PNG) and the markdown report beside the outputs, and the ``towerflow-report``
    artifact.

    Runs after publish: a failure here is logged and never fails the published run.
    """
    from prefect.artifacts import create_markdown_artifact

    logger = get_run_logger()
    layout = Layout(Path(data_dir))
    run_date, version = dt.date.fromisoformat(latest["run_date"]), latest["model_version"]
    out_dir = layout.reports(run_date)
    plots: dict[str, Path | None] = {"loss": None, "scores": None}
    written: dict[str, str] = {}
    try:
        from tasks import plots as plotting
        from tasks.serving.shards import SCORE_BINS

        title = f"{run_date} model {version}"
        plots["loss"] = plotting.loss_curves(
            histories, out_dir / f"loss-{version}.png", f"training, {title}"
        )
        plots["scores"] = plotting.score_histogram(
            SCORE_BINS, score_hist, out_dir / f"scores-{version}.png", f"published scores, {title}"
        )
    except Exception as exc:  # e.g. matplotlib missing; the report goes out without pictures
        logger.warning("plots not written: %s", exc)
    try:
        from flows.outcome import HISTORY_NIGHTS, history_markdown, history_plot, trend_path
        from tasks.store.nights import read_nights

        nights = read_nights(layout, last=HISTORY_NIGHTS)
        # outcome.published drew it from these same nights just before this task; draw it only if
        # that failed
        trend = trend_path(layout) if trend_path(layout).exists() else history_plot(layout, nights)
        report_path = out_dir / f"report-{version}.md"
        with atomic_path(report_path) as tmp:  # beside its PNGs, linked by name
            history = history_markdown(nights, None, embed=False)
            tmp.write_text(
                _report(latest, timings, runner, layout.data_dir, plots, False, history),
                encoding="utf-8",
            )
        written = {
            "report": str(report_path),
            **{name: str(path) for name, path in plots.items() if path is not None},
        }
        text = _report(
            latest,
            timings,
            runner,
            layout.data_dir,
            plots,
            True,
            history_markdown(nights, trend, embed=True),
        )
        create_markdown_artifact(
            text, key=REPORT_KEY, description=f"towerflow nightly {run_date}: model {version}"
        )
    except Exception as exc:
        logger.warning("run report not complete: %s", exc)
    logger.info("report: %s", json.dumps(written))
    return written
