"""The ingested ratings and movies, read back from the store: schema-checked, as data frames.

Also the content hash of a night's two input files, which names the store directory they are
ingested into.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.store import schemas
from tasks.store.storage import read_table, sha256_file


def input_hash(ratings_src: Path, movies_src: Path) -> str:
    """Content hash of the two input files (what the store is keyed on)."""
    return sha256_file(Path(ratings_src))[:32] + sha256_file(Path(movies_src))[:32]


def load_ratings(path: Path) -> pd.DataFrame:
    frame: pd.DataFrame = read_table(Path(path), schemas.RATINGS, "ratings").to_pandas()
    return frame


def load_movies(path: Path) -> pd.DataFrame:
    frame: pd.DataFrame = read_table(Path(path), schemas.MOVIES, "movies").to_pandas()
    return frame
