"""``outputs/latest.json`` as one typed, versioned document: built by the publish stage, read by one
reader.

Why: latest.json is what schedulers, downstream jobs, the library and the next night read first;
read as a loose dict in several modules, a renamed key failed far from its cause. :class:`Latest` is
the one definition of its shape (docs/contract.md describes it for users): every write validates it,
and
:func:`read_latest` checks the schema version and the shape before anyone reads a field. The nested
measurement documents (metrics, gate, drift, ingest, config, prior) stay plain JSON objects: their
shapes belong to the stages that measure them.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from tasks.errors import DataError
from tasks.store import schemas
from tasks.store.storage import read_json, write_json


class FileEntry(BaseModel):
    """A published file: its path under the data directory and its sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    sha256: str


class TableEntry(BaseModel):
    """A published table: its partition directory, its part files (runs before sharding name none)
    and rows.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    files: list[str] = []
    rows: int

    def parts(self) -> list[str]:
        """The part files, relative to the data directory."""
        return self.files or [self.path]


class InputsDoc(BaseModel):
    """The night's input files and the hash of what was ingested (names ``store/<sha256>/``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ratings: str | list[str]
    movies: str
    sha256: str


class TrainingDoc(BaseModel):
    """How the published model was trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    val_rmse: float | None
    best_epoch: int
    epochs_run: int
    refit_epochs: int
    warm_start: Any = None
    # the MSE weights the night tried and the one it kept (tasks/evaluation/selection.py)
    loss_choice: dict[str, Any] | None = None


class Latest(BaseModel):
    """The document ``outputs/latest.json`` holds (schema version
    :data:`tasks.store.schemas.SCHEMA_VERSION`).

    Keys this towerflow does not know (a later one's additions) are kept as they are, so reading
    never loses them.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    schema_version: str
    run_date: str
    model_version: str
    published_at: str
    tables: dict[str, TableEntry]
    model: dict[str, FileEntry]
    preset: str
    k: int
    inputs: InputsDoc
    ingest: dict[str, Any]
    training: TrainingDoc
    config: dict[str, Any]
    # the night's business rules (tasks/serving/rules.py); older runs had none
    rules: dict[str, Any] | None = None
    threads: int
    metrics: dict[str, Any] | None = None
    gate: dict[str, Any]
    popularity_prior: dict[str, Any]
    drift: dict[str, Any] | None = None
    timings: dict[str, float]
    reused_stages: list[str] = []

    @field_validator("schema_version")
    @classmethod
    def _this_version(cls, value: str) -> str:
        if value != schemas.SCHEMA_VERSION:
            raise ValueError(
                f"schema version {value}, this towerflow reads {schemas.SCHEMA_VERSION}"
            )
        return value

    @field_validator("run_date")
    @classmethod
    def _a_date(cls, value: str) -> str:
        dt.date.fromisoformat(value)
        return value

    @property
    def date(self) -> dt.date:
        return dt.date.fromisoformat(self.run_date)

    def document(self) -> dict[str, Any]:
        """The JSON object written to latest.json."""
        return self.model_dump(mode="json")

    def write(self, path: Path) -> Path:
        """Write atomically (a temporary file, then a rename)."""
        return write_json(Path(path), self.document())

    @classmethod
    def parse(cls, data: Any, where: str) -> Latest:
        """Validate a latest.json document; the error names ``where`` and what is wrong."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}"
                for e in exc.errors()[:3]
            )
            raise DataError(
                f"{where}: not a latest.json this towerflow reads ({problems})"
            ) from None


def latest_path(data_dir: Path) -> Path:
    return Path(data_dir) / "outputs" / "latest.json"


def read_latest(data_dir: Path) -> Latest:
    """The validated ``outputs/latest.json`` of ``data_dir``; a clear error if nothing is published
    yet.
    """
    path = latest_path(data_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"no published run in {data_dir} ({path} does not exist); run `towerflow run "
            f"--data-dir {data_dir}` first"
        )
    return Latest.parse(read_json(path), str(path))


def live_latest(data_dir: Path) -> Latest | None:
    """The validated latest.json, or None when nothing is published."""
    return read_latest(data_dir) if latest_path(data_dir).exists() else None


def comparable_latest(data_dir: Path) -> Latest | None:
    """The published run a night compares itself with and builds on: None when nothing is published,
    or when what is published is a latest.json this towerflow does not read (another schema
    version). The night then publishes over it, as over an empty directory; the library and the
    commands refuse it instead.
    """
    try:
        return live_latest(data_dir)
    except DataError:
        return None
