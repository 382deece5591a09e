"""The row checks of ratings ingest, vectorized: a fast all-clean test and a per-row reject pass.

:meth:`Checker.clean` looks at a typed block and says whether every row is
valid; :meth:`Checker.check` takes the same rows as strings and splits them
into accepted rows and rejects with a reason (:data:`tasks.ingestion.rejects.REASONS`).
Both accept exactly the same rows: ids in 1-2147483647, a rating that is a
whole or half star in 0.5-5.0, a timestamp from 0 up to the ingest time, a
movie in the catalog, numbers written as pyarrow's CSV reader parses them.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.ingestion.rejects import FIELDS, reject_table
from tasks.store import schemas

# int32 ids, as MovieLens, Spark ALS and implicit use; keeps (user, movie) in one int64
MAX_ID = 2**31 - 1
INT_RE = r"^-?(?:[0-9]+|0[xX][0-9a-fA-F]+)$"
FLOAT_RE = r"^[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan))$"
# longer (sign included) may overflow int64; such values are out of range for ids and timestamps
# anyway
INT_DIGITS = 18


class Catalog:
    """Membership test for movie ids: a dense bitmap for ids below 2**24, else a sorted array."""

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
        self.size = len(ids)
        top = int(ids.max()) if len(ids) else 0
        self._dense: np.ndarray | None = None
        self._sorted = np.unique(ids)
        if 0 <= top < 1 << 24 and (ids >= 0).all():
            self._dense = np.zeros(top + 2, dtype=bool)
            self._dense[ids] = True

    def known(self, movie_ids: np.ndarray) -> np.ndarray:
        if self._dense is not None:
            return np.asarray(self._dense[np.clip(movie_ids, 0, len(self._dense) - 1)], dtype=bool)
        pos = np.minimum(np.searchsorted(self._sorted, movie_ids), max(len(self._sorted) - 1, 0))
        return (
            self._sorted[pos] == movie_ids
            if len(self._sorted)
            else np.zeros(len(movie_ids), dtype=bool)
        )


def _store_table(user: object, movie: object, rating: object, timestamp: object) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(user, pa.int64()) if isinstance(user, np.ndarray) else user,
            "movie_id": pa.array(movie, pa.int64()) if isinstance(movie, np.ndarray) else movie,
            "rating": pa.array(rating, pa.float32())
            if isinstance(rating, np.ndarray)
            else pc.cast(rating, pa.float32()),
            "timestamp": pa.array(timestamp, pa.int64())
            if isinstance(timestamp, np.ndarray)
            else timestamp,
        },
        schema=schemas.RATINGS,
    )


def _parse(values: pa.Array, present: np.ndarray, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    """Parse trimmed strings; return (values, well-formed mask). Overlong integers become +-int64
    max.
    """
    ok = present & pc.match_substring_regex(values, INT_RE if integer else FLOAT_RE).to_numpy(
        zero_copy_only=False
    )
    out = np.zeros(len(values), dtype=np.int64 if integer else np.float64)
    take = ok.copy()
    if integer:
        long = ok & (pc.utf8_length(values).to_numpy(zero_copy_only=False) > INT_DIGITS)
        negative = pc.starts_with(values, "-").to_numpy(zero_copy_only=False)
        out[long] = np.where(negative[long], np.iinfo(np.int64).min, np.iinfo(np.int64).max)
        take &= ~long
    idx = np.flatnonzero(take)
    if len(idx):
        target = pa.int64() if integer else pa.float64()
        try:
            out[idx] = pc.cast(values.take(pa.array(idx)), target).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, OverflowError):
            # the regex let through something pyarrow refuses: go value by value
            for i in idx:
                try:
                    out[i] = pc.cast(values.slice(int(i), 1), target)[0].as_py()
                except (pa.ArrowInvalid, OverflowError):
                    ok[i] = False
    return out, ok


class Checker:
    """Checks rating rows of one source file against the catalog and the ingest time ``now`` (epoch
    seconds).
    """

    def __init__(self, source: str, catalog: Catalog, now: int, movies_name: str):
        self.source = source
        self.catalog = catalog
        self.now = now
        self.no_rejects = schemas.REJECTS.empty_table()
        when = dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds")
        self.why = {
            "not_an_integer": "is not an integer",
            "not_a_number": "is not a number",
            "id_out_of_range": f"is not an id in 1-{MAX_ID}",
            "rating_nan": "is not a rating (NaN)",
            "rating_out_of_range": "is outside 0.5-5.0",
            "rating_not_half_star": "is not a whole or half star",
            "timestamp_negative": "is a negative timestamp",
            "timestamp_in_future": f"is after the ingest time {when} ({now})",
            "unknown_movie": f"is not in {movies_name}",
        }

    def clean(self, table: pa.Table) -> pa.Table | None:
        """The block as a store table if every row passes every check, else ``None`` (zero-copy, per
        pyarrow chunk).
        """
        if table.num_rows == 0 or any(col.null_count for col in table.columns):
            return None
        for name in ("userId", "movieId"):
            low, high = pc.min_max(table.column(name)).values()
            if not (low.as_py() >= 1 and high.as_py() <= MAX_ID):
                return None
        low, high = pc.min_max(table.column("timestamp")).values()
        if not (low.as_py() >= 0 and high.as_py() <= self.now):
            return None
        for chunk in table.column("rating").chunks:
            r = chunk.to_numpy()
            twice = r * 2.0
            if not (r.min() >= 0.5 and r.max() <= 5.0 and np.array_equal(np.rint(twice), twice)):
                return None
        if not all(
            self.catalog.known(chunk.to_numpy()).all() for chunk in table.column("movieId").chunks
        ):
            return None
        return _store_table(
            table.column("userId"),
            table.column("movieId"),
            table.column("rating"),
            table.column("timestamp"),
        )

    def check(
        self, columns: dict[str, pa.Array], lines: np.ndarray, data: memoryview | None, start: int
    ) -> tuple[pa.Table, pa.Table, int]:
        """Split string rows into (accepted store table, rejects table, blank lines skipped)."""
        trimmed = {name: pc.utf8_trim(col, characters=" \t") for name, col in columns.items()}
        empty = {
            name: pc.equal(col, "").to_numpy(zero_copy_only=False) for name, col in trimmed.items()
        }
        blank = np.logical_and.reduce([empty[name] for name in FIELDS])
        if data is not None and blank.any():
            blank &= _blank_lines(data, lines - start)
        else:
            blank[:] = False
        n_blank = int(blank.sum())
        if n_blank:
            keep = pa.array(~blank)
            columns = {name: col.filter(keep) for name, col in columns.items()}
            trimmed = {name: col.filter(keep) for name, col in trimmed.items()}
            empty = {name: mask[~blank] for name, mask in empty.items()}
            lines = lines[~blank]
        code = np.zeros(len(lines), dtype=np.int8)
        groups: list[tuple[str, str, np.ndarray]] = []

        def flag(reason: str, column: str, mask: np.ndarray) -> None:
            new = mask & (code == 0)
            if new.any():
                code[new] = len(groups) + 1
                groups.append((reason, column, new))

        values = {}
        for name in FIELDS:
            integer = name != "rating"
            values[name], ok = _parse(trimmed[name], ~empty[name], integer)
            flag("missing_value", name, empty[name])
            flag("not_an_integer" if integer else "not_a_number", name, ~ok)
            if name in ("userId", "movieId"):
                flag("id_out_of_range", name, (values[name] < 1) | (values[name] > MAX_ID))
        r, t = values["rating"], values["timestamp"]
        nan = np.isnan(r)
        flag("rating_nan", "rating", nan)
        flag("rating_out_of_range", "rating", ~nan & ((r < 0.5) | (r > 5.0)))
        with np.errstate(invalid="ignore"):
            flag("rating_not_half_star", "rating", np.rint(r * 2.0) != r * 2.0)
        flag("timestamp_negative", "timestamp", t < 0)
        flag("timestamp_in_future", "timestamp", t > self.now)
        flag("unknown_movie", "movieId", ~self.catalog.known(values["movieId"]))

        good = code == 0
        accepted = _store_table(*(values[name][good] for name in FIELDS))
        return accepted, self._rejects(columns, lines, groups), n_blank

    def _rejects(
        self,
        columns: dict[str, pa.Array],
        lines: np.ndarray,
        groups: list[tuple[str, str, np.ndarray]],
    ) -> pa.Table:
        if not groups:
            return self.no_rejects
        rows, reasons, details = [], [], []
        for reason, column, mask in groups:
            idx = np.flatnonzero(mask)
            rows.append(idx)
            reasons.append(pa.array([reason] * len(idx), pa.string()))
            if reason == "missing_value":
                details.append(pa.array([f"column {column!r} is empty"] * len(idx), pa.string()))
            else:
                value = columns[column].take(pa.array(idx))
                details.append(
                    pc.binary_join_element_wise(
                        f"column {column!r}: '", value, f"' {self.why[reason]}", ""
                    )
                )
        order = np.argsort(np.concatenate(rows), kind="stable")
        idx = pa.array(np.concatenate(rows)[order])
        return reject_table(
            self.source,
            pa.array(lines).take(idx),
            pa.concat_arrays(reasons).take(pa.array(order)),
            pa.concat_arrays(details).take(pa.array(order)),
            {name: columns[name].take(idx) for name in FIELDS},
        )


def _blank_lines(data: memoryview, offsets: np.ndarray) -> np.ndarray:
    """Whether line ``offsets[i]`` (0-based within ``data``) is empty (or just a carriage
    return).
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(raw == 10)
    ends = np.append(newlines, len(raw))
    begins = np.concatenate([[0], newlines + 1])
    b, e = begins[offsets], ends[offsets]
    length = e - b
    single_cr = (length == 1) & (raw[np.minimum(b, len(raw) - 1)] == 13)
    return np.asarray((length == 0) | single_cr, dtype=bool)
