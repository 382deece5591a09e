"""Ingest accepts GroupLens CSV and Parquet and names the file, line and column of bad input.

Every bad-input case of issue 5, one test each, is in test_bad_input.py.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tasks.ingestion.ingest import InputError, RejectThresholdError, ingest

MOVIES = (
    "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
    '2,"Kid, The (1921)",Comedy\n3,No Year Here,(no genres listed)\n4,Serie '
    "(2006\u20132007),Drama\n"
)


def _write(tmp_path: Path, ratings: str, movies: str = MOVIES) -> tuple[Path, Path]:
    (tmp_path / "ratings.csv").write_text(ratings, encoding="utf-8")
    (tmp_path / "movies.csv").write_text(movies, encoding="utf-8")
    return tmp_path / "ratings.csv", tmp_path / "movies.csv"


def test_csv_ingest_parses_years_and_counts(tmp_path: Path) -> None:
    r, m = _write(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.5,20\n2,1,5.0,30\n")
    ratings, movies, stats = ingest(r, m, tmp_path / "store")
    assert (
        stats.rows_read == 3 and stats.rows_accepted == 3 and stats.users == 2 and stats.movies == 4
    )
    years = pq.read_table(movies).column("year").to_pylist()
    assert years == [1995, 1921, None, 2006]
    assert stats.movies_without_year == 1
    assert pq.read_table(ratings).column("rating").to_pylist() == [4.0, 3.5, 5.0]


def test_parquet_input_equals_csv(tmp_path: Path) -> None:
    r, m = _write(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,10\n2,4,1.5,20\n")
    pq.write_table(pacsv.read_csv(r), tmp_path / "ratings.parquet")
    pq.write_table(pacsv.read_csv(m), tmp_path / "movies.parquet")
    a, _, _ = ingest(r, m, tmp_path / "csv")
    b, _, _ = ingest(tmp_path / "ratings.parquet", tmp_path / "movies.parquet", tmp_path / "pq")
    assert pq.read_table(a).equals(pq.read_table(b))


def test_gzip_bom_and_crlf(tmp_path: Path) -> None:
    body = "\ufeffuserId,movieId,rating,timestamp\r\n1,1,4.0,10\r\n1,2,2.0,11\r\n"
    with gzip.open(tmp_path / "ratings.csv.gz", "wt", encoding="utf-8", newline="") as fh:
        fh.write(body)
    (tmp_path / "movies.csv").write_text(MOVIES)
    _, _, stats = ingest(tmp_path / "ratings.csv.gz", tmp_path / "movies.csv", tmp_path / "store")
    assert stats.rows_accepted == 2


@pytest.mark.parametrize(
    ("ratings", "message"),
    [
        (
            "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,abc,11\n",
            r"line 3, column 'rating': 'abc' is not a number",
        ),
        (
            "userId,movieId,rating,timestamp\n1,1,4.0,10\nx,2,4.0,11\n",
            r"line 3, column 'userId': 'x' is not an integer",
        ),
        (
            "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,7.0,11\n",
            r"line 3, column 'rating': '7.0' is outside 0.5-5.0",
        ),
        (
            "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.7,11\n",
            r"line 3, column 'rating': '3.7' is not a whole or half star",
        ),
        (
            "userId,movieId,rating,timestamp\n1,1,4.0,-5\n",
            r"line 2, column 'timestamp': '-5' is a negative timestamp",
        ),
        (
            "userId,movieId,rating,timestamp\n-1,1,4.0,5\n",
            r"line 2, column 'userId': '-1' is not an id in 1-2147483647",
        ),
        ("userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,4.0\n", r"line 3, 3 fields, expected 4"),
    ],
)
def test_bad_rows_over_the_threshold_name_file_line_and_column(
    tmp_path: Path, ratings: str, message: str
) -> None:
    """A bad row is quarantined; with most of a tiny file bad, the run stops naming the first
    one.
    """
    r, m = _write(tmp_path, ratings)
    with pytest.raises(RejectThresholdError, match=message) as info:
        ingest(r, m, tmp_path / "store")
    assert f"{r}: line" in str(info.value) and "rows rejected" in str(info.value)
    assert pq.read_table(tmp_path / "store" / "rejects.parquet").num_rows == 1


@pytest.mark.parametrize(
    ("ratings", "message"),
    [
        ("userId,movieId,timestamp\n1,1,5\n", r"line 1: missing column\(s\) \['rating'\]"),
        ("userId;movieId;rating;timestamp\n1;1;4.0;5\n", r"is it comma-separated"),
        ("", r"empty file"),
        ("userId,movieId,rating,timestamp\n", r"no ratings \(header only\?\)"),
    ],
)
def test_bad_files_stop_naming_file_and_line(tmp_path: Path, ratings: str, message: str) -> None:
    r, m = _write(tmp_path, ratings)
    with pytest.raises(InputError, match=message) as info:
        ingest(r, m, tmp_path / "store")
    assert str(r) in str(info.value)
    assert not (tmp_path / "store" / "ratings.parquet").exists()


def test_duplicates_keep_latest_and_unknown_movies_dropped(tmp_path: Path) -> None:
    r, m = _write(
        tmp_path,
        "userId,movieId,rating,timestamp\n"
        "1,1,2.0,50\n1,1,4.5,90\n1,1,3.0,70\n1,99,4.0,5\n2,2,1.0,1\n",
    )
    ratings, _, stats = ingest(r, m, tmp_path / "store", max_reject_share=0.5)
    rows = pq.read_table(ratings).to_pylist()
    assert (
        stats.duplicates_dropped == 2 and stats.unknown_movie_dropped == 1 and stats.rows_read == 5
    )
    assert (
        stats.rows_accepted == 2
        and stats.rows_rejected == 1
        and stats.rejected_by_reason == {"unknown_movie": 1}
    )
    assert {(x["user_id"], x["movie_id"], x["rating"]) for x in rows} == {(1, 1, 4.5), (2, 2, 1.0)}


def test_duplicate_movie_id_is_an_error(tmp_path: Path) -> None:
    r, m = _write(
        tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,1\n", MOVIES + "1,Again (2000),Drama\n"
    )
    with pytest.raises(InputError, match=r"line 6, column 'movieId': 1 appears twice"):
        ingest(r, m, tmp_path / "store")
