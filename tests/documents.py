"""Valid documents for tests that need one and care about a few of its fields."""

from __future__ import annotations

from typing import Any

from tasks.store import schemas
from tasks.store.latest import Latest

# the secret key of the s3 fixture (conftest.py): never written anywhere
S3_SECRET = "towerflow-test-secret-key"

# What the nightly flow adds to latest.json besides the tables and model files
# (tasks.store.latest.Latest).
NIGHT_FIELDS: dict[str, Any] = {
    "inputs": {"ratings": "ratings.csv", "movies": "movies.csv", "sha256": "0" * 64},
    "k": 5,
    "preset": "default",
    "ingest": {},
    "training": {"val_rmse": None, "best_epoch": 1, "epochs_run": 1, "refit_epochs": 1},
    "config": {},
    "threads": 1,
    "gate": {"verdict": "passed"},
    "popularity_prior": {"weight": 0.0},
    "timings": {},
}


def a_latest(**fields: Any) -> Latest:
    """A valid latest.json document with ``fields`` set (everything else a plausible default)."""
    core: dict[str, Any] = {"schema_version": schemas.SCHEMA_VERSION, "run_date": "2026-01-02"}
    core |= {"model_version": "2026-01-02-000000000000"}
    core |= {"published_at": "2026-01-02T00:00:00+00:00", "tables": {}, "model": {}}
    return Latest.parse({**core, **NIGHT_FIELDS, **fields}, "a test document")
