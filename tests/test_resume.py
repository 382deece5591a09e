"""Crash safety in process: a publish cut at every step, the cache records a resume may reuse, paths
input cannot steer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows import caching
from tasks import faults
from tasks.serving.publish import run_publish
from tasks.store import resume
from tasks.store.latest import Latest
from tasks.store.layout import MODEL_FILES, Layout
from tests.documents import NIGHT_FIELDS

D1, D2 = dt.date(2026, 1, 2), dt.date(2026, 1, 3)
INPUT_HASH = "ab" * 32
POINTS = [
    "publish:model-moved",
    "publish:tables-staged",
    "publish:tables-visible",
    "write:latest.json",
    "publish:committed",
]


class SimulatedCrash(BaseException):
    """Stands in for SIGKILL in process (a BaseException: no `except Exception` in the way)."""


def _crash() -> None:
    raise SimulatedCrash


def _version(run_date: dt.date, tag: str) -> str:
    return f"{run_date.isoformat()}-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"


def _stage(layout: Layout, version: str, marker: str) -> tuple[Path, dict[str, str | list[str]]]:
    """A work directory as the stages leave it: a model directory, two sharded tables and a metrics
    file.
    """
    work = layout.work(version)
    model = work / "model"
    model.mkdir(parents=True)
    for key, name in MODEL_FILES.items():
        if key != "movies":  # copied from the store by publish
            (model / name).write_bytes(f"{key} {marker}".encode())
    tables: dict[str, str | list[str]] = {}
    for name in ("recommendations", "similar_movies"):
        parts = []
        for i in range(2):
            path = work / name / f"part-{i}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"marker": [marker], "shard": [i]}), path)
            parts.append(str(path))
        tables[name] = parts
    pq.write_table(pa.table({"marker": [marker]}), work / "metrics.parquet")
    tables["metrics"] = str(work / "metrics.parquet")
    return model, tables


EXTRA: dict[str, Any] = {
    **NIGHT_FIELDS,
    "inputs": {"ratings": "ratings.csv", "movies": "movies.csv", "sha256": INPUT_HASH},
}


def _publish(layout: Layout, run_date: dt.date, version: str, marker: str) -> dict[str, Any]:
    model, tables = _stage(layout, version, marker)
    return run_publish(layout, run_date, version, model, tables, EXTRA).document()


def _view(layout: Layout) -> dict[str, str]:
    """What readers see: every visible file under outputs/ and models/, by content."""
    out = {}
    for root in (layout.outputs, layout.data_dir / "models"):
        for f in sorted(root.rglob("*")):
            if f.is_file() and not any(
                p.startswith(".") for p in f.relative_to(layout.data_dir).parts
            ):
                out[str(f.relative_to(layout.data_dir))] = hashlib.sha256(
                    f.read_bytes()
                ).hexdigest()
    return out


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "data")
    store = layout.store(INPUT_HASH)
    store.mkdir(parents=True)
    (store / "movies.parquet").write_bytes(b"the catalog")
    _publish(layout, D1, _version(D1, "old"), "old")
    return layout


@pytest.mark.parametrize("same_date", [False, True], ids=["next-date", "same-date"])
@pytest.mark.parametrize("point", POINTS)
def test_publish_cut_at_any_step_keeps_or_completes_what_latest_points_to(
    layout: Layout, point: str, same_date: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, latest_before = _view(layout), layout.latest.read_bytes()
    run_date = D1 if same_date else D2
    new = _version(run_date, "new")
    model, tables = _stage(layout, new, "new")
    monkeypatch.setenv(faults.ENV, point)
    monkeypatch.setattr(faults, "kill", _crash)
    with pytest.raises(SimulatedCrash):
        run_publish(layout, run_date, new, model, tables, EXTRA)
    monkeypatch.delenv(faults.ENV)
    live = json.loads(layout.latest.read_bytes())
    assert resume.published_intact(layout, Latest.parse(live, "test"))
    if point == "publish:committed":
        assert live["model_version"] == new
    else:
        assert layout.latest.read_bytes() == latest_before
        shown = {k for k in _view(layout) if k not in before and not k.startswith("models/")}
        # parts become visible only by the renames just before latest.json is written
        assert bool(shown) == (point in {"publish:tables-visible", "write:latest.json"})
        assert {k: v for k, v in _view(layout).items() if k in before} == before
    notes = resume.recover(layout)
    assert not list((layout.data_dir / "work").glob(f"*/{resume.JOURNAL}"))
    # no temporaries, no staged parts
    assert not [p for p in layout.data_dir.rglob(".*") if p.name != ".results"]
    if point == "publish:committed":
        assert "finished the publish" in notes[0]
        for info in live["tables"].values():  # the older parts of the same partitions are gone
            partition = layout.data_dir / info["path"]
            assert sorted(
                str(p.relative_to(layout.data_dir)) for p in partition.iterdir()
            ) == sorted(info["files"])
    else:
        assert "rolled back the interrupted publish" in notes[0]
        assert _view(layout) == before and layout.latest.read_bytes() == latest_before
        assert not (
            layout.outputs / "recommendations" / f"run_date={D2}"
        ).exists()  # no empty partition left


def test_republishing_the_live_version_touches_nothing(layout: Layout) -> None:
    live = json.loads(layout.latest.read_bytes())
    version = live["model_version"]
    before = _view(layout)
    assert _publish(layout, D1, version, "again") == live  # same version, intact: kept as it is
    assert _view(layout) == before
    work = layout.work(version)
    assert (work / "model").is_dir()  # left staged; the flow removes its work directory itself
    (
        layout.data_dir / live["model"]["index"]["path"]
    ).unlink()  # not intact any more: published again
    (work / "model").rename(work / "model-unused")
    again = _publish(layout, D1, version, "fixed")
    assert again["model_version"] == version and again["published_at"] >= live["published_at"]
    assert (
        resume.published_intact(layout, Latest.parse(again, "test"))
        and (layout.data_dir / again["model"]["index"]["path"]).read_bytes() == b"index fixed"
    )


def _record(path: Path, result: dict[str, Any], serializer: str = "json") -> Path:
    body = {
        "metadata": {"serializer": {"type": serializer, "jsonlib": "json", "object_decoder": None}},
        "result": json.dumps(result),
    }
    path.write_text(json.dumps(body))
    return path


def test_a_stored_stage_result_counts_only_while_its_outputs_verify(tmp_path: Path) -> None:
    out = tmp_path / "model.keras"
    out.write_bytes(b"weights")
    manifest = caching.output_manifest({"model": str(out), "epochs": 3}, [])
    assert manifest == {str(out): hashlib.sha256(b"weights").hexdigest()}
    record = _record(tmp_path / "stage-1", {"model": str(out), caching.MANIFEST: manifest})
    assert caching.stale_reason(record) is None
    out.write_bytes(b"other weights")
    assert "changed since the stage wrote it" in (caching.stale_reason(record) or "")
    out.unlink()
    assert "no longer exists" in (caching.stale_reason(record) or "")
    assert "not towerflow's plain JSON" in (
        caching.stale_reason(_record(tmp_path / "stage-2", {}, "pickle")) or ""
    )
    (tmp_path / "stage-3").write_text('{"metadata": {"serial')  # cut short by a crash
    assert "unreadable" in (caching.stale_reason(tmp_path / "stage-3") or "")
    assert "unreadable" in (
        caching.stale_reason(_record(tmp_path / "stage-4", {"no": "manifest"})) or ""
    )


def test_inputs_count_by_content_and_hidden_temporaries_do_not(tmp_path: Path) -> None:
    d = tmp_path / "features"
    d.mkdir()
    (d / "user_features.parquet").write_bytes(b"a")
    first = caching.fingerprint({"dir": str(d), "k": 5})
    (d / ".user_features.parquet.x1y2z3.tmp").write_bytes(b"half")  # a killed write's temporary
    assert caching.fingerprint({"dir": str(d), "k": 5}) == first
    (d / "user_features.parquet").write_bytes(b"b")
    assert caching.fingerprint({"dir": str(d), "k": 5}) != first
    assert caching.fingerprint("not/a/path") == "not/a/path"


def test_code_version_covers_lazily_imported_modules() -> None:
    names = {
        str(p.relative_to(Path(caching.__file__).resolve().parent.parent))
        for p in caching.code_files()
    }
    assert {
        "flows/nightly.py",
        "tasks/modeling/fitting.py",
        "tasks/preparation/phases.py",
        "tasks/modeling/train.py",
        "tasks/modeling/model.py",
        "tasks/serving/publish.py",
    } <= names
    assert len(caching.code_version()) == 64


def test_json_results_refuse_objects_they_cannot_write_plainly() -> None:
    import numpy as np

    assert json.loads(caching.SERIALIZER.dumps({"x": np.float32(0.5), "p": Path("/a")})) == {
        "x": 0.5,
        "p": "/a",
    }
    assert json.loads(caching.SERIALIZER.dumps(ValueError("bad"))) == {
        "exception": "ValueError",
        "message": "bad",
    }
    with pytest.raises(TypeError):
        caching.SERIALIZER.dumps({"f": object()})


@pytest.mark.parametrize(
    "version",
    ["../x", "2026-01-02-../../etc", "2026-01-02-ABCDEF012345", "", "2026-01-02-0123456789ab/x"],
)
def test_layout_refuses_versions_that_are_not_hashes(tmp_path: Path, version: str) -> None:
    layout = Layout(tmp_path)
    for build in (layout.work, layout.model, lambda v: layout.table("recommendations", D1, v)):
        with pytest.raises(ValueError, match="bad model version"):
            build(version)


def test_layout_refuses_dates_and_parts_that_are_not_what_they_say(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    with pytest.raises(ValueError, match="bad run date"):
        layout.partition("recommendations", "../../x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bad part number"):
        layout.table("recommendations", D1, _version(D1, "x"), -1)
    with pytest.raises(ValueError, match="unknown table"):
        layout.table("../etc", D1, _version(D1, "x"))


@pytest.mark.parametrize("run_date", ["../../x", "2026-13-01", "2026-01-02/../../x", "tomorrow"])
def test_a_bad_run_date_stops_before_anything_is_written(
    tmp_path: Path, run_date: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pydantic import ValidationError

    from flows.cli import main
    from flows.params import NightlyParams

    with pytest.raises(SystemExit) as stop:
        main(["run", "--data-dir", str(tmp_path / "data"), "--run-date", run_date])
    assert stop.value.code == 2 and "--run-date must be YYYY-MM-DD" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
    with pytest.raises(ValidationError):
        NightlyParams.model_validate({"run_date": run_date})


def test_a_failed_stage_says_how_to_resume_unless_input_or_gate_is_at_fault(tmp_path: Path) -> None:
    from tasks.evaluation.quality import QualityGateError
    from tasks.ingestion.rejects import InputError

    work = tmp_path / "work" / _version(D1, "x")
    assert resume.hint(OSError("No space left on device"), work) == (
        f" (finished stages are kept in {work}: fix the cause and run the same command again "
        "to resume)"
    )
    assert resume.hint(InputError("ratings.csv: line 3 ..."), work) == ""
    assert resume.hint(QualityGateError("quality gate: ..."), work) == ""
    assert resume.hint(OSError("before the version is known"), None) == ""


def test_the_resume_hint_is_offered_only_where_a_rerun_can_help(tmp_path: Path) -> None:
    from tasks.errors import DataError
    from tasks.evaluation.quality import QualityGateError
    from tasks.ingestion.rejects import InputError

    work = tmp_path / "work" / "v"
    for helpless in (InputError("ratings.csv line 3, column 2: ..."), QualityGateError("worse")):
        assert resume.hint(helpless, work) == ""
    for fixable in (OSError("disk full"), DataError("too few ratings"), RuntimeError("a bug")):
        assert f"finished stages are kept in {work}" in resume.hint(fixable, work)
    assert resume.hint(OSError("disk full"), None) == ""
