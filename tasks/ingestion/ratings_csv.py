"""Stream MovieLens ratings (CSV, gzip CSV or Parquet) as checked chunks with exact line numbers.

The file is read in blocks of ``block_size`` bytes cut at the last newline, so
the line each block starts at is known by counting newlines. A block is first
parsed by pyarrow with typed columns on all cores and checked with a few
vectorized tests (the fast path, which every clean block takes). Only a block
that fails a test is parsed again with string columns, one thread, and checked
row by row in vectorized form: bad rows become rejects carrying their line.

Assumptions, documented in the README: a ratings record is one physical line
(MovieLens never quotes ratings fields; a block whose records span lines is
re-read with quoting off), and lines end in ``\\n`` or ``\\r\\n``. Completely
empty lines are skipped and counted, not rows. Memory is one block (plus one
line of at most one block), whatever the file size.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks.ingestion.checks import Catalog, Checker
from tasks.ingestion.rejects import FIELDS, RAW_LIMIT, InputError, reject_table
from tasks.store import schemas

BLOCK = 1 << 24  # bytes read per block; also the longest line that is parsed
PARSE_BLOCK = 1 << 20  # pyarrow's block inside one of ours (lets it parse on every core)
TYPES = {
    "userId": pa.int64(),
    "movieId": pa.int64(),
    "rating": pa.float64(),
    "timestamp": pa.int64(),
}
EMPTY_ACCEPTED = schemas.RATINGS.empty_table()


@dataclass(frozen=True)
class Chunk:
    """One block's accepted rows (store schema), rejected rows (rejects schema) and skipped blank
    lines.
    """

    accepted: pa.Table
    rejects: pa.Table
    blank_lines: int = 0

    @property
    def rows(self) -> int:
        return int(self.accepted.num_rows + self.rejects.num_rows)


def open_bytes(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing gzip (recognised by its magic bytes)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    gzipped = magic == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")  # type: ignore[return-value]


def _read(fh: BinaryIO, path: Path, n: int, line: int, *, readline: bool = False) -> bytes:
    try:
        return fh.readline(n) if readline else fh.read(n)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(
            f"{path}: line {line}: compressed data is corrupt or cut short ({exc})"
        ) from exc


def read_header(
    fh: BinaryIO, path: Path, required: tuple[str, ...], max_line: int = BLOCK
) -> list[str]:
    """Read and check the header line; return the column names (BOM and line end removed)."""
    first = _read(fh, path, max_line + 1, 1, readline=True)
    if not first:
        raise InputError(f"{path}: empty file, expected a header line {','.join(required)}")
    if len(first) > max_line and not first.endswith(b"\n"):
        raise InputError(
            f"{path}: line 1: header longer than {max_line:,} bytes (is this a CSV file with "
            "newline line ends?)"
        )
    if first[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InputError(f"{path}: line 1: the file is UTF-16 text; save it as UTF-8")
    try:
        text = first.removeprefix(b"\xef\xbb\xbf").decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: line 1: not UTF-8 text (byte 0x{first[exc.start]:02x} at column "
            f"{exc.start + 1})"
        ) from exc
    names = [name.strip() for name in next(csv.reader([text]), [])]
    if not any(names):
        raise InputError(f"{path}: line 1 is empty, expected a header line {','.join(required)}")
    missing = [c for c in required if c not in names]
    if missing:
        seps = [s for s in (";", "\t", "|") if len(names) == 1 and s in text]
        hint = f" (is it comma-separated? the header looks {seps[0]!r}-separated)" if seps else ""
        raise InputError(f"{path}: line 1: missing column(s) {missing}; header is {names}{hint}")
    for name in required:
        if names.count(name) > 1:
            raise InputError(
                f"{path}: line 1: column {name!r} appears {names.count(name)} times in the header"
            )
    return names


@dataclass(frozen=True)
class _LongLine:
    line: int
    size: int
    head: bytes


def _blocks(
    fh: BinaryIO, path: Path, line: int, block: int
) -> Iterator[tuple[int, memoryview] | _LongLine]:
    """Yield (first line number, whole lines) per block.

    A line still unfinished after more than ``block`` bytes of it is skipped, read
    block by block and never held whole, and yielded as a :class:`_LongLine`.
    """
    rest = b""
    while True:
        data = _read(fh, path, block, line)
        if not data:
            if rest:
                yield line, memoryview(rest)
            return
        buf = rest + data if rest else data
        cut = buf.rfind(b"\n") + 1
        if cut:
            yield line, memoryview(buf)[:cut]
            line += buf.count(b"\n", 0, cut)
        rest = buf[cut:]
        if len(rest) > block:  # this line does not fit in a block: skip it without holding it
            size, head = len(rest), rest[:RAW_LIMIT]
            while True:
                more = _read(fh, path, block, line)
                end = more.find(b"\n")
                if not more or end >= 0:
                    break
                size += len(more)
            yield _LongLine(line, size + max(end, 0), head)
            line += 1
            rest = more[end + 1 :] if more and end >= 0 else b""
            if not more:
                return


class RatingsReader:
    """Iterate a ratings file as :class:`Chunk` s; file-level problems raise :class:`InputError`."""

    def __init__(
        self, path: Path, catalog: Catalog, now: int, movies_name: str, block_size: int = BLOCK
    ):
        self.path = Path(path)
        self.block_size = block_size
        self.checker = Checker(str(self.path), catalog, now, movies_name)

    def chunks(self) -> Iterator[Chunk]:
        if self.path.suffix.lower() in {".parquet", ".pq"}:
            yield from self._parquet_chunks()
            return
        with contextlib.closing(open_bytes(self.path)) as fh:
            header = read_header(fh, self.path, FIELDS, self.block_size)
            names = [name if name in FIELDS else f"_extra{i}" for i, name in enumerate(header)]
            for item in _blocks(fh, self.path, 2, self.block_size):
                if isinstance(item, _LongLine):
                    yield Chunk(EMPTY_ACCEPTED, self._long_line(item))
                    continue
                start, data = item
                fast = self._fast(data, names)
                yield (
                    Chunk(fast, self.checker.no_rejects)
                    if fast is not None
                    else self._slow(start, data, names)
                )

    def _fast(self, data: memoryview, names: list[str]) -> pa.Table | None:
        """Typed, multi-threaded parse; ``None`` unless every row of the block is valid."""
        invalid = 0

        def on_invalid(row: pacsv.InvalidRow) -> str:
            nonlocal invalid
            invalid += 1
            return "skip"

        try:
            table = pacsv.read_csv(
                pa.py_buffer(data),
                read_options=pacsv.ReadOptions(
                    column_names=names, block_size=PARSE_BLOCK, use_threads=True
                ),
                parse_options=pacsv.ParseOptions(
                    ignore_empty_lines=False, invalid_row_handler=on_invalid
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types=TYPES, include_columns=list(FIELDS), null_values=[""]
                ),
            )
        except pa.ArrowInvalid:
            return None
        if invalid:
            return None
        return self.checker.clean(table)

    def _slow(self, start: int, data: memoryview, names: list[str]) -> Chunk:
        """String parse of one block with physical line numbers; every bad row becomes a reject."""
        raw = np.frombuffer(data, dtype=np.uint8)
        n_lines = int(np.count_nonzero(raw == 10)) + int(len(raw) > 0 and raw[-1] != 10)
        for quoting in (True, False):
            bad: list[tuple[int | None, str, int]] = []
            table = self._parse_strings(start, data, names, quoting, bad)
            keep = np.ones(n_lines, dtype=bool)
            numbers = np.array([b[0] if b[0] is not None else 0 for b in bad], dtype=np.int64)
            if len(numbers) and (numbers.min() < 1 or numbers.max() > n_lines):
                continue
            keep[numbers - 1] = False
            if int(keep.sum()) == table.num_rows:  # one record per physical line
                break
        else:
            raise InputError(
                f"{self.path}: lines {start}-{start + n_lines - 1}: cannot match CSV records "
                "to lines (bare CR line ends?)"
            )
        lines = start + np.flatnonzero(keep)
        columns = {name: table.column(name).combine_chunks() for name in FIELDS}
        if not quoting:
            columns = {name: pc.utf8_trim(col, characters='"') for name, col in columns.items()}
        accepted, rejects, blank = self.checker.check(columns, lines, data, start)
        if bad:
            lines_bad = start + numbers - 1
            details = [
                f"{b[2]} fields, expected {len(names)}"
                + (" (truncated line?)" if b[2] < len(names) else "")
                for b in bad
            ]
            wrong = reject_table(
                str(self.path), pa.array(lines_bad), pa.array(["wrong_field_count"] * len(bad)),
                pa.array(details), raw=pa.array([b[1][:RAW_LIMIT] for b in bad], pa.string()),
            )  # fmt: skip
            rejects = pa.concat_tables([rejects, wrong]).sort_by("line")
        return Chunk(accepted, rejects, blank)

    def _parse_strings(
        self,
        start: int,
        data: memoryview,
        names: list[str],
        quoting: bool,
        bad: list[tuple[int | None, str, int]],
    ) -> pa.Table:
        def on_invalid(row: pacsv.InvalidRow) -> str:
            bad.append((row.number, row.text, row.actual_columns))
            return "skip"

        try:
            return pacsv.read_csv(
                pa.py_buffer(data),
                read_options=pacsv.ReadOptions(
                    column_names=names, block_size=data.nbytes + 1, use_threads=False
                ),
                parse_options=pacsv.ParseOptions(
                    ignore_empty_lines=False,
                    invalid_row_handler=on_invalid,
                    quote_char='"' if quoting else False,
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in FIELDS},
                    include_columns=list(FIELDS),
                    strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as exc:
            if "UTF8" in str(exc) or "UTF-8" in str(exc):
                raise self._utf8_error(start, data, names) from exc
            raise InputError(f"{self.path}: lines from {start}: unreadable CSV ({exc})") from exc

    def _utf8_error(self, start: int, data: memoryview, names: list[str]) -> InputError:
        required = [names.index(name) for name in FIELDS]
        for i, line in enumerate(bytes(data).split(b"\n")):
            fields = line.split(b",")
            for col in required:
                if col < len(fields):
                    try:
                        fields[col].decode("utf-8")
                    except UnicodeDecodeError as exc:
                        where = f"{self.path}: line {start + i}, column {names[col]!r}"
                        return InputError(
                            f"{where}: not UTF-8 text (byte 0x{fields[col][exc.start]:02x}); "
                            "save the file as UTF-8"
                        )
        return InputError(
            f"{self.path}: lines from {start}: not UTF-8 text; save the file as UTF-8"
        )

    def _long_line(self, item: _LongLine) -> pa.Table:
        hint = " (bare CR line ends?)" if b"\r" in item.head else ""
        detail = (
            f"line of {item.size:,} bytes, longer than the {self.block_size:,}-byte read "
            f"block{hint}"
        )
        raw = item.head.decode("utf-8", errors="replace")[:RAW_LIMIT]
        return reject_table(
            str(self.path),
            pa.array([item.line]),
            pa.array(["line_too_long"]),
            pa.array([detail]),
            raw=pa.array([raw]),
        )

    def _parquet_chunks(self) -> Iterator[Chunk]:
        """Parquet input: the same checks; ``line`` is the 1-based row number."""
        with pq.ParquetFile(self.path) as pf:
            names = pf.schema_arrow.names
            missing = [c for c in FIELDS if c not in names]
            if missing:
                raise InputError(f"{self.path}: missing column(s) {missing}; columns are {names}")
            offset = 0
            for batch in pf.iter_batches(batch_size=1 << 20, columns=list(FIELDS)):
                columns = {}
                for name in FIELDS:
                    col = batch.column(name)
                    try:
                        columns[name] = pc.fill_null(col.cast(pa.string()), "")
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        raise InputError(
                            f"{self.path}: column {name!r} has type {col.type}, expected "
                            f"{TYPES[name]}"
                        ) from exc
                lines = np.arange(offset + 1, offset + 1 + batch.num_rows, dtype=np.int64)
                accepted, rejects, _ = self.checker.check(columns, lines, None, 0)
                offset += batch.num_rows
                yield Chunk(accepted, rejects)
