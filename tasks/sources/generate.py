"""A deterministic, offline, MovieLens-like data set: the embedded default.

Movies get MovieLens genres, release years and a long-tail popularity; users
get genre tastes and an activity level; each user rates movies drawn by
popularity times taste, with half-star ratings that reflect movie quality,
user bias and taste, and timestamps spread over the user's active period. A
few movies have no ratings (cold start), a few titles have no year or need CSV
quoting. Files are written exactly as GroupLens publishes ml-latest-small.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.errors import ConfigError
from tasks.preparation.features import GENRES
from tasks.store.storage import atomic_path

GENRE_WEIGHTS = np.array(
    [1.8, 1.3, 0.6, 0.7, 3.0, 1.2, 0.5, 4.0, 0.8, 0.2, 1.0, 0.2, 0.4, 0.6, 1.6, 0.8, 1.9, 0.4, 0.2]
)
USER_BLOCK = 4096
WORDS_A = [
    "Silent",
    "Last",
    "Broken",
    "Golden",
    "Hidden",
    "Dark",
    "Little",
    "Wild",
    "Lost",
    "Secret",
    "Red",
    "Endless",
]
WORDS_B = [
    "River",
    "Night",
    "Empire",
    "Garden",
    "Signal",
    "Harbor",
    "Machine",
    "Summer",
    "Kingdom",
    "Road",
    "Storm",
    "Mirror",
]


@dataclass(frozen=True)
class Law:
    """What drives the movies a user picks: P(movie) ~ popularity x exp(taste_strength x genre
    affinity).

    Popularity is Zipf-like (rank ** -popularity_exponent, ranks shuffled over the
    catalog) times exp(quality_pull x quality). Ratings follow the same formula
    under every law (quality, user bias, genre taste, noise).
    """

    taste_strength: float = 3.0
    popularity_exponent: float = 0.9
    quality_pull: float = 0.6
    # Hidden factors: every user and movie gets a random vector of latent_dim numbers that genres do
    # not show; picks are weighted by exp(latent_strength x their dot product) (unit variance) and
    # ratings move by latent_rating x it. 0 = none (the draws of the other laws are unchanged).
    latent_strength: float = 0.0
    latent_rating: float = 0.0
    latent_dim: int = 8

    def __post_init__(self) -> None:
        lows = {
            "taste_strength": 0,
            "popularity_exponent": 0,
            "latent_strength": 0,
            "latent_dim": 1,
        }
        for name, low in lows.items():
            if getattr(self, name) < low:
                raise ConfigError(
                    f"law needs {name} >= {low}, got {getattr(self, name)!r} in {self}"
                )


LAWS: dict[str, Law] = {
    # Picks led by genre taste: the embedded default, on which content features carry the signal.
    "taste": Law(),
    # Picks led by popularity: tastes weak, popular (and good) movies rated by most users, as on
    # catalogs where most-popular is hard to beat.
    "popularity": Law(taste_strength=0.5, popularity_exponent=0.9, quality_pull=1.0),
    # Picks led by hidden factors: weak genre tastes, moderate popularity, and users who pick (and
    # like) movies whose random latent vectors match theirs. Content features cannot see these
    # factors; who watched what together (EASE^R's co-occurrence) can.
    "latent": Law(
        taste_strength=0.5,
        popularity_exponent=0.7,
        quality_pull=0.6,
        latent_strength=1.5,
        latent_rating=0.5,
    ),
}


@dataclass(frozen=True)
class GeneratedData:
    ratings_csv: Path
    movies_csv: Path
    n_ratings: int
    n_users: int
    n_movies: int


def _titles(rng: np.random.Generator, years: np.ndarray) -> list[str]:
    titles = []
    for i, year in enumerate(years):
        name = f"{rng.choice(WORDS_A)} {rng.choice(WORDS_B)} {i + 1}"
        if i % 97 == 5:
            name = f'{name}, The "Director\'s Cut"'
        if i % 151 == 7:
            name = f"{name} \u2013 Édition spéciale"
        titles.append(name if year == 0 else f"{name} ({year})")
    return titles


def generate(
    out_dir: Path,
    n_users: int = 1500,
    n_movies: int = 2500,
    mean_ratings_per_user: float = 80.0,
    seed: int = 7,
    cold_movie_fraction: float = 0.03,
    law: Law | str = "taste",
) -> GeneratedData:
    """Write ``ratings.csv`` and ``movies.csv`` to ``out_dir``; same arguments give the same bytes.

    ``law`` decides what users pick: a :class:`Law` or the name of one in :data:`LAWS`.
    """
    if n_users < 1 or n_movies < 30:
        raise ConfigError(
            f"need n_users >= 1 and n_movies >= 30, got {n_users} users, {n_movies} movies"
        )
    law = LAWS[law] if isinstance(law, str) and law in LAWS else law
    if not isinstance(law, Law):
        raise ConfigError(f"unknown law {law!r}; choose one of {sorted(LAWS)}")
    rng = np.random.default_rng(seed)
    n_g = len(GENRES)
    # Movies: 1-3 genres, a year, a quality and a Zipf-like popularity.
    g_prob = GENRE_WEIGHTS / GENRE_WEIGHTS.sum()
    movie_genres = np.zeros((n_movies, n_g), dtype=bool)
    for i in range(n_movies):
        k = rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15])
        movie_genres[i, rng.choice(n_g, size=k, replace=False, p=g_prob)] = True
    years = np.clip(np.round(2024 - rng.gamma(2.0, 11.0, n_movies)), 1920, 2023).astype(int)
    years[rng.random(n_movies) < 0.01] = 0  # no year in the title
    quality = rng.normal(0.0, 0.45, n_movies)
    popularity = rng.permutation(np.arange(1, n_movies + 1) ** -law.popularity_exponent) * np.exp(
        law.quality_pull * quality
    )
    cold = rng.random(n_movies) < cold_movie_fraction
    popularity[cold] = 0.0
    # Users: 1-3 favourite genres, a rating bias, an activity level.
    taste = rng.normal(-0.3, 0.35, (n_users, n_g))
    for u in range(n_users):
        favs = rng.choice(n_g, size=rng.integers(1, 4), replace=False, p=g_prob)
        taste[u, favs] = rng.uniform(0.8, 1.6, len(favs))
    bias = rng.normal(0.0, 0.35, n_users)
    counts = np.clip(
        rng.lognormal(np.log(mean_ratings_per_user) - 0.5, 1.0, n_users), 20, n_movies // 3
    ).astype(int)
    affinity_all = movie_genres.astype(np.float64) / np.maximum(
        movie_genres.sum(1, keepdims=True), 1
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    titles = _titles(rng, years)
    movies_csv = out_dir / "movies.csv"
    with atomic_path(movies_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["movieId", "title", "genres"])
        for i in range(n_movies):
            names = [GENRES[g] for g in np.flatnonzero(movie_genres[i])]
            writer.writerow(
                [i + 1, titles[i], "|".join(names) if i % 211 != 3 else "(no genres listed)"]
            )
    ratings_csv = out_dir / "ratings.csv"
    start = rng.integers(946_684_800, 1_420_070_400, n_users)  # 2000-01-01 .. 2015-01-01
    n_rows = 0
    sampler: _Sampler | _LatentSampler = _Sampler(movie_genres, popularity, law.taste_strength)
    # drawn only here, so the other laws' bytes stay the same
    if law.latent_strength > 0 or law.latent_rating != 0:
        user_f = rng.normal(0.0, 1.0, (n_users, law.latent_dim))
        movie_f = rng.normal(0.0, 1.0 / np.sqrt(law.latent_dim), (n_movies, law.latent_dim))
        sampler = _LatentSampler(affinity_all, popularity, law, user_f, movie_f)
    with atomic_path(ratings_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        fh.write("userId,movieId,rating,timestamp\n")
        for lo in range(0, n_users, USER_BLOCK):
            users = range(lo, min(lo + USER_BLOCK, n_users))
            block = _rate_block(
                rng, users, sampler, quality, affinity_all, taste, bias, counts, start
            )
            block.to_csv(fh, header=False, index=False, float_format="%.1f", lineterminator="\n")
            n_rows += len(block)
    return GeneratedData(ratings_csv, movies_csv, n_rows, n_users, n_movies)


class _Sampler:
    """Draws movies with probability proportional to popularity x exp(taste_strength x genre
    affinity).

    Movies are grouped by their genre set (a few hundred groups), so a user's
    weights are computed per group, not per movie: pick a group by its total
    popularity times the user's taste for it, then a movie inside the group by
    popularity. Drawing with replacement and keeping first appearances is
    sampling without replacement, so each user's picks follow the same law as
    an exact per-movie weighted draw at a cost per rating, not per catalog movie.
    """

    def __init__(
        self, movie_genres: np.ndarray, popularity: np.ndarray, taste_strength: float = 3.0
    ) -> None:
        self.taste_strength = taste_strength
        groups, self.group_of = np.unique(movie_genres, axis=0, return_inverse=True)
        self.group_affinity = groups / np.maximum(groups.sum(axis=1, keepdims=True), 1)
        self.group_pop = np.bincount(self.group_of, weights=popularity, minlength=len(groups))
        self.order = np.argsort(self.group_of, kind="stable")
        pop = popularity[self.order]
        grp = self.group_of[self.order]
        within = np.cumsum(pop) - np.repeat(
            np.cumsum(self.group_pop) - self.group_pop, np.bincount(grp, minlength=len(groups))
        )
        # increasing: group g spans (g, g + 1]
        self.key = grp + within / np.maximum(self.group_pop[grp], 1e-300)

    def draw(self, rng: np.random.Generator, taste: np.ndarray, count: int) -> np.ndarray:
        weight = self.group_pop * np.exp(self.taste_strength * (self.group_affinity @ taste))
        cdf = np.cumsum(weight)
        cdf /= cdf[-1]
        picks = np.empty(0, dtype=np.int64)
        for _ in range(8):
            n = int(1.3 * (count - len(picks))) + 8
            group = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)
            pos = np.minimum(
                np.searchsorted(self.key, group + rng.random(n), side="left"), len(self.key) - 1
            )
            picks = np.concatenate([picks, self.order[pos]])
            first = np.sort(np.unique(picks, return_index=True)[1])
            picks = picks[first]
            if len(picks) >= count:
                break
        return picks[:count]


class _LatentSampler:
    """Exact per-movie draws for the latent law: weight = popularity x exp(taste x genre affinity +
    latent match).

    The latent match differs per movie, so movies cannot be grouped by genre set as
    :class:`_Sampler` does; the cost is one pass over the catalog per user (Gumbel top-k: sampling
    without replacement).
    """

    def __init__(
        self,
        affinity: np.ndarray,
        popularity: np.ndarray,
        law: Law,
        user_f: np.ndarray,
        movie_f: np.ndarray,
    ) -> None:
        self.affinity, self.law, self.user_f, self.movie_f = affinity, law, user_f, movie_f
        with np.errstate(divide="ignore"):
            self.log_pop = np.log(popularity)  # -inf for cold movies: never drawn

    def match(self, user: int, movies: np.ndarray) -> np.ndarray:
        """The hidden-factor match of ``user`` with ``movies`` (about unit variance)."""
        return np.asarray(self.movie_f[movies] @ self.user_f[user])

    def draw_user(
        self, rng: np.random.Generator, user: int, taste: np.ndarray, count: int
    ) -> np.ndarray:
        law = self.law
        logits = (
            self.log_pop
            + law.taste_strength * (self.affinity @ taste)
            + law.latent_strength * (self.movie_f @ self.user_f[user])
        )
        keys = logits + rng.gumbel(size=len(logits))
        count = min(count, int(np.isfinite(self.log_pop).sum()))
        top = np.sort(np.argpartition(-keys, count - 1)[:count])
        return rng.permutation(top)  # in random order: times are handed out in pick order


def _rate_block(
    rng: np.random.Generator,
    users: range,
    sampler: _Sampler | _LatentSampler,
    quality: np.ndarray,
    affinity_all: np.ndarray,
    taste: np.ndarray,
    bias: np.ndarray,
    counts: np.ndarray,
    start: np.ndarray,
) -> pd.DataFrame:
    """Ratings of a block of users, with half-star ratings and times over each user's active
    period.
    """
    parts = []
    for u in users:
        if isinstance(sampler, _LatentSampler):
            picks = sampler.draw_user(rng, u, taste[u], int(counts[u]))
            hidden = sampler.law.latent_rating * sampler.match(u, picks)
        else:
            picks = sampler.draw(rng, taste[u], int(counts[u]))
            hidden = np.zeros(len(picks))
        aff = affinity_all[picks] @ taste[u]
        raw = 3.5 + bias[u] + quality[picks] + 0.9 * aff + hidden + rng.normal(0, 0.55, len(picks))
        # active periods overlap, as in MovieLens
        span = rng.integers(30 * 86_400, 8 * 365 * 86_400)
        times = np.sort(start[u] + rng.integers(0, span, len(picks)))
        parts.append(
            (np.full(len(picks), u + 1), picks + 1, np.clip(np.round(raw * 2) / 2, 0.5, 5.0), times)
        )
    cols = [np.concatenate(c) for c in zip(*parts, strict=True)] if parts else [np.zeros(0)] * 4
    return pd.DataFrame(
        {"userId": cols[0], "movieId": cols[1], "rating": cols[2], "timestamp": cols[3]}
    )
