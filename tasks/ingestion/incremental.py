"""Incremental nights: new ratings arrive as extra files; each night ingests only what is new.

``--ratings`` given several times, or a drop folder (every ``*.csv``, ``*.csv.gz``,
``*.parquet`` in it, by name), switches ingest to the ledger ``store/ingested.json``:
each file's sha256 maps to its name, row counts and date. A file whose content is in
the ledger (under any name) is skipped and counted; a new one is ingested on its own
(the usual checks and rejects) into ``store/parts/<hash>/`` and then recorded. The
model trains on every part in the ledger: they are combined into
``store/<cumulative hash>/ratings.parquet``, keeping the latest rating of each
(user, movie) across files (ties: the later-ingested file).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.ingestion.duplicates import STORE_OPTIONS
from tasks.ingestion.ingest import ingest
from tasks.ingestion.movies import ingest_movies
from tasks.ingestion.rejects import InputError, rejects_path
from tasks.store import schemas
from tasks.store.storage import TableWriter, read_json, sha256_file, sha256_text, write_json

SUFFIXES = (".csv", ".csv.gz", ".parquet")
_SUMMED = (
    "rows_read",
    "rows_accepted",
    "rows_rejected",
    "duplicates_dropped",
    "unknown_movie_dropped",
    "blank_lines",
)


def is_incremental(ratings: str | list[str] | None) -> TypeGuard[str | list[str]]:
    """Several ratings files, or a folder: the ledger applies. One file keeps the single-file
    ingest.
    """
    if isinstance(ratings, list):
        return len(ratings) > 1 or (len(ratings) == 1 and Path(ratings[0]).is_dir())
    return ratings is not None and Path(ratings).is_dir()


def expand(ratings: str | list[str]) -> list[Path]:
    """The ratings files named: folders expand to their ratings files, sorted by name."""
    out: list[Path] = []
    for item in [ratings] if isinstance(ratings, str) else ratings:
        path = Path(item).resolve()
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES)
            )
            if not found:
                raise InputError(
                    f"{path}: no ratings files (*.csv, *.csv.gz, *.parquet) in the drop folder"
                )
            out.extend(found)
        elif not path.exists():
            raise InputError(f"{path}: ratings file not found")
        else:
            out.append(path)
    return out


def ledger_path(data_dir: Path) -> Path:
    return Path(data_dir) / "store" / "ingested.json"


def ingest_part(
    src: Path, movies_src: Path, part: Path, rejects: Path, max_reject_share: float
) -> dict[str, Any]:
    """Ingest one new ratings file into its own part of the store; its ingest stats."""
    return ingest(
        Path(src),
        Path(movies_src),
        Path(part),
        rejects_path=Path(rejects),
        max_reject_share=max_reject_share,
    )[2].to_dict()


def run_incremental_ingest(
    ratings: str | list[str],
    movies_src: Path,
    data_dir: Path,
    run_date: dt.date,
    max_reject_share: float = 0.01,
    run_files: Callable[[list[dict[str, str]]], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Ingest the files not in the ledger; return the cumulative store's paths, its hash and the
    stats.

    ``run_files`` ingests the new files (a list of jobs: src, part, rejects)
    and returns their stats in the same order; the flow passes one that runs
    a task per file on its task runner. By default they are ingested in turn.
    The ledger is updated in file order after each result.
    """
    data_dir = Path(data_dir)
    ledger_file = ledger_path(data_dir)
    ledger: dict[str, Any] = read_json(ledger_file) if ledger_file.exists() else {}
    totals: dict[str, Any] = dict.fromkeys(_SUMMED, 0)
    by_reason: dict[str, int] = {}
    skipped = 0
    jobs: list[dict[str, str]] = []
    for src in expand(ratings):
        digest = sha256_file(src)
        if digest in ledger or any(j["digest"] == digest for j in jobs):
            skipped += 1
            continue
        part = data_dir / "store" / "parts" / digest[:32]
        jobs.append(
            {
                "src": str(src),
                "digest": digest,
                "part": str(part),
                "rejects": str(rejects_path(data_dir, run_date, digest)),
            }
        )
    if run_files is None:
        results = [
            ingest_part(
                Path(j["src"]),
                Path(movies_src),
                Path(j["part"]),
                Path(j["rejects"]),
                max_reject_share,
            )
            for j in jobs
        ]
    else:
        results = run_files(jobs)
    first_rejects: Path | None = None
    for job, s in zip(jobs, results, strict=True):
        src, part = Path(job["src"]), Path(job["part"])
        for key in _SUMMED:
            totals[key] += s[key]
        for reason, n in s["rejected_by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
        first_rejects = first_rejects or Path(job["rejects"])
        ledger[job["digest"]] = {
            "name": src.name,
            "path": str(src),
            "part": str((part / "ratings.parquet").relative_to(data_dir)),
            "rows_read": s["rows_read"],
            "rows_accepted": s["rows_accepted"],
            "rows_rejected": s["rows_rejected"],
            "ingested_on": run_date.isoformat(),
            "order": len(ledger),
        }
        write_json(ledger_file, ledger)  # after each file: a crash later keeps what was ingested
    new = len(jobs)
    movies_hash = sha256_file(Path(movies_src))
    order = sorted(ledger, key=lambda d: ledger[d]["order"])
    input_hash = sha256_text(*order, movies_hash)
    store = data_dir / "store" / input_hash
    movies = ingest_movies(Path(movies_src), store / "movies.parquet")
    cross_dups, users, total = combine(
        [data_dir / ledger[d]["part"] for d in order], store / "ratings.parquet"
    )
    read = totals["rows_read"]
    stats = {
        **totals,
        # older ratings of a (user, movie) rated again in a later file, all parts
        "duplicates_across_files": cross_dups,
        "users": users,
        "movies": movies.movies,
        "rejected_by_reason": by_reason,
        "reject_share": round(totals["rows_rejected"] / read, 6) if read else 0.0,
        "max_reject_share": max_reject_share,
        "rejects_path": str(
            (first_rejects or rejects_path(data_dir, run_date, input_hash)).relative_to(data_dir)
        ),
        "movies_without_year": movies.without_year,
        "movies_without_genres": movies.without_genres,
        "unknown_genres": movies.unknown_genres,
        "files_new": new,
        "files_skipped": skipped,
        "files_total": len(ledger),
        "rows_total": total,
    }
    return {
        "ratings": str(store / "ratings.parquet"),
        "movies": str(movies.path),
        "input_hash": input_hash,
        "stats": stats,
    }


def combine(parts: list[Path], dest: Path) -> tuple[int, int, int]:
    """Write ``parts`` (in ingest order) to ``dest`` keeping the latest rating per (user, movie);
    (dropped, users, rows).

    Ties on the timestamp go to the later part. Each part is already free of duplicates.
    """
    tables = [pq.read_table(p) for p in parts]
    table = pa.concat_tables(tables).select(schemas.RATINGS.names)
    source = np.concatenate([np.full(t.num_rows, i, dtype=np.int32) for i, t in enumerate(tables)])
    user = table.column("user_id").to_numpy()
    key = (user << 31) | table.column("movie_id").to_numpy()
    order = np.lexsort((source, table.column("timestamp").to_numpy(), key))
    last = np.ones(len(order), dtype=bool)
    last[:-1] = key[order][1:] != key[order][:-1]
    keep = np.zeros(len(order), dtype=bool)
    keep[order[last]] = True
    writer = TableWriter(dest, schemas.RATINGS, "ratings", **STORE_OPTIONS)
    try:
        writer.write(table.filter(pa.array(keep)))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return int((~keep).sum()), len(np.unique(user)), int(keep.sum())
