"""Crash recovery of a data directory: roll back an interrupted publish, drop killed writes'
temporaries.

Every write is atomic (a hidden temporary renamed into place), so a killed run
leaves only three kinds of debris, all cleaned by the next run (under the
data-directory lock, as soon as it knows its model version, before any stage
after ingest):

- hidden temporaries (``.name.XXXXXXXX.tmp``, Keras' ``.keras`` twin, a
  publish's ``outputs/<table>/.run_date=D.part-*.parquet.staged``, a swapped-out
  ``models/.<v>.old-<pid>``), never under a published name;
- a publish cut short before ``latest.json`` was written: its journal
  (``work/<version>/publish-journal.json``, written before the first move)
  says what it was putting in place; whatever of that ``latest.json`` does not
  point to is removed again (paths rebuilt by :class:`Layout`, never read from the journal);
- a publish cut short after ``latest.json``: only the removal of the older
  parts of the same partitions was left; it is finished.

The run's work directory itself is kept: it is what the next run of the same
model version resumes from (:mod:`flows.caching`). A publish of a run date
removes that date's other work directories (superseded attempts).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
from pathlib import Path
from typing import Any

from tasks.errors import TowerflowError
from tasks.store import latest as latest_doc
from tasks.store.latest import Latest
from tasks.store.layout import Layout
from tasks.store.storage import read_json, sha256_file, write_json

JOURNAL = "publish-journal.json"
# what towerflow writes under DIR
_MANAGED = ("outputs", "models", "work", "rejects", "store", "embedded")
_DEBRIS = re.compile(r"^\..+\.(tmp|keras|staged)$|^\..+\.old-[0-9]+$")


def staged_name(final: Path) -> Path:
    """Where a table part waits until the publish shows it: a hidden name beside the partition
    directory.

    Not inside it: a new partition directory appears only with its parts, by the renames just before
    ``latest.json``.
    """
    return final.parent.parent / f".{final.parent.name}.{final.name}.staged"


def live_latest(layout: Layout) -> Latest | None:
    """The published ``latest.json``, or None when nothing is, or nothing this towerflow reads, is
    published.

    A latest.json of another schema version names files this recovery does not know how to read; it
    is left alone (the files a journal plans belong to a new version), and the night publishes over
    it.
    """
    return latest_doc.comparable_latest(layout.data_dir)


def table_files(layout: Layout, latest: Latest) -> list[Path]:
    """The part files ``latest.json`` names."""
    return [layout.data_dir / f for info in latest.tables.values() for f in info.parts()]


def referenced(layout: Layout, latest: Latest | None) -> set[Path]:
    """Every path ``latest.json`` points to, and the model directory it names."""
    if latest is None:
        return set()
    model = {layout.data_dir / entry.path for entry in latest.model.values()}
    return {*model, *(p.parent for p in model), *table_files(layout, latest)}


def published_intact(layout: Layout, latest: Latest) -> bool:
    """True when every model file matches its sha256 in ``latest.json`` and every table file
    exists.
    """
    for entry in latest.model.values():
        path = layout.data_dir / entry.path
        if not path.is_file() or sha256_file(path) != entry.sha256:
            return False
    return all(p.is_file() for p in table_files(layout, latest))


def write_journal(
    work: Path, version: str, run_date: dt.date, parts: dict[str, int | None]
) -> None:
    """Record, before the first move, what a publish is about to put in place (None: one file, else
    a part count).
    """
    write_json(
        Path(work) / JOURNAL,
        {"model_version": version, "run_date": run_date.isoformat(), "tables": parts},
    )


def clear_journal(work: Path) -> None:
    (Path(work) / JOURNAL).unlink(missing_ok=True)


def planned_paths(layout: Layout, journal: dict[str, Any]) -> tuple[Path, dict[str, list[Path]]]:
    """(model directory, table part files) a journal's publish creates, rebuilt by :class:`Layout`
    (never read as paths).
    """
    version = str(journal["model_version"])
    run_date = dt.date.fromisoformat(str(journal["run_date"]))
    finals = {
        name: [layout.table(name, run_date, version)]
        if n is None
        else [layout.table(name, run_date, version, i) for i in range(int(n))]
        for name, n in journal["tables"].items()
    }
    return layout.model(version), finals


def _remove(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return True
    if path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
        return True
    return False


def _finish_or_roll_back(layout: Layout, journal_path: Path, latest: Latest | None) -> str:
    journal = read_json(journal_path)
    model_dir, finals = planned_paths(layout, journal)
    version = journal["model_version"]
    if latest is not None and latest.model_version == version:
        # committed: only the removal of older parts of these partitions was left
        for parts in finals.values():
            for other in parts[0].parent.glob("part-*.parquet"):
                if other not in parts:
                    other.unlink(missing_ok=True)
        note = (
            f"finished the publish of {version} that was interrupted after latest.json was written"
        )
    else:
        keep = referenced(layout, latest)
        removed = 0
        for path in [model_dir, *(p for parts in finals.values() for p in parts)]:
            if path not in keep:
                removed += _remove(path)
            if path != model_dir:
                removed += _remove(staged_name(path))
                with contextlib.suppress(OSError):
                    path.parent.rmdir()  # a partition directory this publish created, now empty
        live = latest.model_version if latest else None
        note = (
            f"rolled back the interrupted publish of {version} ({removed} paths removed; "
            f"latest.json still points to {live})"
        )
    journal_path.unlink(missing_ok=True)
    return note


def recover(layout: Layout) -> list[str]:
    """Make the data directory whole after a crash (see the module doc); return what was done."""
    notes = []
    latest = live_latest(layout)
    work_root = layout.data_dir / "work"
    for journal_path in sorted(work_root.glob(f"*/{JOURNAL}")) if work_root.is_dir() else []:
        try:
            notes.append(_finish_or_roll_back(layout, journal_path, latest))
        except (ValueError, KeyError, TypeError) as exc:
            notes.append(f"ignored the unreadable publish journal {journal_path} ({exc})")
            journal_path.unlink(missing_ok=True)
    roots = [layout.data_dir / name for name in _MANAGED if (layout.data_dir / name).is_dir()]
    debris = [p for root in roots for p in root.rglob(".*") if _DEBRIS.match(p.name)]
    for path in debris:
        _remove(path)
    if debris:
        notes.append(f"removed {len(debris)} temporary files of interrupted writes")
    return notes


def prune_work(layout: Layout, run_date: dt.date, keep: Path) -> None:
    """After a publish of ``run_date``: drop that date's other staging directories (superseded
    attempts).
    """
    for other in (layout.data_dir / "work").glob(f"{run_date.isoformat()}-*"):
        if other.is_dir() and other != Path(keep):
            shutil.rmtree(other, ignore_errors=True)


def prepare_work(layout: Layout, work: Path) -> list[str]:
    """Recover the data directory, then say whether the run resumes from an earlier run's
    ``work``.
    """
    notes = recover(layout)
    if Path(work).is_dir():
        notes.append(
            f"resuming the interrupted run from {work}: stages whose stored results and "
            "outputs still verify are reused"
        )
    return notes


def hint(exc: BaseException, work: Path | None) -> str:
    """What to do after a stage failed: re-run to resume, unless the input or the model itself is at
    fault.
    """
    if work is None or (isinstance(exc, TowerflowError) and not exc.rerun_helps):
        return ""
    return (
        f" (finished stages are kept in {work}: fix the cause and run the same command again to "
        "resume)"
    )
