"""The published run as query-time code reads it: ``latest.json``, its model files (hashes checked),
its catalog, and finding a movie by id or title.

Plain, typed, Prefect-free functions behind :mod:`towerflow.recommender` and ``towerflow similar``.
They only read what ``outputs/latest.json`` points to, never retrain, and import neither TensorFlow
nor Prefect.

Titles and genres come from the catalog the run served
(``latest.json`` -> ``model.movies``; runs published before it existed fall
back to the ingested store). A question the run cannot answer raises
:class:`QueryError` with a message naming the bad value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tasks.errors import TowerflowError
from tasks.store.latest import Latest, read_latest
from tasks.store.layout import Layout, verified

_ARTICLE = re.compile(
    r"^(?P<name>.*), (?P<article>The|A|An|L'|Le|La|Les|Il|Der|Die|Das|El|Los|Las)(?P<rest> \(.*)?$"
)


class QueryError(TowerflowError, ValueError):
    """A question the published run cannot answer; the message names the bad value."""


class AmbiguousMovie(QueryError):
    """A title matched several movies; ``matches`` holds their (id, title), best guesses first."""

    def __init__(self, query: str, matches: list[tuple[int, str]]):
        self.query = query
        self.matches = matches
        super().__init__(f"{query!r} matches {len(matches)} movies; give one id with --movie ID")


@dataclass(frozen=True)
class Published:
    """The run ``outputs/latest.json`` points to."""

    data_dir: Path
    latest: Latest

    @property
    def version(self) -> str:
        return self.latest.model_version

    @property
    def run_date(self) -> str:
        return self.latest.run_date

    @property
    def k(self) -> int:
        """Rows per user (and per movie) the run published."""
        return self.latest.k

    def table(self, name: str) -> list[str]:
        """The part files of a published table named in latest.json (runs before sharding name one
        file).
        """
        info = self.latest.tables.get(name)
        if info is None:
            raise QueryError(f"the published run {self.version} has no {name} table")
        paths = [self.data_dir / part for part in info.parts()]
        for path in paths:
            if not path.exists():
                raise QueryError(f"published {name} table missing: {path}")
        return [str(path) for path in paths]

    def model_file(self, key: str) -> Path:
        """Path of a model file named in latest.json, after checking its sha256."""
        entry = self.latest.model.get(key)
        if entry is None:
            raise QueryError(f"the published run {self.version} has no model file {key!r}")
        try:
            return verified(self.data_dir, entry)
        except (FileNotFoundError, ValueError) as exc:
            raise QueryError(str(exc)) from None

    def catalog_path(self) -> Path:
        """The movies table (movie_id, title, genres, year) the run served."""
        if "movies" in self.latest.model:
            return self.model_file("movies")
        store_hash = self.latest.inputs.sha256  # runs published before model.movies existed
        path = Layout(self.data_dir).store(store_hash) / "movies.parquet"
        if not path.exists():
            raise QueryError(
                f"the movie catalog of the published run {self.version} is missing: {path}; "
                "re-run `towerflow run`"
            )
        return path


def load_published(data_dir: Path) -> Published:
    """The latest published run under ``data_dir``, or a :class:`QueryError` saying to run
    ``towerflow run``.
    """
    try:
        return Published(Path(data_dir), read_latest(Path(data_dir)))
    except (FileNotFoundError, ValueError) as exc:
        raise QueryError(str(exc)) from None


def display_title(title: str) -> str:
    """MovieLens ``Matrix, The (1999)`` as ``The Matrix (1999)``; other titles unchanged."""
    m = _ARTICLE.match(title)
    if not m:
        return title
    sep = "" if m["article"].endswith("'") else " "
    return f"{m['article']}{sep}{m['name']}{m['rest'] or ''}"


def _catalog(pub: Published, movie_ids: np.ndarray | None = None) -> pd.DataFrame:
    """Catalog rows (movie_id, title, genres, year), only ``movie_ids`` if given; titles as people
    write them.
    """
    filters = (
        [("movie_id", "in", [int(x) for x in np.unique(movie_ids)])]
        if movie_ids is not None
        else None
    )
    table = pq.read_table(
        pub.catalog_path(), columns=["movie_id", "title", "genres", "year"], filters=filters
    )
    frame: pd.DataFrame = table.to_pandas()
    frame["title"] = frame["title"].map(display_title)
    return frame


def find_movie(pub: Published, query: str) -> int:
    """A movie id from ``query``: an integer is an id; otherwise a title, matched
    case-insensitively.

    A title equal to one movie's (with or without its year; ``The Matrix`` finds
    ``Matrix, The (1999)``) picks it; otherwise every title containing the
    text matches. No match -> :class:`QueryError`; several -> :class:`AmbiguousMovie`.
    """
    text = query.strip()
    cat = _catalog(pub)
    if re.fullmatch(r"[0-9]+", text):
        movie_id = int(text)
        if not (cat["movie_id"] == movie_id).any():
            ids = cat["movie_id"]
            raise QueryError(
                f"movie {movie_id} is not in the catalog of the published run {pub.version} "
                f"({len(cat):,} movies; ids {ids.min()}..{ids.max()})"
            )
        return movie_id
    if not text:
        raise QueryError("--movie is empty; give a movie id or part of a title")
    needle = text.casefold()
    titles = cat["title"].str.casefold()
    no_year = titles.str.replace(r"\s*\(\d{4}(?:[-–]\d{0,4})?\)\s*$", "", regex=True)
    exact = cat[(titles == needle) | (no_year == needle)]
    found = exact if len(exact) else cat[titles.str.contains(needle, regex=False)]
    if found.empty:
        raise QueryError(
            f"no movie title contains {text!r} in the catalog of the published run "
            f"{pub.version} ({len(cat):,} movies)"
        )
    if len(found) > 1:
        found = found.sort_values(["year", "movie_id"], na_position="last")
        raise AmbiguousMovie(
            text, [(int(i), str(t)) for i, t in zip(found["movie_id"], found["title"], strict=True)]
        )
    return int(found["movie_id"].iloc[0])


def movie_title(pub: Published, movie_id: int) -> str:
    """The display title of a catalog movie."""
    cat = _catalog(pub, np.array([movie_id]))
    return str(cat["title"].iloc[0]) if len(cat) else f"movie {movie_id}"
