"""Answer questions from the published run: a user's top-k, a movie's nearest movies.

Plain, typed, Prefect-free functions behind ``towerflow recommend`` and
``towerflow similar``. They only read what ``outputs/latest.json`` points to
(the published tables and model files), never retrain, and import neither
TensorFlow nor Prefect, so a query answers in well under a second. Rows are
read with a pyarrow filter on the id, not by loading whole tables.

Titles and genres come from the catalog the run served
(``latest.json`` -> ``model.movies``; runs published before it existed fall
back to the ingested store). A question the run cannot answer raises
:class:`QueryError` with a message naming the bad value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import TowerflowError
from tasks.store.layout import Layout, read_latest, verified

_ARTICLE = re.compile(r"^(?P<name>.*), (?P<article>The|A|An|L'|Le|La|Les|Il|Der|Die|Das|El|Los|Las)(?P<rest> \(.*)?$")


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
    latest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.latest["model_version"])

    @property
    def run_date(self) -> str:
        return str(self.latest["run_date"])

    @property
    def k(self) -> int:
        """Rows per user (and per movie) the run published."""
        return int(self.latest.get("k") or 0)

    def table(self, name: str) -> list[str]:
        """The part files of a published table named in latest.json (runs before sharding name one file)."""
        info = self.latest.get("tables", {}).get(name)
        if info is None:
            raise QueryError(f"the published run {self.version} has no {name} table")
        paths = [self.data_dir / part for part in info.get("files") or [info["path"]]]
        for path in paths:
            if not path.exists():
                raise QueryError(f"published {name} table missing: {path}")
        return [str(path) for path in paths]

    def model_file(self, key: str) -> Path:
        """Path of a model file named in latest.json, after checking its sha256."""
        entry = self.latest.get("model", {}).get(key)
        if entry is None:
            raise QueryError(f"the published run {self.version} has no model file {key!r}")
        try:
            return verified(self.data_dir, entry)
        except (FileNotFoundError, ValueError) as exc:
            raise QueryError(str(exc)) from None

    def catalog_path(self) -> Path:
        """The movies table (movie_id, title, genres, year) the run served."""
        if "movies" in self.latest.get("model", {}):
            return self.model_file("movies")
        store_hash = self.latest.get("inputs", {}).get("sha256", "")  # runs published before model.movies existed
        path = Layout(self.data_dir).store(store_hash) / "movies.parquet"
        if not path.exists():
            raise QueryError(f"the movie catalog of the published run {self.version} is missing: {path}; re-run `towerflow run`")
        return path


def load_published(data_dir: Path) -> Published:
    """The latest published run under ``data_dir``, or a :class:`QueryError` saying to run ``towerflow run``."""
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
    """Catalog rows (movie_id, title, genres, year), only ``movie_ids`` if given; titles as people write them."""
    filters = [("movie_id", "in", [int(x) for x in np.unique(movie_ids)])] if movie_ids is not None else None
    table = pq.read_table(pub.catalog_path(), columns=["movie_id", "title", "genres", "year"], filters=filters)
    frame: pd.DataFrame = table.to_pandas()
    frame["title"] = frame["title"].map(display_title)
    return frame


def _id_range(path: list[str], column: str, noun: str) -> str:
    """``610 users; ids 1..610``: what a table holds, for error messages."""
    ids = pq.read_table(path, columns=[column]).column(column)
    unique = pc.unique(ids)
    if len(unique) == 0:
        return f"no {noun}s"
    bounds = pc.min_max(unique)
    return f"{len(unique):,} {noun}s; ids {bounds['min'].as_py()}..{bounds['max'].as_py()}"


def _with_titles(pub: Published, rows: pd.DataFrame, id_column: str) -> pd.DataFrame:
    cat = _catalog(pub, rows[id_column].to_numpy())[["movie_id", "title", "genres"]]
    out = rows.merge(cat.rename(columns={"movie_id": id_column}), on=id_column, how="left")
    out["title"] = out["title"].fillna("(not in catalog)")
    out["genres"] = out["genres"].fillna("")
    return out


def _check_k(k: int) -> None:
    if k < 1:
        raise QueryError(f"--k must be at least 1, got {k}")


def recommend_for_user(pub: Published, user_id: int, k: int | None = None) -> pd.DataFrame:
    """The user's published top-k, best first, with titles and genres.

    Columns: user_id, rank, movie_id, title, genres, score, predicted_rating.
    ``k`` defaults to everything published; more than the run published is an error.
    """
    k = pub.k if k is None else k
    _check_k(k)
    if pub.k and k > pub.k:
        raise QueryError(
            f"--k {k} is more than the {pub.k} recommendations per user that run {pub.version} published; "
            f"use --k {pub.k} or less, or publish more with `towerflow run --k {k}`"
        )
    path = pub.table("recommendations")
    cols = ["user_id", "rank", "movie_id", "score", "predicted_rating"]
    rows = pq.read_table(path, columns=cols, filters=[("user_id", "==", int(user_id))]).to_pandas()
    if rows.empty:
        raise QueryError(f"user {user_id} is not in the published run {pub.version} ({_id_range(path, 'user_id', 'user')})")
    rows = rows.sort_values("rank", kind="stable").head(k).reset_index(drop=True)
    return _with_titles(pub, rows, "movie_id")[["user_id", "rank", "movie_id", "title", "genres", "score", "predicted_rating"]]


def find_movie(pub: Published, query: str) -> int:
    """A movie id from ``query``: an integer is an id; otherwise a title, matched case-insensitively.

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
        raise QueryError(f"no movie title contains {text!r} in the catalog of the published run {pub.version} ({len(cat):,} movies)")
    if len(found) > 1:
        found = found.sort_values(["year", "movie_id"], na_position="last")
        raise AmbiguousMovie(text, [(int(i), str(t)) for i, t in zip(found["movie_id"], found["title"], strict=True)])
    return int(found["movie_id"].iloc[0])


def movie_title(pub: Published, movie_id: int) -> str:
    """The display title of a catalog movie."""
    cat = _catalog(pub, np.array([movie_id]))
    return str(cat["title"].iloc[0]) if len(cat) else f"movie {movie_id}"


def similar_movies(pub: Published, movie_id: int, k: int | None = None) -> pd.DataFrame:
    """The ``k`` movies nearest to ``movie_id`` in the published embedding space, never itself.

    Up to the published k, from the ``similar_movies`` table; beyond it, an
    exact search of the published FAISS index (its sha256 checked first) with
    the movie's own embedding. Columns: movie_id, rank, similar_movie_id, title, genres, score.
    """
    k = pub.k if k is None else k
    _check_k(k)
    if pub.k and k <= pub.k:
        path = pub.table("similar_movies")
        cols = ["movie_id", "rank", "similar_movie_id", "score"]
        rows = pq.read_table(path, columns=cols, filters=[("movie_id", "==", int(movie_id))]).to_pandas()
        rows = rows.sort_values("rank", kind="stable").head(k).reset_index(drop=True)
    else:
        rows = _search_index(pub, int(movie_id), k)
    if rows.empty:
        raise QueryError(f"movie {movie_id} has no similar movies in the published run {pub.version}")
    return _with_titles(pub, rows, "similar_movie_id")[["movie_id", "rank", "similar_movie_id", "title", "genres", "score"]]


def _search_index(pub: Published, movie_id: int, k: int) -> pd.DataFrame:
    import faiss

    from tasks.serving.popularity import ServingSpace
    from tasks.serving.recommend import topk_unseen

    ids = pq.read_table(pub.model_file("index_ids"), columns=["movie_id"]).column("movie_id").to_numpy()
    where = np.flatnonzero(ids == movie_id)
    if len(where) == 0:
        raise QueryError(f"movie {movie_id} is not in the published index of run {pub.version}")
    index = faiss.read_index(str(pub.model_file("index")))
    if index.metric_type != faiss.METRIC_INNER_PRODUCT or index.ntotal != len(ids):
        raise QueryError(f"{pub.model_file('index')}: not an inner-product index over the {len(ids):,} published movies")
    row = int(where[0])
    space = ServingSpace.read(pub.model_file("serving"))  # similar by the towers' vectors, as the similar_movies table
    query = space.content_queries(index.reconstruct(row).reshape(1, -1).astype(np.float32))
    _, rank, items, scores = next(topk_unseen(index, query, np.array([0, 1]), np.array([row]), k))
    return pd.DataFrame(
        {
            "movie_id": np.full(len(items), movie_id, dtype=np.int64),
            "rank": rank.astype(np.int32),
            "similar_movie_id": ids[items].astype(np.int64),
            "score": scores.astype(np.float32),
        }
    )
