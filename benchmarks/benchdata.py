"""The data sets the quality benchmarks judge on: real MovieLens and generated sets of other shapes.

A preset tuned on one data set is a trap, so every quality figure is measured on at least two:
ml-latest-small (taste-led, from ../shared beside the repository) and a popularity-led catalog
made by the project's generator (``towerflow generate --law popularity``), and one whose tastes
live in hidden factors (``--law latent``), generated once under the work directory and reused;
a disjoint half of ml-latest-small's users (odd or even ids) is a second real set, and its most
rated movies with the users who rated many of them (:func:`dense_cut`) a third, shaped like the
denser, older MovieLens releases (ml-100k: 943 users, 1,682 movies, at least 20 ratings each).
:func:`earlier_release` cuts it by time into the release it would have been on an earlier date, and
:func:`without_years` takes the years out of its titles, as in the older releases whose titles have
none (the year is one of the towers' content features, so its loss shows how much rests on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens"
# name: (users, movies, mean ratings per user)
GENERATED_SIZES = {"600k": (4_000, 5_000, 150.0), "2.5m": (16_000, 20_000, 156.0)}


@dataclass(frozen=True)
class DataSet:
    name: str
    ratings: Path
    movies: Path


def movielens(directory: Path = SHARED / "ml-latest-small") -> DataSet:
    if not (directory / "ratings.csv").exists():
        raise SystemExit(
            f"no ratings.csv in {directory}; download ml-latest-small from GroupLens and "
            "pass its directory"
        )
    return DataSet(directory.name, directory / "ratings.csv", directory / "movies.csv")


def half_users(data: DataSet, half: str, work: Path) -> DataSet:
    """The users of ``data`` with an odd (``half="odd"``) or even id: a disjoint half, written once
    under ``work``.
    """
    import pandas as pd

    if half not in ("odd", "even"):
        raise SystemExit(f"half must be 'odd' or 'even', got {half!r}")
    out = work / f"{data.name}-{half}-users"
    if not (out / "ratings.csv").exists():
        out.mkdir(parents=True, exist_ok=True)
        raw = pd.read_csv(data.ratings)
        raw[raw["userId"] % 2 == (1 if half == "odd" else 0)].to_csv(
            out / "ratings.csv", index=False
        )
    return DataSet(f"{data.name} {half} users", out / "ratings.csv", data.movies)


def dense_cut(data: DataSet, movies: int, work: Path, min_ratings: int = 20) -> DataSet:
    """The ``movies`` most rated movies of ``data`` and their ratings by users with at least
    ``min_ratings`` of them (ratings and catalog both cut), written once under ``work``.
    """
    import pandas as pd

    out = work / f"{data.name}-dense-{movies}"
    if not (out / "ratings.csv").exists():
        out.mkdir(parents=True, exist_ok=True)
        raw = pd.read_csv(data.ratings)
        kept = raw["movieId"].value_counts().index[:movies]
        raw = raw[raw["movieId"].isin(kept)]
        counts = raw["userId"].value_counts()
        raw = raw[raw["userId"].isin(counts.index[counts >= min_ratings])]
        raw.to_csv(out / "ratings.csv", index=False)
        catalog = pd.read_csv(data.movies)
        catalog[catalog["movieId"].isin(kept)].to_csv(out / "movies.csv", index=False)
    return DataSet(f"{data.name} dense {movies}", out / "ratings.csv", out / "movies.csv")


def earlier_release(data: DataSet, before: str, work: Path, min_ratings: int = 20) -> DataSet:
    """The ratings of ``data`` made before the date ``before`` (YYYY-MM-DD), by the users with at
    least ``min_ratings`` of them, and the catalog of the movies they rated, as a release made on
    that date would hold them; written once under ``work``.
    """
    import pandas as pd

    try:
        cut = pd.Timestamp(before, tz="UTC").timestamp()
    except ValueError as err:
        raise SystemExit(f"--movielens-before must be a date YYYY-MM-DD, got {before!r}") from err
    out = work / f"{data.name}-before-{before}"
    if not (out / "ratings.csv").exists():
        out.mkdir(parents=True, exist_ok=True)
        raw = pd.read_csv(data.ratings)
        raw = raw[raw["timestamp"] < cut]
        counts = raw["userId"].value_counts()
        raw = raw[raw["userId"].isin(counts.index[counts >= min_ratings])]
        raw.to_csv(out / "ratings.csv", index=False)
        catalog = pd.read_csv(data.movies)
        catalog[catalog["movieId"].isin(raw["movieId"].unique())].to_csv(
            out / "movies.csv", index=False
        )
    return DataSet(f"{data.name} before {before}", out / "ratings.csv", out / "movies.csv")


def without_years(data: DataSet, work: Path) -> DataSet:
    """``data`` with the ``(YYYY)`` taken off every title (the ratings unchanged), written once
    under ``work``.
    """
    import pandas as pd

    out = work / f"{data.name.replace(' ', '-')}-no-years"
    if not (out / "movies.csv").exists():
        out.mkdir(parents=True, exist_ok=True)
        catalog = pd.read_csv(data.movies)
        catalog["title"] = (
            catalog["title"]
            .str.strip()
            .str.replace(r"\s*\(\d{4}(?:\s*[-\u2013]\s*\d{4})?\)$", "", regex=True)
        )
        catalog.to_csv(out / "movies.csv", index=False)
    return DataSet(f"{data.name} no years", data.ratings, out / "movies.csv")


def generated(law: str, size: str, work: Path, seed: int = 7) -> DataSet:
    """A generated data set (written once under ``work``)."""
    from tasks.sources.generate import generate

    users, movies, per_user = GENERATED_SIZES[size]
    out = work / f"{law}-{size}-seed{seed}"
    if not (out / "ratings.csv").exists():
        generate(
            out, n_users=users, n_movies=movies, mean_ratings_per_user=per_user, seed=seed, law=law
        )
    return DataSet(f"generated {law}-led {size}", out / "ratings.csv", out / "movies.csv")
