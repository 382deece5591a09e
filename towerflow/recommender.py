"""The published model as a library: ``towerflow.load(data_dir)`` gives a :class:`Recommender`.

Why: applications and notebooks want the nightly model without a server or a subprocess: a known
user's top-k under business rules, a user whose ratings arrived after the night (folded in through
the user tower, no retraining), similar movies, predicted ratings. Everything is answered from what
``latest.json`` lists (file hashes checked at load) with the nightly job's own functions: the same
feature formulas and scalers for a folded-in user, the same served vectors and the same top-k
(:func:`tasks.serving.recommend.topk_allowed`) as the published tables, the night's business rules
(:mod:`tasks.serving.rules`) and a call's own on top.

TensorFlow is imported only the first time a user tower must run
(:meth:`Recommender.recommend_for_ratings`): loading the model and answering for known users needs
numpy, pyarrow and FAISS only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tasks.errors import ConfigError
from tasks.preparation.features import genre_matrix
from tasks.serving.rules import Rules
from tasks.store import schemas
from tasks.store.layout import Layout
from towerflow.query import Published, QueryError, display_title, load_published

RATING_RANGE = (0.5, 5.0)  # what the nightly ingest accepts (tasks/ingestion/checks.py)
RECOMMEND_COLUMNS = ["user_id", "rank", "movie_id", "title", "genres", "score", "predicted_rating"]
SIMILAR_COLUMNS = ["movie_id", "rank", "similar_movie_id", "title", "genres", "score"]


def load(data_dir: str | Path = "data", cache_dir: str | Path | None = None) -> Recommender:
    """The run published under ``data_dir`` (its ``outputs/latest.json``), ready to answer.

    ``data_dir`` may be ``s3://bucket/prefix``: the published files are copied once into
    ``cache_dir`` (default: ``$TOWERFLOW_SCRATCH`` or ``~/.cache/towerflow``) and checked against
    their sha256.
    """
    if "://" in str(data_dir):
        from tasks.errors import TowerflowError
        from tasks.store.mirror import pull_for_query

        try:
            data_dir = pull_for_query(str(data_dir), cache_dir)
        except (FileNotFoundError, TowerflowError) as exc:
            raise QueryError(str(exc)) from None
    return Recommender(load_published(Path(data_dir)))


class Recommender:
    """Answers from one published run. Built by :func:`load`; every answer is a data frame with
    titles.

    Business rules of a call (keyword arguments of every recommending method) come on top of the
    night's (``latest.json`` -> ``rules``): ``exclude`` movie ids, ``only`` these movie ids,
    ``genres`` (at least one of), ``years`` ``(first, last)``, either end ``None``.
    """

    def __init__(self, published: Published) -> None:
        from tasks.preparation.scalers import QueryScalers
        from tasks.serving.export import read_embeddings, read_index
        from tasks.serving.popularity import ServingSpace

        self.published = published
        latest = published.latest
        files = {
            key: published.model_file(key)
            for key in ("index", "index_ids", "movie_embeddings", "user_embeddings")
        }
        files |= {key: published.model_file(key) for key in ("serving", "scalers")}
        self._files = files
        self.index = read_index(files["index"])
        self.movie_ids = pq.read_table(files["index_ids"]).column("movie_id").to_numpy()
        emb_ids, self._movie_vecs = read_embeddings(files["movie_embeddings"], "movie")
        self.user_ids, self._user_vecs = read_embeddings(files["user_embeddings"], "user")
        if not np.array_equal(emb_ids, self.movie_ids) or self.index.ntotal != len(self.movie_ids):
            raise QueryError(
                f"run {self.version}: the index, its ids and the movie embeddings disagree; "
                "re-run `towerflow run`"
            )
        self.space = ServingSpace.read(files["serving"])
        self.scalers = QueryScalers.read(files["scalers"])
        self.config: dict[str, Any] = dict(latest.config)
        self.night_rules = Rules.from_document(latest.rules)
        self._movie_row = pd.Index(self.movie_ids)
        self._user_row = pd.Index(self.user_ids)
        cat = pq.read_table(
            published.catalog_path(), columns=["movie_id", "title", "genres", "year"]
        ).to_pandas()
        cat = cat.set_index("movie_id").reindex(self.movie_ids)
        cat["title"] = cat["title"].fillna("(not in catalog)").map(display_title)
        cat["genres"] = cat["genres"].fillna("")
        self.catalog: pd.DataFrame = cat.rename_axis("movie_id").reset_index()
        self._night_allowed = self.night_rules.allowed(
            self.catalog, self.movie_ids, genre_matrix(self.catalog["genres"])
        )
        self._user_tower: Any = None
        self._factors: np.ndarray | None = None
        self._seen: tuple[np.ndarray, np.ndarray, float] | None = None
        self._published_recs: dict[str, np.ndarray] | None = None
        self._titles = self.catalog["title"].to_numpy(dtype=object)
        self._genre_names = self.catalog["genres"].to_numpy(dtype=object)
        # for genre rules, computed once
        self._genre_rows = genre_matrix(self.catalog["genres"]).astype(bool)

    # -- what the run is
    # ------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.published.version

    @property
    def run_date(self) -> str:
        return self.published.run_date

    def __repr__(self) -> str:
        return (
            f"<towerflow.Recommender run {self.version} ({self.run_date}): "
            f"{len(self.user_ids):,} users, "
            f"{len(self.movie_ids):,} movies, rules: {self.night_rules.describe()}>"
        )

    @property
    def k(self) -> int:
        """Rows per user (and per movie) the run published."""
        return self.published.k

    def _seen_csr(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Each user's rated movies (CSR over users, index rows) and the mean of every rating, read
        once.
        """
        if self._seen is None:
            from tasks.serving.recommend import seen_csr

            ratings = self._store_ratings()
            indptr, rows = seen_csr(ratings, self.user_ids, self.movie_ids)
            # the prior every mean is shrunk toward: the mean of the ratings the night's full phase
            # saw
            mu = float(ratings["rating"].to_numpy(dtype=np.float64).mean()) if len(ratings) else 3.5
            self._seen = (indptr, rows, mu)
        return self._seen

    def _store_ratings(self) -> pd.DataFrame:
        """(user_id, movie_id, rating) of every rating the run served: what each user has seen."""
        digest = self.published.latest.inputs.sha256
        try:
            path = Layout(self.published.data_dir).store(digest) / "ratings.parquet"
        except ConfigError:
            raise QueryError(
                f"latest.json of run {self.version} names no ingested store; re-run `towerflow run`"
            ) from None
        if not path.exists():
            raise QueryError(
                f"the ratings of the published run {self.version} are missing: {path}; "
                "re-run `towerflow run`"
            )
        schemas.check_schema(pq.read_schema(path), schemas.RATINGS, f"reading ratings from {path}")
        frame: pd.DataFrame = pq.read_table(
            path, columns=["user_id", "movie_id", "rating"]
        ).to_pandas()
        return frame

    # -- rules
    # ------------------------------------------------------------------------------------------
    def _known_ids(self, ids: frozenset[int] | None, what: str) -> None:
        if not ids:
            return
        wanted = np.fromiter(ids, np.int64, len(ids))
        missing = wanted[self._movie_row.get_indexer(wanted) < 0]
        if len(missing):
            raise QueryError(
                f"{what}: movie {int(np.sort(missing)[0])} is not in the catalog of run "
                f"{self.version} "
                f"({len(self.movie_ids):,} movies; ids "
                f"{self.movie_ids.min()}..{self.movie_ids.max()})"
            )

    def allowed(
        self,
        exclude: Iterable[int] | None = None,
        only: Iterable[int] | None = None,
        genres: Iterable[str] | str | None = None,
        years: tuple[int | None, int | None] | None = None,
    ) -> np.ndarray:
        """Mask over the catalog (index row order): what the night's rules and these let through."""
        try:
            call = Rules.make(deny=exclude, only=only, genres=genres, years=years)
        except ConfigError as exc:
            raise QueryError(str(exc)) from None
        self._known_ids(call.deny, "exclude")
        self._known_ids(call.only, "only")
        if call.empty:
            return np.asarray(self._night_allowed)
        return np.asarray(
            self._night_allowed & call.allowed(self.catalog, self.movie_ids, self._genre_rows)
        )

    # -- answers
    # ------------------------------------------------------------------------------------------
    def _user_rows(self, user_ids: Iterable[int]) -> np.ndarray:
        ids = np.asarray(list(user_ids), dtype=np.int64)
        rows = self._user_row.get_indexer(ids)
        if (rows < 0).any():
            bad = int(ids[rows < 0][0])
            raise QueryError(
                f"user {bad} is not in the published run {self.version} "
                f"({len(self.user_ids):,} users; "
                f"ids {self.user_ids.min()}..{self.user_ids.max()}); for a user the night "
                "did not see, "
                "use recommend_for_ratings"
            )
        return np.asarray(rows)

    def _top(
        self, queries: np.ndarray, indptr: np.ndarray, seen: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(query rows, ranks, index rows, scores) of each query's top-k, as the nightly recommend
        stage.
        """
        from tasks.serving.recommend import topk_allowed

        _check_k(k)
        parts = list(
            topk_allowed(self.index, np.ascontiguousarray(queries), indptr, seen, k, allowed)
        )
        if not parts:
            empty = np.empty(0, np.int64)
            return empty, empty.astype(np.int32), empty, np.empty(0, np.float32)
        q, rank, items, scores = (np.concatenate(p) for p in zip(*parts, strict=True))
        order = np.lexsort((rank, q))
        return q[order], rank[order], items[order], scores[order]

    def _frame(
        self,
        user_vecs: np.ndarray,
        q: np.ndarray,
        rank: np.ndarray,
        items: np.ndarray,
        scores: np.ndarray,
    ) -> pd.DataFrame:
        # an empty answer (the rules let nothing through) has no stars to map
        stars = np.empty(0, np.float32)
        if len(q):
            stars = self.scalers.target_to_rating(
                self.space.tower_scores(user_vecs[q], self._movie_vecs[items])
            )
        return pd.DataFrame(
            {
                "rank": rank.astype(np.int32),
                "movie_id": self.movie_ids[items].astype(np.int64),
                "title": self._titles[items],
                "genres": self._genre_names[items],
                "score": scores.astype(np.float32),
                "predicted_rating": stars.astype(np.float32),
            }
        )

    def recommend(
        self,
        user_id: int,
        k: int = 10,
        *,
        exclude: Iterable[int] | None = None,
        only: Iterable[int] | None = None,
        genres: Iterable[str] | str | None = None,
        years: tuple[int | None, int | None] | None = None,
    ) -> pd.DataFrame:
        """A known user's top ``k`` unseen movies, best first (rules: see the class).

        Columns: user_id, rank, movie_id, title, genres, score, predicted_rating. With no rules of
        its own and ``k`` up to the published k, it is that user's rows of the published
        recommendations table; otherwise it is searched in the published vectors the same way.
        """
        return self.recommend_many(
            [user_id], k, exclude=exclude, only=only, genres=genres, years=years
        )

    def recommend_many(
        self,
        user_ids: Iterable[int],
        k: int = 10,
        *,
        exclude: Iterable[int] | None = None,
        only: Iterable[int] | None = None,
        genres: Iterable[str] | str | None = None,
        years: tuple[int | None, int | None] | None = None,
    ) -> pd.DataFrame:
        """:meth:`recommend` for many known users at once (one search), grouped by user in the given
        order.
        """
        _check_k(k)
        wanted = np.asarray(list(user_ids), dtype=np.int64)
        rows = self._user_rows(wanted)
        if exclude is None and only is None and genres is None and years is None and k <= self.k:
            return self._from_table(wanted, k)
        allowed = self.allowed(exclude, only, genres, years)
        all_ptr, all_rows, _ = self._seen_csr()
        counts = np.diff(all_ptr)[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        seen = (
            np.concatenate([all_rows[all_ptr[r] : all_ptr[r + 1]] for r in rows])
            if len(rows)
            else rows
        )
        vecs = self._user_vecs[rows]
        q, rank, items, scores = self._top(vecs, indptr, seen, k, allowed)
        frame = self._frame(vecs, q, rank, items, scores)
        frame.insert(0, "user_id", wanted[q])
        return frame[RECOMMEND_COLUMNS]

    def _from_table(self, user_ids: np.ndarray, k: int) -> pd.DataFrame:
        """The published recommendations of ``user_ids`` (in that order), their first ``k`` each."""
        # read once, sorted by (user, rank): a user's rows are one slice
        if self._published_recs is None:
            cols = ["user_id", "rank", "movie_id", "score", "predicted_rating"]
            table = pq.read_table(self.published.table("recommendations"), columns=cols).to_pandas()
            table = table.sort_values(["user_id", "rank"], kind="stable")
            self._published_recs = {c: table[c].to_numpy() for c in cols}
        recs = self._published_recs
        starts = np.searchsorted(recs["user_id"], user_ids, side="left")
        stops = np.minimum(np.searchsorted(recs["user_id"], user_ids, side="right"), starts + k)
        take = (
            np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)])
            if len(user_ids)
            else starts
        )
        items = self._movie_row.get_indexer(recs["movie_id"][take])
        frame = pd.DataFrame({c: recs[c][take] for c in ("user_id", "rank", "movie_id")})
        frame["title"] = self._titles[items]
        frame["genres"] = self._genre_names[items]
        frame["score"] = recs["score"][take]
        frame["predicted_rating"] = recs["predicted_rating"][take]
        return frame

    def recommend_for_ratings(
        self,
        ratings: Mapping[int, float],
        k: int = 10,
        *,
        exclude: Iterable[int] | None = None,
        only: Iterable[int] | None = None,
        genres: Iterable[str] | str | None = None,
        years: tuple[int | None, int | None] | None = None,
    ) -> pd.DataFrame:
        """Top ``k`` for someone described by their ratings ``{movie_id: stars}``: a new user, or a
        known one whose ratings changed after the night. Their features are computed from these
        ratings exactly as the nightly job computes every user's, and folded in through the
        published user tower: no retraining. The rated movies are excluded. Columns: rank, movie_id,
        title, genres, score, predicted_rating.
        """
        vec, rated = self.user_vector(ratings)
        indptr = np.array([0, len(rated)], dtype=np.int64)
        q, rank, items, scores = self._top(
            vec, indptr, np.sort(rated), k, self.allowed(exclude, only, genres, years)
        )
        return self._frame(vec, q, rank, items, scores)[RECOMMEND_COLUMNS[1:]]

    def recommend_for_genres(
        self,
        tastes: Mapping[str, float],
        k: int = 10,
        *,
        exclude: Iterable[int] | None = None,
        only: Iterable[int] | None = None,
        genres: Iterable[str] | str | None = None,
        years: tuple[int | None, int | None] | None = None,
    ) -> pd.DataFrame:
        """Cold start: top ``k`` for a newcomer who states genre tastes ``{"Adventure": 5, ...}``
        (:mod:`towerflow.coldstart`). Columns: rank, movie_id, title, genres, score,
        predicted_rating.
        """
        from towerflow.coldstart import newcomer_features

        row, names = newcomer_features(dict(tastes), self.config)
        if names != self.scalers.user_names:
            raise QueryError(
                f"the published model {self.version} was trained on other user features than "
                "this towerflow computes"
            )
        x = self.scalers.user(row)
        vec = self._served(x, None)  # with the popularity prior, as every user's
        nothing = np.empty(0, np.int64)
        q, rank, items, scores = self._top(
            vec, np.array([0, 0]), nothing, k, self.allowed(exclude, only, genres, years)
        )
        return self._frame(vec, q, rank, items, scores)[RECOMMEND_COLUMNS[1:]]

    def user_vector(self, ratings: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
        """The served vector (1, dim) of a user with these ratings, and the index rows of the rated
        movies.

        The mapping's order is taken as the order the ratings were made (oldest first), which only a
        preset with a history input reads.
        """
        from tasks.preparation.features import compute_features

        ids, stars = self._checked_ratings(ratings)
        rows = self._movie_row.get_indexer(ids)
        frame = pd.DataFrame(
            {"user_id": np.zeros(len(ids), np.int64), "movie_id": ids, "rating": stars}
        )
        frame["timestamp"] = np.arange(len(ids), dtype=np.int64)
        movies = self.catalog.iloc[rows][["movie_id", "genres", "year"]].reset_index(drop=True)
        kind = self.config.get("features", "confidence")
        shrinkage = float(self.config.get("shrinkage", 10.0))
        k = int(self.config.get("factors", 0))
        given = self._movie_factors()[rows] if k > 0 else None  # the night's, of these movies
        mu = self._seen_csr()[2]
        feats = compute_features(frame, movies, np.array([0]), kind, shrinkage, mu, k, given)
        if feats.user_names != self.scalers.user_names:
            raise QueryError(
                f"the published model {self.version} was trained on other user features than "
                "this towerflow computes"
            )
        x = self.scalers.user(feats.user_x)
        return self._served(x, frame), rows.astype(np.int64)

    def _movie_factors(self) -> np.ndarray:
        """The night's collaborative factors of every movie (index row order), read once from the
        published movie features (:mod:`tasks.preparation.factors`): what ratings project onto."""
        if self._factors is None:
            from tasks.preparation.factors import factor_names
            from tasks.preparation.feature_tables import read_features

            ids, x, names = read_features(self.published.model_file("movie_features"), "movie")
            wanted = factor_names(int(self.config.get("factors", 0)))[1]
            missing = [n for n in wanted if n not in names]
            if missing or not np.array_equal(ids, self.movie_ids):
                what = f"lack factors {missing[:3]} or disagree with its index"
                run = f"the movie features of run {self.version}"
                raise QueryError(f"{run} {what}; re-run `towerflow run`")
            self._factors = x[:, [names.index(n) for n in wanted]]
        return self._factors

    def _served(self, x: np.ndarray, ratings: pd.DataFrame | None) -> np.ndarray:
        """The served vector (1, dim) of one scaled user-feature row, through the published user
        tower; a tower with a history input reads ``ratings`` (none: an empty history, as a
        newcomer's)."""
        from tasks.preparation.history import user_history
        from tasks.serving.export import embed

        tower = self._tower()
        inputs: Any = x
        if len(tower.inputs) > 1:
            length = int(self.config.get("history_length", 0))
            if ratings is None:
                inputs = (x, np.zeros((1, length), np.int32), np.zeros((1, length), np.float32))
            else:
                hist = user_history(ratings, np.array([0]), self.movie_ids, length)
                inputs = (x, hist.ids, hist.values)
        return np.asarray(self.space.users(embed(tower, inputs)))

    def _checked_ratings(self, ratings: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(ratings, Mapping):
            raise QueryError(
                f"ratings must be a mapping {{movie_id: stars}}, got {type(ratings).__name__}"
            )
        ids, stars = [], []
        for movie, value in ratings.items():
            try:
                movie_id, rating = int(movie), float(value)
            except (TypeError, ValueError):
                raise QueryError(
                    f"ratings: {movie!r}: {value!r} is not a movie id and a number of stars"
                ) from None
            if not (math.isfinite(rating) and RATING_RANGE[0] <= rating <= RATING_RANGE[1]):
                raise QueryError(
                    f"ratings: movie {movie_id} rated {value!r}, outside "
                    f"{RATING_RANGE[0]}-{RATING_RANGE[1]} stars"
                )
            ids.append(movie_id)
            stars.append(rating)
        out = np.asarray(ids, dtype=np.int64)
        self._known_ids(frozenset(ids), "ratings")
        return out, np.asarray(stars, dtype=np.float64)

    def _tower(self) -> Any:
        """The published user tower, loaded on first use (this is where TensorFlow is imported)."""
        if self._user_tower is None:
            from tasks.modeling.model import load_model, towers

            self._user_tower = towers(load_model(self.published.model_file("keras")))[0]
        return self._user_tower

    def similar(
        self,
        movie_id: int,
        k: int = 10,
        *,
        exclude: Iterable[int] | None = None,
        only: Iterable[int] | None = None,
        genres: Iterable[str] | str | None = None,
        years: tuple[int | None, int | None] | None = None,
    ) -> pd.DataFrame:
        """The ``k`` movies nearest to ``movie_id`` by the towers' vectors, never itself (rules: see
        the class).

        Columns: movie_id, rank, similar_movie_id, title, genres, score. With no rules of its own
        and ``k`` up to the published k, it is the movie's rows of the published similar_movies
        table; otherwise it is searched in the published index the same way.
        """
        _check_k(k)
        row = self._movie_row.get_indexer([int(movie_id)])[0]
        if row < 0:
            raise QueryError(
                f"movie {movie_id} is not in the catalog of the published run {self.version} "
                f"({len(self.movie_ids):,} movies; ids "
                f"{self.movie_ids.min()}..{self.movie_ids.max()})"
            )
        if exclude is None and only is None and genres is None and years is None and k <= self.k:
            cols = ["movie_id", "rank", "similar_movie_id", "score"]
            filters = [("movie_id", "==", int(movie_id))]
            table = pq.read_table(
                self.published.table("similar_movies"), columns=cols, filters=filters
            ).to_pandas()
            table = table.sort_values("rank", kind="stable").head(k).reset_index(drop=True)
            items = self._movie_row.get_indexer(table["similar_movie_id"].to_numpy())
            table["title"] = self._titles[items]
            table["genres"] = self._genre_names[items]
            found: pd.DataFrame = table[SIMILAR_COLUMNS]
            return found
        query = self.space.content_queries(self._movie_vecs[row : row + 1])
        allowed = self.allowed(exclude, only, genres, years)
        q, rank, items, scores = self._top(query, np.array([0, 1]), np.array([row]), k, allowed)
        frame = self._frame(self._movie_vecs[row : row + 1], q, rank, items, scores)
        out = frame.rename(columns={"movie_id": "similar_movie_id"})
        out.insert(0, "movie_id", np.full(len(out), int(movie_id), dtype=np.int64))
        return out[SIMILAR_COLUMNS]

    def predict(self, pairs: pd.DataFrame | Iterable[tuple[int, int]]) -> pd.DataFrame:
        """Predicted stars of (user_id, movie_id) pairs: the towers' own dot product, without the
        popularity prior.

        ``pairs`` is a frame with ``user_id`` and ``movie_id`` columns or an iterable of pairs. A
        user or movie the run does not know gets a null prediction and an ``error`` saying why,
        never a made-up value. Columns: user_id, movie_id, predicted_rating, error.
        """
        frame = (
            pairs
            if isinstance(pairs, pd.DataFrame)
            else pd.DataFrame(list(pairs), columns=["user_id", "movie_id"])
        )
        missing = {"user_id", "movie_id"} - set(frame.columns)
        if missing:
            raise QueryError(f"pairs need columns user_id and movie_id; missing {sorted(missing)}")
        users = frame["user_id"].to_numpy(dtype=np.int64)
        movies = frame["movie_id"].to_numpy(dtype=np.int64)
        u, m = self._user_row.get_indexer(users), self._movie_row.get_indexer(movies)
        ok = (u >= 0) & (m >= 0)
        errors = np.full(len(frame), None, dtype=object)
        errors[u < 0] = [
            f"unknown user {x}: no ratings in the data of model {self.version}"
            for x in users[u < 0]
        ]
        only_movie = (u >= 0) & (m < 0)
        errors[only_movie] = [
            f"unknown movie {x}: not in the movie catalog of model {self.version}"
            for x in movies[only_movie]
        ]
        stars = np.full(len(frame), np.nan, dtype=np.float32)
        if ok.any():
            stars[ok] = self.scalers.target_to_rating(
                self.space.tower_scores(self._user_vecs[u[ok]], self._movie_vecs[m[ok]])
            )
        return pd.DataFrame(
            {"user_id": users, "movie_id": movies, "predicted_rating": stars, "error": errors}
        )


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise QueryError(f"k must be a whole number >= 1, got {k!r}")
