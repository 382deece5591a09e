"""The nightly flow's parameters: one pydantic model, shown in the Prefect UI and stored with deployments."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field


class NightlyParams(BaseModel):
    """Parameters of one nightly run (shown in the Prefect UI)."""

    ratings: str | list[str] | None = Field(
        None, description="ratings.csv (or .parquet); several files or a drop folder: incremental (ledger); default: embedded"
    )
    movies: str | None = Field(None, description="movies.csv (or .parquet); default: the embedded data set")
    data_dir: str = Field("data", description="where the store, models and outputs live")
    run_date: dt.date | None = Field(None, description="partition date; default: today")
    k: int = Field(10, ge=1, le=1000, description="recommendations per user and similar movies per movie")
    preset: Literal["default", "balanced", "lab"] = Field(
        "default", description="model preset; 'lab' reproduces the course, 'balanced' trades ranking for RMSE"
    )
    seed: int = Field(42, description="seed of every random choice in training")
    holdout_fraction: float = Field(
        0.2, ge=0.0, lt=0.5, description="each user's most recent share of ratings held out to validate (0: no holdout, no gate)"
    )
    max_epochs: int | None = Field(None, ge=1, description="override the preset's epoch limit")
    warm_start: bool = Field(False, description="start from the published model's weights (tasks/warmstart.py)")
    warm_epochs: int | None = Field(None, ge=1, description="epochs of a warm start (default: a quarter of the preset's)")
    patience: int | None = Field(None, ge=1, description="early stopping patience in epochs (default: the preset's)")
    chunk_size: int = Field(4096, ge=1, description="users per top-k chunk (bounds memory)")
    shard_size: int = Field(50_000, ge=1, description="users (movies) per recommend (similar) task; shards run on the task runner")
    threads: int | None = Field(None, ge=1, description="CPU threads for TF, BLAS and FAISS; default: all cores")
    gate: bool = Field(True, description="refuse to publish a model worse, with confidence, than most-popular or the published model")
    gate_margin: float = Field(0.01, description="allowed NDCG@k drop below the published model before the gate refuses")
    max_reject_share: float = Field(
        0.01, ge=0.0, le=1.0, description="fail the run if more than this share of the ratings rows is rejected (see rejects/)"
    )
