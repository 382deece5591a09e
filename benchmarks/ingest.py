"""Ingest throughput benchmark (issue 4): towerflow's CSV -> Parquet against pyarrow's own, same
file, same run.

(a) ``pyarrow.csv.read_csv`` + ``pyarrow.parquet.write_table`` of the ratings and movies files, and
(b) ``tasks.ingestion.ingest.ingest`` of the same two files (streamed, checked, quarantine,
duplicate check, zstd Parquet), each in a fresh subprocess, alternating, best of ``--repeat``.
Prints rows/s of both, the ratio (target >= 0.7), the peak RSS of each child, and the machine. The
peak RSS of (b) is also measured on a file a fifth the size, to show what grows with the file and
what does not.

    .venv/bin/python benchmarks/ingest.py [--ratings ratings.csv --movies movies.csv]
        [--rows 5000000]

Without ``--ratings`` it writes a synthetic MovieLens-format file (unique user/movie pairs,
half-star ratings) to a temporary directory that is removed afterwards. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

TARGET = 0.7


def write_synthetic(
    out_dir: Path, rows: int, n_movies: int = 60_000, seed: int = 4
) -> tuple[Path, Path]:
    """A ratings.csv as GroupLens writes it (sorted by user, then movie; unique pairs) and its
    movies.csv.
    """
    rng = np.random.default_rng(seed)
    per_user = np.clip(rng.lognormal(4.2, 0.9, rows // 40 + 10).astype(np.int64), 20, 2000)
    per_user = per_user[: int(np.searchsorted(np.cumsum(per_user), rows)) + 1]
    per_user[-1] -= per_user.sum() - rows
    users = np.repeat(np.arange(1, len(per_user) + 1), per_user)
    k = np.arange(rows) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    movies = (
        np.repeat(rng.integers(0, n_movies, len(per_user)), per_user) + k * 7919
    ) % n_movies + 1  # 7919 is prime
    # users are already in order; movies ascending within each
    movies = movies[np.lexsort((movies, users))]
    stars = np.array([f"{s / 2:.1f}" for s in range(1, 11)])
    start = np.repeat(rng.integers(946_684_800, 1_600_000_000, len(per_user)), per_user)
    times = start + rng.integers(0, 3 * 365 * 86_400, rows)
    table = pa.table(
        {
            "userId": users,
            "movieId": movies,
            "rating": pa.array(stars[rng.integers(0, 10, rows)]),
            "timestamp": times,
        }
    )
    ratings = out_dir / "ratings.csv"
    with open(ratings, "wb") as fh:
        fh.write(b"userId,movieId,rating,timestamp\n")
        pacsv.write_csv(
            table, fh, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none")
        )
    movies_csv = out_dir / "movies.csv"
    movies_csv.write_text(
        "movieId,title,genres\n"
        + "".join(f"{i},Movie {i} ({1950 + i % 70}),Drama\n" for i in range(1, n_movies + 1))
    )
    return ratings, movies_csv


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss would include the parent's size at fork)."""
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, ratings: Path, movies: Path, work: Path) -> None:
    """Run one measured conversion and print JSON: seconds, rows, peak RSS in MiB."""
    import shutil

    import pyarrow.parquet as pq

    from tasks.ingestion.ingest import ingest  # imported before the clock starts, as pyarrow is

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if kind == "pyarrow":
        table = pacsv.read_csv(ratings)
        pq.write_table(table, work / "ratings.parquet")
        # towerflow converts the catalog too
        pq.write_table(pacsv.read_csv(movies), work / "movies.parquet")
        rows = table.num_rows
    else:
        _, _, stats = ingest(ratings, movies, work, max_reject_share=1.0)
        rows = stats.rows_read
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    print(
        json.dumps(
            {"seconds": seconds, "cpu_seconds": cpu, "rows": rows, "rss_mib": peak_rss_mib()}
        )
    )


def measure(kind: str, ratings: Path, movies: Path, work: Path) -> dict[str, float]:
    argv = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--ratings",
        str(ratings),
        "--movies",
        str(movies),
        "--work",
        str(work),
    ]
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, "
        f"pyarrow {pa.__version__}, numpy {np.__version__}; load average at start {load}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratings", type=Path, help="a MovieLens ratings.csv (default: synthetic)")
    parser.add_argument("--movies", type=Path, help="the movies.csv that goes with --ratings")
    parser.add_argument(
        "--rows",
        type=int,
        default=5_000_000,
        help="rows of the synthetic file (default: 5,000,000)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each, alternating; the best counts (default: 3)",
    )
    parser.add_argument("--child", choices=["pyarrow", "towerflow"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.ratings, args.movies, args.work)
        return 0
    if (args.ratings is None) != (args.movies is None):
        parser.error("give both --ratings and --movies, or neither")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="towerflow-bench-ingest-") as tmp:
        tmp_dir = Path(tmp)
        if args.ratings is None:
            started = time.perf_counter()
            ratings, movies = write_synthetic(tmp_dir, args.rows)
            print(f"wrote {args.rows:,} synthetic ratings in {time.perf_counter() - started:.1f} s")
        else:
            ratings, movies = args.ratings, args.movies
        print(f"file: {ratings} ({ratings.stat().st_size / 2**20:,.0f} MiB)")
        best: dict[str, dict[str, float]] = {}
        for i in range(args.repeat):
            for kind in ("pyarrow", "towerflow"):
                r = measure(kind, ratings, movies, tmp_dir / kind)
                rate = r["rows"] / r["seconds"] / 1e6
                cpu = f"CPU {r['cpu_seconds']:5.2f} s"
                print(
                    f"  run {i + 1} {kind:<9} {r['seconds']:6.2f} s  {rate:5.2f} M rows/s  "
                    f"{cpu}  peak RSS {r['rss_mib']:,.0f} MiB"
                )
                if kind not in best or r["seconds"] < best[kind]["seconds"]:
                    best[kind] = r
        rates = {kind: r["rows"] / r["seconds"] for kind, r in best.items()}
        ratio = rates["towerflow"] / rates["pyarrow"]
        print(
            f"pyarrow read_csv + write_table: {rates['pyarrow'] / 1e6:.2f} M rows/s (best of "
            f"{args.repeat})"
        )
        print(
            f"towerflow ingest:               {rates['towerflow'] / 1e6:.2f} M rows/s (best "
            f"of {args.repeat})"
        )
        print(f"ratio {ratio:.2f} (target >= {TARGET}): {'met' if ratio >= TARGET else 'NOT met'}")
        if args.ratings is None:
            small_dir = tmp_dir / "small"
            small_dir.mkdir()
            small, small_movies = write_synthetic(small_dir, args.rows // 5)
            s = measure("towerflow", small, small_movies, tmp_dir / "towerflow-small")
            p = measure("pyarrow", small, small_movies, tmp_dir / "pyarrow-small")
            tf, pa_ = best["towerflow"]["rss_mib"], best["pyarrow"]["rss_mib"]
            print(
                f"peak RSS, {args.rows // 5:,} -> {args.rows:,} rows: towerflow "
                f"{s['rss_mib']:,.0f} -> {tf:,.0f} MiB, ",
                end="",
            )
            print(f"pyarrow {p['rss_mib']:,.0f} -> {pa_:,.0f} MiB")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
