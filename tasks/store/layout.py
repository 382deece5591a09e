"""Where everything lives under the data directory.

    DIR/store/<input-hash>/{ratings,movies}.parquet   ingested inputs (incremental nights: all
                                                      parts combined)
    DIR/store/ingested.json, DIR/store/parts/<file-hash>/
                                                      the ledger and parts of incremental nights
    DIR/work/<model_version>/                         a run's staging area
    DIR/models/<model_version>/                       published model artifacts
    DIR/outputs/<table>/run_date=YYYY-MM-DD/part-<model_version>[-NNNNN].parquet
                                                      (one part per shard)
    DIR/outputs/reports/run_date=YYYY-MM-DD/          the run report and its plots (for people)
    DIR/outputs/history/night-<finished>-<date>-<outcome>.parquet
                                                      one row per night, whatever its outcome
    DIR/outputs/latest.json                           written last, atomically

Only validated values (a date, a hex hash) ever become part of a path.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.errors import ConfigError, DataError

if TYPE_CHECKING:
    from tasks.store.latest import FileEntry

TABLES = ("recommendations", "similar_movies", "metrics")
MODEL_FILES = {
    "keras": "model.keras",
    "scalers": "scalers.json",
    "user_features": "user_features.parquet",
    "movie_features": "movie_features.parquet",
    "index": "movie_index.faiss",
    "index_ids": "movie_index_ids.parquet",
    "movie_embeddings": "movie_embeddings.parquet",
    "user_embeddings": "user_embeddings.parquet",
    # how the served vectors read back as the towers' (tasks/serving/popularity.py)
    "serving": "serving.json",
    # the ingested catalog (titles, genres) the run served, copied at publish
    "movies": "movies.parquet",
}
_VERSION_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9a-f]{12}$")


def model_version(run_date: dt.date, content_hash: str) -> str:
    """``YYYY-MM-DD-<12 hex>``: the run date and a hash of the data and configuration."""
    version = f"{run_date.isoformat()}-{content_hash[:12]}"
    if not _VERSION_RE.match(version):
        raise ConfigError(f"bad model version {version!r}")
    return version


def _checked_version(version: str) -> str:
    """A model version as :func:`model_version` makes them; anything else (``..``, a slash) is
    refused.
    """
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ConfigError(f"bad model version {version!r}")
    return version


@dataclass(frozen=True)
class Layout:
    data_dir: Path

    @property
    def outputs(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def latest(self) -> Path:
        return self.outputs / "latest.json"

    @property
    def lock(self) -> Path:
        return self.data_dir / ".towerflow.lock"

    def store(self, input_hash: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{16,64}", input_hash):
            raise ConfigError(f"bad input hash {input_hash!r}")
        return self.data_dir / "store" / input_hash

    def work(self, version: str) -> Path:
        return self.data_dir / "work" / _checked_version(version)

    def model(self, version: str) -> Path:
        return self.data_dir / "models" / _checked_version(version)

    def partition(self, table: str, run_date: dt.date) -> Path:
        if table not in (*TABLES, "reports"):
            raise ConfigError(f"unknown table {table!r}; expected one of {TABLES}")
        if not isinstance(run_date, dt.date):
            raise ConfigError(f"bad run date {run_date!r}: expected a date")
        return self.outputs / table / f"run_date={run_date.isoformat()}"

    def table(self, table: str, run_date: dt.date, version: str, part: int | None = None) -> Path:
        """A table's part file: ``part-<version>.parquet``, or ``part-<version>-NNNNN.parquet`` for
        shard ``part``.
        """
        if table not in TABLES:
            raise ConfigError(f"unknown table {table!r}; expected one of {TABLES}")
        if part is not None and (not isinstance(part, int) or part < 0):
            raise ConfigError(f"bad part number {part!r}")
        suffix = "" if part is None else f"-{part:05d}"
        return self.partition(table, run_date) / f"part-{_checked_version(version)}{suffix}.parquet"

    @property
    def history_dir(self) -> Path:
        """Every night's row (tasks/store/nights.py), one part file each."""
        return self.outputs / "history"

    def reports(self, run_date: dt.date) -> Path:
        return self.partition("reports", run_date)


def verified(data_dir: Path, entry: FileEntry) -> Path:
    """The path of a model file listed in latest.json, after checking its sha256."""
    from tasks.store.storage import sha256_file

    path = Path(data_dir) / entry.path
    if not path.exists():
        raise FileNotFoundError(f"published model file missing: {path}")
    if sha256_file(path) != entry.sha256:
        raise DataError(
            f"{path}: sha256 does not match latest.json; the published model was modified"
        )
    return path
