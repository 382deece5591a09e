"""Business rules on what may be recommended: a deny-list, an allow-list, genres and a range of
years.

Why here: the nightly job's recommend and similar-movie shards and the query-time library
(:mod:`towerflow`) must apply the same rules the same way, so the rules, their one JSON shape (the
``rules`` of ``latest.json``) and the top-k over the allowed movies live in one module.

The rules never change the model or its vectors: they choose which index rows may appear in a list.
Top-k over the allowed rows searches a flat index of those rows only (:func:`allowed_index`), so a
list still has ``k`` rows whenever ``k`` allowed, unseen movies exist, however many the rules took
away.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.errors import ConfigError
from tasks.preparation.features import GENRES, genre_matrix

FORMAT = "towerflow-rules/1"


def _ids(values: Iterable[Any] | None, what: str) -> frozenset[int] | None:
    """Movie ids as a frozenset of ints; a value that is not a whole number is named in the
    error.
    """
    if values is None:
        return None
    if isinstance(values, str | bytes | int):
        values = [values]
    out = set()
    for value in values:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: {value!r} is not a movie id (a whole number)") from None
        if isinstance(value, float) and number != value:
            raise ConfigError(f"{what}: {value!r} is not a movie id (a whole number)")
        out.add(number)
    return frozenset(out)


def _genres(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """Genre names as the catalog spells them (matched ignoring case); an unknown name is an
    error.
    """
    if values is None:
        return ()
    if isinstance(values, str):
        values = values.split(",")
    known = {g.casefold(): g for g in GENRES}
    out: list[str] = []
    for value in values:
        name = str(value).strip()
        if not name:
            continue
        genre = known.get(name.casefold())
        if genre is None:
            raise ConfigError(f"genre {name!r} is not one of {', '.join(GENRES)}")
        if genre not in out:
            out.append(genre)
    return tuple(out)


@dataclass(frozen=True)
class Rules:
    """Which movies may be recommended. The default allows every movie.

    - ``deny``: movie ids never recommended (ids not in the catalog are allowed: a list may name a
      movie before it arrives);
    - ``only``: if given, nothing but these movie ids;
    - ``genres``: if given, only movies with at least one of these genres;
    - ``min_year`` / ``max_year``: only movies released in that range, both ends included (a movie
      without a year is left out once either bound is set).
    """

    deny: frozenset[int] = frozenset()
    only: frozenset[int] | None = None
    genres: tuple[str, ...] = ()
    min_year: int | None = None
    max_year: int | None = None

    def __post_init__(self) -> None:
        lo, hi = self.min_year, self.max_year
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(
                f"year range {lo}..{hi} is empty: the first year must not be after the last"
            )

    @classmethod
    def make(
        cls,
        deny: Iterable[Any] | None = None,
        only: Iterable[Any] | None = None,
        genres: Iterable[str] | str | None = None,
        years: tuple[int | None, int | None] | None = None,
    ) -> Rules:
        """Rules from plain values (any iterable of ids, genre names in any case, ``(first, last)``
        years).
        """
        lo, hi = years if years is not None else (None, None)
        for name, year in (("first", lo), ("last", hi)):
            if year is not None and not isinstance(year, int | np.integer):
                raise ConfigError(
                    f"years: the {name} year must be a whole number or None, got {year!r}"
                )
        return cls(
            deny=_ids(deny, "deny-list") or frozenset(),
            only=_ids(only, "only"),
            genres=_genres(genres),
            min_year=None if lo is None else int(lo),
            max_year=None if hi is None else int(hi),
        )

    @property
    def empty(self) -> bool:
        """True when the rules allow every movie."""
        return self == Rules()

    def __and__(self, other: Rules) -> Rules:
        """Both sets of rules at once: a movie must pass each."""
        only = (
            self.only
            if other.only is None
            else other.only
            if self.only is None
            else self.only & other.only
        )
        genres = self.genres or other.genres
        if self.genres and other.genres:
            genres = tuple(g for g in self.genres if g in other.genres)
            if not genres:  # no genre passes both: nothing is allowed
                only = frozenset()
        lows = [y for y in (self.min_year, other.min_year) if y is not None]
        highs = [y for y in (self.max_year, other.max_year) if y is not None]
        lo, hi = (max(lows) if lows else None), (min(highs) if highs else None)
        if lo is not None and hi is not None and lo > hi:
            only, lo, hi = frozenset(), None, None  # no year passes both: nothing is allowed
        return Rules(self.deny | other.deny, only, genres, lo, hi)

    def allowed(
        self, catalog: pd.DataFrame, movie_ids: np.ndarray, genre_rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Boolean mask over ``movie_ids`` (index row order): which movies the rules allow.

        ``catalog`` has ``movie_id``, ``genres`` and ``year`` for (at least) those movies;
        ``genre_rows``, if given, is :func:`~tasks.preparation.features.genre_matrix` of ``catalog``
        already in that order.
        """
        movie_ids = np.asarray(movie_ids, dtype=np.int64)
        mask = np.ones(len(movie_ids), dtype=bool)
        if self.empty:
            return mask
        if self.deny:
            mask &= ~np.isin(movie_ids, np.fromiter(self.deny, np.int64, len(self.deny)))
        if self.only is not None:
            mask &= np.isin(movie_ids, np.fromiter(self.only, np.int64, len(self.only)))
        if self.genres or self.min_year is not None or self.max_year is not None:
            in_order = np.array_equal(catalog["movie_id"].to_numpy(), movie_ids)
            rows = catalog if in_order else catalog.set_index("movie_id").reindex(movie_ids)
            if self.genres:
                columns = [GENRES.index(g) for g in self.genres]
                has = genre_matrix(rows["genres"]) if genre_rows is None else genre_rows
                mask &= np.asarray(has, dtype=bool)[:, columns].any(axis=1)
            year = rows["year"].to_numpy(dtype="float64", na_value=np.nan)
            if self.min_year is not None:
                mask &= year >= self.min_year
            if self.max_year is not None:
                mask &= year <= self.max_year
        return mask

    def document(self) -> dict[str, Any]:
        """The one JSON shape of a set of rules (the ``rules`` of ``latest.json``)."""
        return {
            "format": FORMAT,
            "deny": sorted(self.deny),
            "only": None if self.only is None else sorted(self.only),
            "genres": list(self.genres),
            "min_year": self.min_year,
            "max_year": self.max_year,
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any] | None) -> Rules:
        """Rules from :meth:`document`'s shape; ``None`` (a run published before rules existed)
        allows all.
        """
        if doc is None:
            return cls()
        if doc.get("format") != FORMAT:
            raise ConfigError(
                f"rules document has format {doc.get('format')!r}, this towerflow reads {FORMAT!r}"
            )
        years = (doc.get("min_year"), doc.get("max_year"))
        return cls.make(doc.get("deny"), doc.get("only"), doc.get("genres"), years)

    def describe(self) -> str:
        """One line for people: ``deny 3 movies; genres Comedy, Drama; years 1990..``."""
        parts = []
        if self.deny:
            parts.append(f"deny {len(self.deny):,} movies")
        if self.only is not None:
            parts.append(f"only {len(self.only):,} movies")
        if self.genres:
            parts.append("genres " + ", ".join(self.genres))
        if self.min_year is not None or self.max_year is not None:
            parts.append(f"years {self.min_year or ''}..{self.max_year or ''}")
        return "; ".join(parts) or "none"


def parse_years(text: str) -> tuple[int | None, int | None]:
    """``1990-2005``, ``1990-`` or ``-2005`` as (first, last) years; the error names the bad
    text.
    """
    lo, sep, hi = text.strip().partition("-")
    try:
        if not sep:
            raise ValueError
        return (int(lo) if lo.strip() else None, int(hi) if hi.strip() else None)
    except ValueError:
        raise ConfigError(
            f"years {text!r}: write FIRST-LAST, FIRST- or -LAST, e.g. 1990-2005"
        ) from None


def read_deny_list(path: str) -> frozenset[int]:
    """Movie ids from a file: one per line, or a CSV with a ``movieId`` (or ``movie_id``) column."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"deny-list {path}: file not found") from None
    lines = text.splitlines()
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    column = next((h for h in ("movieId", "movie_id") if h in header), None)
    values: list[tuple[int, str]]
    if column is not None:
        reader = csv.DictReader(lines)
        values = [(i + 2, row[column]) for i, row in enumerate(reader)]
    else:
        values = [(i + 1, line) for i, line in enumerate(lines)]
    out = set()
    for line_no, value in values:
        value = value.strip()
        if not value or value.startswith("#"):
            continue
        try:
            out.add(int(value))
        except ValueError:
            raise ConfigError(
                f"deny-list {path}, line {line_no}: {value!r} is not a movie id"
            ) from None
    return frozenset(out)


@dataclass(frozen=True)
class Restricted:
    """A flat inner-product index over the allowed rows of another, and the way back to its rows."""

    index: Any  # faiss.Index over the allowed rows only
    rows: np.ndarray  # rows[i]: the original index row of row i
    # position[r]: row of original row r in ``index``, or -1 when r is not allowed
    position: np.ndarray

    def seen(self, indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A seen CSR over original rows, rewritten over this index's rows (disallowed rows
        dropped).
        """
        mapped = self.position[rows]
        keep = mapped >= 0
        owner = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        counts = np.bincount(owner[keep], minlength=len(indptr) - 1)
        out = np.zeros(len(indptr), dtype=np.int64)
        np.cumsum(counts, out=out[1:])
        return out, mapped[keep]


def allowed_index(vectors: np.ndarray, allowed: np.ndarray) -> Restricted:
    """An exact inner-product index (FAISS ``IndexFlat``) of the ``allowed`` rows of ``vectors``."""
    import faiss

    rows = np.flatnonzero(allowed)
    index = faiss.IndexFlat(vectors.shape[1], faiss.METRIC_INNER_PRODUCT)
    if len(rows):
        index.add(np.ascontiguousarray(vectors[rows], dtype=np.float32))
    position = np.full(len(vectors), -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    return Restricted(index, rows, position)
