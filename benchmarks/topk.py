"""Top-k benchmark: towerflow's FAISS top-k with seen movies excluded vs a blocked numpy reference.

Both run in the same process on the same embeddings and the same seen sets:

- ``matmul only``: blocked ``users @ movies.T`` scores, nothing else (the physical floor);
- ``numpy reference``: the same blocks + seen movies set to -inf + ``argpartition`` top-k + sort;
- ``towerflow``: :func:`tasks.serving.recommend.topk_unseen` over the exact inner-product FAISS
  index.

Seen sets come from a ratings file (default: the project's generator at 2.5M ratings,
written once to --work); embeddings are random unit vectors of dimension 32 (the cost of
exact search does not depend on their values). Results are checked to be the same movies.

    .venv/bin/python benchmarks/topk.py [--ratings PATH] [--k 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from tasks.runtime import default_threads, set_thread_env

set_thread_env(default_threads())

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402

from tasks.modeling.model import l2_normalize  # noqa: E402
from tasks.serving.export import build_index  # noqa: E402
from tasks.serving.recommend import topk_unseen  # noqa: E402

BLOCK = 2048


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    versions = (
        f"Python {platform.python_version()}; numpy {np.__version__}; faiss {faiss.__version__}"
    )
    return f"{cpu}; {len(os.sched_getaffinity(0))} cores; {versions}"


def load_seen(path: Path) -> tuple[int, int, np.ndarray, np.ndarray]:
    table = pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(include_columns=["userId", "movieId"])
    )
    users = np.unique(table.column("userId").to_numpy(), return_inverse=True)[1]
    movies = np.unique(table.column("movieId").to_numpy(), return_inverse=True)[1]
    order = np.lexsort((movies, users))
    indptr = np.zeros(users.max() + 2, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=users.max() + 1), out=indptr[1:])
    return int(users.max() + 1), int(movies.max() + 1), indptr, movies[order].astype(np.int64)


def load_published(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Trained embeddings of a published run and the seen sets of its ingested ratings."""
    from tasks.serving.export import read_embeddings
    from tasks.serving.recommend import seen_csr
    from tasks.store.storage import read_json
    from tasks.store.tables import load_ratings

    latest = read_json(data_dir / "outputs" / "latest.json")
    user_ids, q = read_embeddings(data_dir / latest["model"]["user_embeddings"]["path"], "user")
    movie_ids, m = read_embeddings(data_dir / latest["model"]["movie_embeddings"]["path"], "movie")
    ratings = load_ratings(data_dir / "store" / latest["inputs"]["sha256"] / "ratings.parquet")
    indptr, rows = seen_csr(ratings, user_ids, movie_ids)
    return q, m, indptr, rows, f"{data_dir} (model {latest['model_version']})"


def matmul_only(q: np.ndarray, m: np.ndarray) -> float:
    total = 0.0
    for s in range(0, len(q), BLOCK):
        total += float((q[s : s + BLOCK] @ m.T)[0, 0])
    return total


def numpy_reference(
    q: np.ndarray, m: np.ndarray, indptr: np.ndarray, rows: np.ndarray, k: int
) -> np.ndarray:
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), BLOCK):
        e = min(s + BLOCK, len(q))
        scores = q[s:e] @ m.T
        lo, hi = indptr[s], indptr[e]
        local = np.repeat(np.arange(e - s), np.diff(indptr[s : e + 1]))
        scores[local, rows[lo:hi]] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        best = np.take_along_axis(scores, top, axis=1)
        out[s:e] = np.take_along_axis(top, np.argsort(-best, axis=1), axis=1)
    return out


def towerflow_topk(
    index: faiss.Index, q: np.ndarray, indptr: np.ndarray, rows: np.ndarray, k: int
) -> np.ndarray:
    out = np.empty((len(q), k), dtype=np.int64)
    for users, rank, items, _ in topk_unseen(index, q, indptr, rows, k):
        out[users, rank - 1] = items
    return out


def best_of(repeat: int, fn: object, *args: object) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn(*args)  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ratings", type=Path, help="ratings.csv whose users' histories are the seen sets"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="a published run: use its trained embeddings and its ingested ratings",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/towerflow-bench"),
        help="where generated data is kept",
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.ratings is None:
        from tasks.sources.generate import generate

        args.ratings = args.work / "2m5" / "ratings.csv"
        if not args.ratings.exists():
            print("generating 2.5M ratings (16,000 users, 20,000 movies) ...", flush=True)
            generate(args.work / "2m5", n_users=16_000, n_movies=20_000, mean_ratings_per_user=156)
    threads = default_threads()
    faiss.omp_set_num_threads(threads)
    if args.data_dir is not None:
        q, m, indptr, rows, source = load_published(args.data_dir)
        n_users, n_movies = len(q), len(m)
    else:
        n_users, n_movies, indptr, rows = load_seen(args.ratings)
        rng = np.random.default_rng(0)
        q = np.asarray(l2_normalize(rng.normal(size=(n_users, args.dim)).astype(np.float32)))
        m = np.asarray(l2_normalize(rng.normal(size=(n_movies, args.dim)).astype(np.float32)))
        source = f"{args.ratings}, random unit embeddings"
    counts = np.diff(indptr)
    print(f"machine: {machine()}; threads {threads}")
    print(f"data: {source} -> {n_users:,} users x {n_movies:,} movies, {len(rows):,} seen")
    print(f"history length: median {int(np.median(counts))}, max {counts.max():,}")
    index = build_index(m)
    t_mm, _ = best_of(args.repeat, matmul_only, q, m)
    t_ref, ref = best_of(args.repeat, numpy_reference, q, m, indptr, rows, args.k)
    t_tf, got = best_of(args.repeat, towerflow_topk, index, q, indptr, rows, args.k)
    pairs = zip(ref, got, strict=True)  # type: ignore[arg-type]
    same = np.mean([len(set(a) & set(b)) / args.k for a, b in pairs])
    print(f"matmul only (floor):            {t_mm:7.3f} s")
    print(f"numpy reference (mask + top-k): {t_ref:7.3f} s")
    print(f"towerflow FAISS top-k:          {t_tf:7.3f} s")
    print(
        f"ratio towerflow / reference = {t_tf / t_ref:.2f} (target <= 1.5); towerflow / "
        f"matmul floor = {t_tf / t_mm:.2f}"
    )
    print(f"same movies as the reference: {same:.4f}")
    return 0 if t_tf / t_ref <= 1.5 and same > 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
