"""Check a data directory's published outputs against every rule of the contract.

    .venv/bin/python benchmarks/check_contract.py --data-dir data --ratings path/to/ratings.csv

Prints one line per rule and exits non-zero if any rule fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from tasks.serving.export import read_embeddings


def check(data_dir: Path, ratings_csv: Path) -> list[tuple[str, bool]]:
    latest = json.loads((data_dir / "outputs" / "latest.json").read_text())
    k = int(latest["k"])
    date = latest["run_date"]
    ratings = (
        pd.read_csv(ratings_csv) if ratings_csv.suffix == ".csv" else pd.read_parquet(ratings_csv)
    )
    recs = (
        ds.dataset(data_dir / "outputs" / "recommendations", partitioning="hive")
        .to_table()
        .to_pandas()
    )
    recs = recs[recs.run_date.astype(str) == date].sort_values(["user_id", "rank"])
    sim = (
        ds.dataset(data_dir / "outputs" / "similar_movies", partitioning="hive")
        .to_table()
        .to_pandas()
    )
    sim = sim[sim.run_date.astype(str) == date]
    uid, uemb = read_embeddings(data_dir / latest["model"]["user_embeddings"]["path"], "user")
    mid, memb = read_embeddings(data_dir / latest["model"]["movie_embeddings"]["path"], "movie")
    seen = pd.MultiIndex.from_arrays([ratings.userId, ratings.movieId])
    per_user = recs.groupby("user_id").size()
    unrated = len(mid) - ratings.groupby("userId").size()
    expected = np.minimum(k, unrated.reindex(per_user.index).to_numpy())
    inner = np.einsum(
        "ij,ij->i",
        uemb[pd.Index(uid).get_indexer(recs.user_id)],
        memb[pd.Index(mid).get_indexer(recs.movie_id)],
    )
    return [
        ("every ingested user has recommendations", set(recs.user_id) == set(ratings.userId)),
        (
            f"exactly k={k} rows per user (fewer only when fewer unrated movies exist)",
            bool((per_user.to_numpy() == expected).all()),
        ),
        (
            "no recommended movie was already rated",
            not pd.MultiIndex.from_arrays([recs.user_id, recs.movie_id]).isin(seen).any(),
        ),
        (
            "scores do not increase with rank",
            bool((recs.groupby("user_id").score.diff().dropna() <= 1e-7).all()),
        ),
        (
            "score = inner product of the published embeddings",
            bool(np.allclose(inner, recs.score, atol=1e-5)),
        ),
        (
            "movie embeddings are unit vectors",
            bool(np.allclose(np.linalg.norm(memb, axis=1), 1.0, atol=1e-4)),
        ),
        (
            "predicted_rating within 0.5-5 stars",
            bool(recs.predicted_rating.between(0.5, 5.0).all()),
        ),
        (
            f"k={k} similar movies per catalog movie",
            bool((sim.groupby("movie_id").size() == k).all())
            and len(set(sim.movie_id)) == len(mid),
        ),
        (
            "a similar movie is never the movie itself",
            not (sim.movie_id == sim.similar_movie_id).any(),
        ),
        (
            "row counts match latest.json",
            len(recs) == latest["tables"]["recommendations"]["rows"]
            and len(sim) == latest["tables"]["similar_movies"]["rows"],
        ),
        (
            "latest.json lists exactly the part files of each table's partition",
            _parts_listed(data_dir, latest),
        ),
    ]


def _parts_listed(data_dir: Path, latest: dict) -> bool:
    """Each table's ``files`` are all the Parquet files under its ``path``, and their rows add up to
    ``rows``.
    """
    import pyarrow.parquet as pq

    for info in latest["tables"].values():
        files = info.get("files", [info["path"]])  # runs before sharding named one file
        on_disk = (
            sorted(
                str(f.relative_to(data_dir)) for f in (data_dir / info["path"]).glob("*.parquet")
            )
            if "files" in info
            else files
        )
        if (
            sorted(files) != on_disk
            or sum(pq.ParquetFile(data_dir / f).metadata.num_rows for f in files) != info["rows"]
        ):
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument(
        "--ratings", type=Path, required=True, help="the ratings file the run ingested"
    )
    args = parser.parse_args()
    results = check(args.data_dir, args.ratings)
    for rule, ok in results:
        print(f"{'ok  ' if ok else 'FAIL'} {rule}")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
