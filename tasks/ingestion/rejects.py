"""Quarantine of malformed input rows: the rejects table, its reason codes and the reject-share
limit.

A ratings row that cannot be used is not dropped silently and does not stop
the run by itself: it is written, with its original fields as strings, the
source file, its 1-based line and a reason, to
``DIR/rejects/run_date=YYYY-MM-DD/part-<input-hash>.parquet`` (schema
:data:`tasks.store.schemas.REJECTS`). Only when the rejected share of the rows read
exceeds ``max_reject_share`` does the run fail, and the table is published
first so the message can point at it.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.errors import TowerflowError
from tasks.store import schemas
from tasks.store.storage import TableWriter

# Reason codes, in the order the checks run (a row gets the first that applies).
REASONS: dict[str, str] = {
    "wrong_field_count": (
        "the line has more or fewer fields than the header (a truncated last line lands here)"
    ),
    "line_too_long": (
        "the line is longer than the read block (16 MiB); it is skipped unread, its start is in "
        "`raw`"
    ),
    "missing_value": "a required field is empty",
    "not_an_integer": "userId, movieId or timestamp is not an integer",
    "not_a_number": "rating is not a number",
    "id_out_of_range": "userId or movieId is not in 1-2147483647 (zero, negative or overflowing)",
    "rating_nan": "rating is NaN",
    "rating_out_of_range": "rating is outside 0.5-5.0 stars (includes inf)",
    "rating_not_half_star": "rating is not a whole or half star",
    "timestamp_negative": "timestamp is before 1970-01-01",
    "timestamp_in_future": "timestamp is after the moment the ingest started",
    "unknown_movie": "movieId is not in the movies file",
}
FIELDS = ("userId", "movieId", "rating", "timestamp")
RAW_LIMIT = 4096  # characters of a rejected line kept in `raw`


class InputError(TowerflowError, ValueError):
    """An input file is malformed; the message names the file, line and column."""

    rerun_helps = False


class RejectThresholdError(InputError):
    """Too large a share of the rows was rejected; ``stats`` holds the ingest counts."""

    def __init__(self, message: str, stats: dict[str, object]):
        super().__init__(message)
        self.stats = stats


def rejects_path(data_dir: Path, run_date: dt.date, input_hash: str) -> Path:
    """``DIR/rejects/run_date=YYYY-MM-DD/part-<first 16 hex of the input hash>.parquet``."""
    return (
        Path(data_dir)
        / "rejects"
        / f"run_date={run_date.isoformat()}"
        / f"part-{input_hash[:16]}.parquet"
    )


def reject_table(
    source: str,
    lines: pa.Array,
    reasons: pa.Array,
    details: pa.Array,
    fields: dict[str, pa.Array] | None = None,
    raw: pa.Array | None = None,
) -> pa.Table:
    """Assemble rejected rows in the :data:`~tasks.store.schemas.REJECTS` layout (absent fields are
    null).
    """
    n = len(lines)
    null = pa.nulls(n, pa.string())
    columns = {
        "source_file": pa.array([source] * n, pa.string()),
        "line": lines.cast(pa.int64()),
        "reason": reasons,
        "detail": details,
        **{name: (fields[name] if fields else null) for name in FIELDS},
        "raw": raw if raw is not None else null,
    }
    return pa.table(columns, schema=schemas.REJECTS)


class RejectLog:
    """Streams rejected rows to the rejects table and keeps the counts by reason and the first
    reject.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.by_reason: Counter[str] = Counter()
        self.first: str | None = None
        self._writer = TableWriter(self.path, schemas.REJECTS, "rejects")

    @property
    def rows(self) -> int:
        return sum(self.by_reason.values())

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self.first is None:
            row = table.slice(0, 1).to_pylist()[0]
            self.first = f"{row['source_file']}: line {row['line']}, {row['detail']}"
        self.by_reason.update(dict(zip(*_value_counts(table.column("reason")), strict=True)))
        self._writer.write(table)

    def close(self) -> Path:
        """Publish the table (also when empty: every run has a rejects part)."""
        return self._writer.close()

    def abort(self) -> None:
        self._writer.abort()


def _value_counts(column: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    counts = column.value_counts()
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def check_share(
    source: Path, rows_read: int, log: RejectLog, max_share: float, stats: dict[str, object]
) -> None:
    """Raise :class:`RejectThresholdError` if more than ``max_share`` of ``rows_read`` were
    rejected.
    """
    rejected = log.rows
    share = rejected / rows_read if rows_read else 0.0
    if share <= max_share:
        return
    reasons = ", ".join(f"{reason} {count:,}" for reason, count in log.by_reason.most_common())
    raise RejectThresholdError(
        f"{source}: {rejected:,} of {rows_read:,} rows rejected ({share:.2%}), more than "
        f"max_reject_share {max_share:.2%} "
        f"({reasons}); first: {log.first}; all rejected rows are in {log.path}",
        stats,
    )


def report_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The ingest counts as rows of a two-column table (for the Prefect UI artifact)."""
    rows: list[dict[str, Any]] = [
        {"count": "rows read", "value": stats["rows_read"]},
        {"count": "rows accepted", "value": stats["rows_accepted"]},
        {"count": "rows rejected", "value": stats["rows_rejected"]},
        *(
            {"count": f"  rejected: {reason}", "value": n}
            for reason, n in stats.get("rejected_by_reason", {}).items()
        ),
        {
            "count": "duplicates dropped (older rating of a user and movie)",
            "value": stats["duplicates_dropped"],
        },
        {
            "count": "reject share",
            "value": f"{stats['reject_share']:.4%} (limit {stats['max_reject_share']:.2%})",
        },
        {"count": "rejects table", "value": stats.get("rejects_path")},
        {"count": "blank lines skipped", "value": stats.get("blank_lines", 0)},
        {"count": "users", "value": stats["users"]},
        {"count": "movies", "value": stats["movies"]},
        {"count": "movies without a year", "value": stats.get("movies_without_year", 0)},
        {"count": "movies without genres", "value": stats.get("movies_without_genres", 0)},
        *(
            {"count": f"  unknown genre: {genre}", "value": n}
            for genre, n in stats.get("unknown_genres", {}).items()
        ),
    ]
    return rows
