"""Ingest MovieLens ratings and movies (CSV as GroupLens publishes it, gzip CSV, or Parquet).

Ratings stream block by block (:mod:`tasks.ingestion.ratings_csv`) into the Parquet
store; a malformed row is quarantined in the rejects table with its line and
reason (:mod:`tasks.ingestion.rejects`), and the run fails only when the rejected share
exceeds ``max_reject_share``. A malformed *file* (missing columns, empty,
header only, wrong delimiter, not UTF-8) and any bad row of the movie catalog
stop the run with an :class:`InputError` naming the file, line and column.

Counts reconcile: ``rows_read = rows_accepted + rows_rejected + duplicates_dropped``
(blank lines are skipped and counted apart, they are not rows).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.parquet as pq

from tasks.ingestion.checks import Catalog
from tasks.ingestion.duplicates import STORE_OPTIONS, KeyBuffer, drop_duplicates, keys_of
from tasks.ingestion.movies import MovieStats, ingest_movies
from tasks.ingestion.ratings_csv import BLOCK, RatingsReader
from tasks.ingestion.rejects import InputError, RejectLog, RejectThresholdError, check_share
from tasks.stage_results import Ingested
from tasks.store import schemas
from tasks.store.storage import TableWriter, read_table

__all__ = [
    "IngestStats",
    "InputError",
    "MovieStats",
    "RejectThresholdError",
    "ingest",
    "ingest_movies",
    "ingest_ratings",
]

DEFAULT_MAX_REJECT_SHARE = 0.01
T = TypeVar("T")


@dataclass(frozen=True)
class IngestStats:
    """What ingest read, kept and rejected; reaches ``latest.json`` under ``ingest`` and the run
    summary.
    """

    rows_read: int
    rows_accepted: int
    rows_rejected: int
    duplicates_dropped: int
    users: int
    movies: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    unknown_movie_dropped: int = 0
    blank_lines: int = 0
    reject_share: float = 0.0
    max_reject_share: float = DEFAULT_MAX_REJECT_SHARE
    rejects_path: str | None = None
    movies_without_year: int = 0
    movies_without_genres: int = 0
    unknown_genres: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ingest_ratings(
    src: Path,
    movies_path: Path,
    dest: Path,
    block_size: int = BLOCK,
    *,
    rejects_path: Path | None = None,
    max_reject_share: float = DEFAULT_MAX_REJECT_SHARE,
    now: int | None = None,
    movies_name: str = "the movies file",
) -> IngestStats:
    """Stream ratings into the store; quarantine bad rows; keep the latest of duplicate (user,
    movie) rows.

    ``now`` (epoch seconds, default: when the ingest starts) is the limit for
    timestamps. The rejects table (default ``rejects.parquet`` beside ``dest``)
    is published even when the run then fails on ``max_reject_share``.
    """
    src, dest = Path(src), Path(dest)
    if not src.exists():
        raise InputError(f"{src}: ratings file not found")
    rejects_path = (
        Path(rejects_path) if rejects_path is not None else dest.with_name("rejects.parquet")
    )
    catalog = (
        read_table(movies_path, schemas.MOVIES, "movies", columns=["movie_id"])
        .column("movie_id")
        .to_numpy()
    )
    reader = RatingsReader(
        src, Catalog(catalog), int(time.time()) if now is None else now, movies_name, block_size
    )
    writer = TableWriter(dest, schemas.RATINGS, "ratings", **STORE_OPTIONS)
    log = RejectLog(rejects_path)
    keys = KeyBuffer(_row_bound(src))
    read = blank = 0
    try:
        for chunk, chunk_keys in prefetch(
            (chunk, keys_of(chunk.accepted)) for chunk in reader.chunks()
        ):
            read += chunk.rows
            blank += chunk.blank_lines
            if chunk.accepted.num_rows:
                writer.write(chunk.accepted)
                keys.add(chunk_keys)
            log.write(chunk.rejects)
        if read == 0:
            raise InputError(f"{src}: no ratings (header only?)")
    except BaseException:
        writer.abort()
        log.abort()
        raise
    log.close()
    rejected = log.rows
    stats = IngestStats(
        rows_read=read,
        rows_accepted=read - rejected,
        rows_rejected=rejected,
        duplicates_dropped=0,
        users=0,
        movies=len(catalog),
        rejected_by_reason=dict(log.by_reason.most_common()),
        unknown_movie_dropped=log.by_reason.get("unknown_movie", 0),
        blank_lines=blank,
        reject_share=round(rejected / read, 6),
        max_reject_share=max_reject_share,
        rejects_path=str(rejects_path),
    )
    try:
        check_share(src, read, log, max_reject_share, stats.to_dict())
        if rejected == read:
            raise InputError(
                f"{src}: no valid ratings: all {read:,} rows were rejected (first: "
                f"{log.first}); see {rejects_path}"
            )
    except BaseException:
        writer.abort()
        raise
    writer.close()
    duplicates, users = drop_duplicates(dest, keys.take())
    return IngestStats(
        **{
            **stats.to_dict(),
            "rows_accepted": read - rejected - duplicates,
            "duplicates_dropped": duplicates,
            "users": users,
        }
    )


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run ``items`` in a background thread, ``depth`` items ahead, so parsing overlaps the Parquet
    writes.

    An exception in the producer is raised in the consumer; closing the consumer stops the producer.
    """
    slots: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: object) -> bool:
        while not stop.is_set():
            try:
                slots.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # handed to the consumer
            put("error", exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="towerflow-ingest-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "done":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def _row_bound(src: Path) -> int:
    """An upper bound on the data rows (a CSV line has at least 8 bytes); 0 when unknown (gzip)."""
    if src.suffix.lower() in {".parquet", ".pq"}:
        return int(pq.ParquetFile(src).metadata.num_rows)
    with open(src, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return 0 if gzipped else src.stat().st_size // 8


def ingest(
    ratings_src: Path,
    movies_src: Path,
    store_dir: Path,
    *,
    rejects_path: Path | None = None,
    max_reject_share: float = DEFAULT_MAX_REJECT_SHARE,
    now: int | None = None,
) -> tuple[Path, Path, IngestStats]:
    """Ingest movies then ratings into ``store_dir``; return both store paths and the counts."""
    store_dir = Path(store_dir)
    movies = ingest_movies(Path(movies_src), store_dir / "movies.parquet")
    extra = {
        "movies_without_year": movies.without_year,
        "movies_without_genres": movies.without_genres,
        "unknown_genres": movies.unknown_genres,
    }
    try:
        stats = ingest_ratings(
            Path(ratings_src), movies.path, store_dir / "ratings.parquet",
            rejects_path=rejects_path, max_reject_share=max_reject_share, now=now,
            movies_name=Path(movies_src).name,
        )  # fmt: skip
    except RejectThresholdError as exc:
        exc.stats.update(extra)
        raise
    return store_dir / "ratings.parquet", movies.path, IngestStats(**{**stats.to_dict(), **extra})


def run_ingest(
    ratings_src: Path,
    movies_src: Path,
    store_dir: Path,
    rejects_path: Path | None = None,
    max_reject_share: float = 0.01,
) -> Ingested:
    """Ingest both inputs into ``store_dir``; bad ratings rows go to ``rejects_path`` (see
    :mod:`tasks.ingestion.rejects`).
    """
    ratings, movies, stats = ingest(
        Path(ratings_src),
        Path(movies_src),
        Path(store_dir),
        rejects_path=rejects_path,
        max_reject_share=max_reject_share,
    )
    return Ingested(ratings=str(ratings), movies=str(movies), stats=stats.to_dict())
