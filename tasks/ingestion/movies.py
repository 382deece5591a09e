"""Ingest the MovieLens movie catalog (CSV, gzip CSV or Parquet) into the store.

The catalog is small and every rating is checked against it, so any bad row
here stops the run with an :class:`InputError` naming the file, line and
column. Titles may hold quotes, commas and any Unicode; a title without
``(YYYY)`` gets a null year; unknown genre names and ``(no genres listed)``
are kept (features ignore them) and counted.
"""

from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks.ingestion.checks import MAX_ID
from tasks.ingestion.ratings_csv import BLOCK, open_bytes, read_header
from tasks.ingestion.rejects import InputError
from tasks.preparation.features import NO_GENRES, unknown_genres
from tasks.store import schemas
from tasks.store.storage import write_table

MOVIE_COLUMNS = {"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()}
YEAR_RE = r"\((?P<year>[0-9]{4})(?:\s*[-\x{2013}]\s*[0-9]{4})?\)$"  # RE2, on the trimmed title


@dataclass(frozen=True)
class MovieStats:
    path: Path
    movies: int
    without_year: int
    without_genres: int
    unknown_genres: dict[str, int]


def _not_utf8(path: Path) -> str | None:
    """``<file>: line N: not UTF-8 text ...`` for the first line that does not decode, else
    ``None``.
    """
    with contextlib.closing(open_bytes(path)) as raw:
        for number, line in enumerate(raw, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (
                    f"{path}: line {number}, column {exc.start + 1}: not UTF-8 text (byte "
                    f"0x{line[exc.start]:02x}); save the file as UTF-8"
                )
    return None


def _locate(path: Path, record: int | None, expected: dict[str, pa.DataType]) -> str:
    """Find the first bad field (or the line of data record ``record``) by a plain csv scan."""
    if record is None and (bad := _not_utf8(path)):
        return bad
    with (
        contextlib.closing(open_bytes(path)) as raw,
        io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="") as fh,
    ):
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        cols = {name: header.index(name) for name in expected}
        i = -1
        for row in reader:
            if not row:
                continue
            i += 1
            line = reader.line_num
            if record is not None:
                if i == record:
                    return f"{path}: line {line}"
                continue
            if len(row) != len(header):
                return (
                    f"{path}: line {line}: {len(row)} fields, expected {len(header)} "
                    f"({','.join(header)})"
                )
            for name, col in cols.items():
                if pa.types.is_integer(expected[name]):
                    try:
                        int(row[col])
                    except ValueError:
                        return (
                            f"{path}: line {line}, column {name!r}: {row[col]!r} is not an integer"
                        )
    return f"{path}: unreadable CSV"


def _read_movies(src: Path) -> pa.Table:
    if src.suffix.lower() in {".parquet", ".pq"}:
        names = pq.read_schema(src).names
        missing = [c for c in MOVIE_COLUMNS if c not in names]
        if missing:
            raise InputError(f"{src}: missing column(s) {missing}; columns are {names}")
        table = pq.read_table(src, columns=list(MOVIE_COLUMNS))
        try:
            return table.cast(pa.schema(list(MOVIE_COLUMNS.items())))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(
                f"{src}: cannot read the movie columns as {list(MOVIE_COLUMNS.items())} ({exc})"
            ) from exc
    with contextlib.closing(open_bytes(src)) as fh:
        header = read_header(fh, src, tuple(MOVIE_COLUMNS))
        names = [name if name in MOVIE_COLUMNS else f"_extra{i}" for i, name in enumerate(header)]
        try:
            return pacsv.read_csv(
                fh,
                read_options=pacsv.ReadOptions(column_names=names, block_size=BLOCK),
                convert_options=pacsv.ConvertOptions(
                    column_types=MOVIE_COLUMNS,
                    include_columns=list(MOVIE_COLUMNS),
                    strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):  # nothing after the header
                return pa.schema(list(MOVIE_COLUMNS.items())).empty_table()
            raise InputError(_locate(src, None, MOVIE_COLUMNS)) from exc


def _bad_movie(path: Path, idx: int, column: str, value: object, why: str) -> InputError:
    parquet = path.suffix.lower() in {".parquet", ".pq"}
    where = f"row {idx + 1}" if parquet else _locate(path, idx, {}).split(": ", 1)[-1]
    return InputError(f"{path}: {where}, column {column!r}: {value!r} {why}")


def ingest_movies(src: Path, dest: Path) -> MovieStats:
    """Read the catalog, parse release years, count genre oddities, write the store table.

    Any bad catalog row stops the run: ratings are checked against this table.
    Titles may hold quotes, commas and any Unicode; a title without ``(YYYY)``
    gets a null year; unknown genre names and ``(no genres listed)`` are kept
    (features ignore them) and counted.
    """
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: movies file not found")
    table = _read_movies(src)
    if table.num_rows == 0:
        raise InputError(f"{src}: no movies (header only?)")
    ids = table.column("movieId")
    if ids.null_count:
        idx = int(np.argmax(ids.is_null().to_numpy(zero_copy_only=False)))
        raise _bad_movie(src, idx, "movieId", "", "is empty")
    values = ids.to_numpy()
    bad = (values < 1) | (values > MAX_ID)
    if bad.any():
        idx = int(np.argmax(bad))
        raise _bad_movie(src, idx, "movieId", int(values[idx]), f"is not an id in 1-{MAX_ID}")
    dup = pd.Series(values).duplicated().to_numpy()
    if dup.any():
        idx = int(np.argmax(dup))
        raise _bad_movie(src, idx, "movieId", int(values[idx]), "appears twice in the movie list")
    titles = table.column("title").fill_null("")
    genres = table.column("genres").fill_null("")
    years = pc.cast(
        pc.struct_field(pc.extract_regex(pc.utf8_trim_whitespace(titles), YEAR_RE), "year"),
        pa.int32(),
    )
    out = pa.table({"movie_id": ids, "title": titles, "genres": genres, "year": years})
    # by movie_id: the catalog's rows become the index's rows, and equal scores are ordered by row
    out = out.sort_by("movie_id")
    write_table(dest, out, schemas.MOVIES, "movies")
    no_genres = int(
        pc.sum(
            pc.is_in(pc.utf8_trim_whitespace(genres), value_set=pa.array(["", NO_GENRES]))
        ).as_py()
        or 0
    )
    odd = unknown_genres(genres)
    return MovieStats(dest, out.num_rows, years.null_count, no_genres, odd)
