"""Schemas are checked and versioned on write and read; writes are atomic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.store import schemas
from tasks.store.storage import atomic_path, read_json, read_table, write_json, write_table


def _recs(n: int = 3) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1] * n, pa.int64()),
            "rank": pa.array(range(1, n + 1), pa.int32()),
            "movie_id": pa.array(range(10, 10 + n), pa.int64()),
            "score": pa.array([0.9, 0.5, 0.1][:n], pa.float32()),
            "predicted_rating": pa.array([4.5, 3.5, 2.5][:n], pa.float32()),
            "model_version": pa.array(["v"] * n, pa.string()),
        }
    )


def test_round_trip_stamps_version(tmp_path: Path) -> None:
    path = write_table(tmp_path / "r.parquet", _recs(), schemas.RECOMMENDATIONS, "recommendations")
    meta = pq.read_schema(path).metadata
    assert meta[schemas.VERSION_KEY] == schemas.SCHEMA_VERSION.encode()
    assert meta[schemas.TABLE_KEY] == b"recommendations"
    assert read_table(path, schemas.RECOMMENDATIONS, "recommendations").num_rows == 3


def test_write_rejects_wrong_type_naming_column(tmp_path: Path) -> None:
    bad = _recs().set_column(1, "rank", pa.array([1, 2, 3], pa.int64()))
    with pytest.raises(schemas.SchemaError, match="'rank' has type int64, expected int32"):
        write_table(tmp_path / "r.parquet", bad, schemas.RECOMMENDATIONS, "recommendations")
    assert not list(tmp_path.iterdir())


def test_read_rejects_unversioned_file(tmp_path: Path) -> None:
    pq.write_table(_recs(), tmp_path / "plain.parquet")
    with pytest.raises(schemas.SchemaError, match="schema version <none>"):
        read_table(tmp_path / "plain.parquet", schemas.RECOMMENDATIONS, "recommendations")


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path) -> None:
    final = tmp_path / "out.json"
    write_json(final, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("crash mid-write")
    assert read_json(final) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_files_get_normal_permissions(tmp_path: Path) -> None:
    """mkstemp creates 0600 files; what downstream readers get must follow the umask like any
    file.
    """
    import os
    import stat

    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_every_io_task_has_the_one_retry_policy() -> None:
    """Tasks that read or write files retry twice on a transient I/O error only; training stages are
    not retried.
    """
    from prefect import Task

    from flows import incremental_tasks as incremental
    from flows import shard_tasks as shards
    from flows import stage_tasks as nightly
    from flows.runners import IO_RETRY, io_retry

    io_tasks: list[Task[Any, Any]] = [
        nightly.ingest_task, nightly.features_task, nightly.scalers_task, nightly.evaluate_task,
        nightly.drift_task, nightly.export_task, nightly.publish_task, shards.recommend_shard_task,
        shards.similar_shard_task, incremental.ingest_file_task,
    ]  # fmt: skip
    for task in io_tasks:
        assert (task.retries, task.retry_jitter_factor, task.retry_condition_fn) == (
            2,
            0.5,
            io_retry,
        ), task.name
        # settings, not measured times
        delays, policy = task.retry_delay_seconds, IO_RETRY["retry_delay_seconds"]
        assert delays == policy, task.name
    assert nightly.train_task.retries == 0 and nightly.refit_task.retries == 0


def test_json_written_is_strict_json_with_nan_as_null(tmp_path: Path) -> None:
    import json

    from tasks.store.storage import write_json

    path = write_json(
        tmp_path / "x.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2.5}}
    )
    assert json.loads(
        path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")
    ) == {
        "a": None,
        "b": [1.0, None],
        "c": {"d": 2.5},
    }
