"""Where everything lives under the data directory.

    DIR/store/<input-hash>/{ratings,movies}.parquet   ingested inputs
    DIR/work/<model_version>/                         a run's staging area
    DIR/models/<model_version>/                       published model artifacts
    DIR/outputs/<table>/run_date=YYYY-MM-DD/part-<model_version>.parquet
    DIR/outputs/latest.json                           written last, atomically

Only validated values (a date, a hex hash) ever become part of a path.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

TABLES = ("recommendations", "similar_movies", "metrics")
_VERSION_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9a-f]{12}$")


def model_version(run_date: dt.date, content_hash: str) -> str:
    """``YYYY-MM-DD-<12 hex>``: the run date and a hash of the data and configuration."""
    version = f"{run_date.isoformat()}-{content_hash[:12]}"
    if not _VERSION_RE.match(version):
        raise ValueError(f"bad model version {version!r}")
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
            raise ValueError(f"bad input hash {input_hash!r}")
        return self.data_dir / "store" / input_hash

    def work(self, version: str) -> Path:
        return self.data_dir / "work" / version

    def model(self, version: str) -> Path:
        return self.data_dir / "models" / version

    def table(self, table: str, run_date: dt.date, version: str) -> Path:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")
        return self.outputs / table / f"run_date={run_date.isoformat()}" / f"part-{version}.parquet"
