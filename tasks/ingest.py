"""Ingest MovieLens ratings and movies (CSV as GroupLens publishes it, or Parquet).

Ratings are streamed block by block with pyarrow's CSV reader, checked, and
written to a Parquet store, so memory does not grow with the file. A bad value
stops the run with an :class:`InputError` that names the file, line and
column; no malformed row ends in a traceback.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks import schemas
from tasks.storage import TableWriter, read_table, write_table

RATING_COLUMNS = {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}
MOVIE_COLUMNS = {"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()}
YEAR_RE = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{4})?\)\s*$")


class InputError(ValueError):
    """An input file is malformed; the message names the file, line and column."""


@dataclass(frozen=True)
class IngestStats:
    rows_read: int
    rows_accepted: int
    duplicates_dropped: int
    unknown_movie_dropped: int
    users: int
    movies: int
    movies_without_year: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in {".parquet", ".pq"}


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        import gzip

        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _csv_header(path: Path, expected: dict[str, pa.DataType]) -> list[str]:
    try:
        with _open_text(path) as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: line 1: not UTF-8 text ({exc.reason})") from exc
    if not header:
        raise InputError(f"{path}: empty file, expected a header line {','.join(expected)}")
    missing = [c for c in expected if c not in header]
    if missing:
        hint = " (is it comma-separated?)" if len(header) == 1 else ""
        raise InputError(f"{path}: line 1: missing column(s) {missing}; header is {header}{hint}")
    return header


def _locate(path: Path, record: int | None, expected: dict[str, pa.DataType]) -> str:
    """Find the first bad field (or the field of data record ``record``) by a plain csv scan."""
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader)
        cols = {name: header.index(name) for name in expected}
        for i, row in enumerate(reader):
            if not row:
                continue
            line = reader.line_num
            if len(row) != len(header):
                return f"{path}: line {line}: {len(row)} fields, expected {len(header)} ({','.join(header)})"
            for name, col in cols.items():
                value = row[col]
                kind = expected[name]
                try:
                    if pa.types.is_integer(kind):
                        int(value)
                    elif pa.types.is_floating(kind):
                        float(value)
                except ValueError:
                    what = "an integer" if pa.types.is_integer(kind) else "a number"
                    return f"{path}: line {line}, column {name!r}: {value!r} is not {what}"
            if record is not None and i == record:
                return f"{path}: line {line}"
    return f"{path}: unreadable CSV"


def _csv_batches(path: Path, expected: dict[str, pa.DataType], block_size: int) -> Iterator[pa.RecordBatch]:
    _csv_header(path, expected)
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=block_size, use_threads=True),
            convert_options=pacsv.ConvertOptions(column_types=expected, include_columns=list(expected), strings_can_be_null=False),
        )
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            yield batch
    except pa.ArrowInvalid as exc:
        raise InputError(_locate(path, None, expected)) from exc


def _parquet_batches(path: Path, expected: dict[str, pa.DataType], block_rows: int) -> Iterator[pa.RecordBatch]:
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    missing = [c for c in expected if c not in names]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; columns are {names}")
    target = pa.schema([(n, t) for n, t in expected.items()])
    offset = 0
    for batch in pf.iter_batches(batch_size=block_rows, columns=list(expected)):
        try:
            yield pa.Table.from_batches([batch]).cast(target).to_batches()[0] if batch.num_rows else batch
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"{path}: rows {offset}-{offset + batch.num_rows}: cannot convert ({exc})") from exc
        offset += batch.num_rows


def _bad_row(path: Path, offset: int, idx: int, column: str, value: object, why: str) -> InputError:
    record = offset + idx
    where = f"row {record + 1}" if _is_parquet(path) else _locate(path, record, {}).split(": ", 1)[-1]
    return InputError(f"{path}: {where}, column {column!r}: {value!r} {why}")


def _check_ratings(batch: pa.RecordBatch, path: Path, offset: int) -> None:
    cols = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in RATING_COLUMNS}
    checks = [
        ("userId", cols["userId"] <= 0, "must be a positive id"),
        ("movieId", cols["movieId"] <= 0, "must be a positive id"),
        ("rating", ~((cols["rating"] >= 0.5) & (cols["rating"] <= 5.0)), "is outside 0.5-5.0 stars"),
        ("rating", (cols["rating"] * 2) % 1 != 0, "is not a whole or half star"),
        ("timestamp", cols["timestamp"] < 0, "is a negative timestamp"),
    ]
    for column, bad, why in checks:
        if bad.any():
            idx = int(np.argmax(bad))
            raise _bad_row(path, offset, idx, column, cols[column][idx].item(), why)


def ingest_movies(src: Path, dest: Path) -> tuple[Path, int, int]:
    """Read movies, parse release years, write the store table; return (path, movies, without year)."""
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: movies file not found")
    batches = _parquet_batches(src, MOVIE_COLUMNS, 1 << 20) if _is_parquet(src) else _csv_batches(src, MOVIE_COLUMNS, 1 << 24)
    table = pa.Table.from_batches(list(batches), schema=pa.schema(list(MOVIE_COLUMNS.items())))
    if table.num_rows == 0:
        raise InputError(f"{src}: no movies (header only?)")
    ids = table.column("movieId").to_numpy()
    if (ids <= 0).any():
        idx = int(np.argmax(ids <= 0))
        raise _bad_row(src, 0, idx, "movieId", int(ids[idx]), "must be a positive id")
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        idx = int(np.argmax(dup))
        raise _bad_row(src, 0, idx, "movieId", int(ids[idx]), "appears twice in the movie list")
    titles = table.column("title").to_pylist()
    years = [int(m.group(1)) if (m := YEAR_RE.search(t.strip())) else None for t in titles]
    out = pa.table(
        {
            "movie_id": table.column("movieId"),
            "title": table.column("title"),
            "genres": table.column("genres"),
            "year": pa.array(years, type=pa.int32()),
        }
    )
    write_table(dest, out, schemas.MOVIES, "movies")
    return dest, out.num_rows, sum(y is None for y in years)


def ingest_ratings(src: Path, movies_path: Path, dest: Path, block_size: int = 1 << 24) -> IngestStats:
    """Stream ratings into the store; drop ratings of unknown movies and older duplicates (counted)."""
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: ratings file not found")
    catalog = read_table(movies_path, schemas.MOVIES, "movies", columns=["movie_id"]).column("movie_id")
    batches = _parquet_batches(src, RATING_COLUMNS, 1 << 20) if _is_parquet(src) else _csv_batches(src, RATING_COLUMNS, block_size)
    writer = TableWriter(dest, schemas.RATINGS, "ratings")
    read = unknown = 0
    try:
        for batch in batches:
            _check_ratings(batch, src, read)
            read += batch.num_rows
            known = pc.is_in(batch.column("movieId"), value_set=catalog)
            unknown += batch.num_rows - pc.sum(known).as_py() if batch.num_rows else 0
            kept = pa.Table.from_batches([batch]).filter(known)
            writer.write(
                pa.table(
                    {
                        "user_id": kept.column("userId"),
                        "movie_id": kept.column("movieId"),
                        "rating": kept.column("rating").cast(pa.float32()),
                        "timestamp": kept.column("timestamp"),
                    }
                )
            )
        writer.close()
    except BaseException:
        writer.abort()
        raise
    if read == 0:
        raise InputError(f"{src}: no ratings (header only?)")
    duplicates = _drop_duplicates(dest)
    store = pq.read_table(dest, columns=["user_id", "movie_id"])
    return IngestStats(
        rows_read=read,
        rows_accepted=store.num_rows,
        duplicates_dropped=duplicates,
        unknown_movie_dropped=int(unknown),
        users=len(pc.unique(store.column("user_id"))),
        movies=len(catalog),
        movies_without_year=0,
    )


def _drop_duplicates(path: Path) -> int:
    """Keep only the latest rating of each (user, movie); rewrite the store if any were dropped."""
    table = pq.read_table(path)
    key = table.column("user_id").to_numpy() * (1 << 32) + table.column("movie_id").to_numpy()
    ts = table.column("timestamp").to_numpy()
    order = np.lexsort((np.arange(len(key)), ts, key))
    last = np.ones(len(key), dtype=bool)
    last[:-1] = key[order][1:] != key[order][:-1]
    dropped = int(len(key) - last.sum())
    if dropped:
        keep = np.sort(order[last])
        write_table(path, table.take(pa.array(keep)), schemas.RATINGS, "ratings")
    return dropped


def ingest(ratings_src: Path, movies_src: Path, store_dir: Path) -> tuple[Path, Path, IngestStats]:
    """Ingest movies then ratings into ``store_dir``; return both store paths and the counts."""
    store_dir = Path(store_dir)
    movies_path, _, no_year = ingest_movies(Path(movies_src), store_dir / "movies.parquet")
    stats = ingest_ratings(Path(ratings_src), movies_path, store_dir / "ratings.parquet")
    return store_dir / "ratings.parquet", movies_path, IngestStats(**{**stats.to_dict(), "movies_without_year": no_year})
