"""Every bad-input case of issue 5, one test each: the run stops naming file/line/column, or rows
are quarantined.

Plain function calls on tiny files; no Prefect. Quarantined rows land in the
rejects table with their original fields, source file, line and reason, and
counts reconcile: rows_read = rows_accepted + rows_rejected + duplicates_dropped.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.ingestion.ingest import (
    IngestStats,
    InputError,
    RejectThresholdError,
    ingest,
    ingest_movies,
    ingest_ratings,
)
from tasks.ingestion.rejects import REASONS

NOW = 1_800_000_000  # 2027-01-15T08:00:00Z, the ingest time of these tests
HEADER = "userId,movieId,rating,timestamp\n"
MOVIES = (
    "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,Jumanji "
    "(1995),Adventure\n3,Heat (1995),Action\n"
)


@dataclass
class Result:
    stats: IngestStats
    accepted: list[tuple[int, int, float, int]]
    rejects: list[dict[str, Any]]

    def reasons(self) -> list[tuple[int, str]]:
        return [(r["line"], r["reason"]) for r in self.rejects]


def _ingest(
    tmp_path: Path,
    ratings: str | bytes,
    *,
    name: str = "ratings.csv",
    share: float = 1.0,
    block_size: int = 1 << 24,
) -> Result:
    src = tmp_path / name
    src.write_bytes(ratings.encode("utf-8") if isinstance(ratings, str) else ratings)
    (tmp_path / "movies.csv").write_text(MOVIES, encoding="utf-8")
    movies = ingest_movies(tmp_path / "movies.csv", tmp_path / "store" / "movies.parquet")
    stats = ingest_ratings(
        src, movies.path, tmp_path / "store" / "ratings.parquet", block_size,
        rejects_path=tmp_path / "rejects.parquet", max_reject_share=share, now=NOW,
        movies_name="movies.csv",
    )  # fmt: skip
    assert stats.rows_read == stats.rows_accepted + stats.rows_rejected + stats.duplicates_dropped
    assert stats.rows_rejected == sum(stats.rejected_by_reason.values())
    store = pq.read_table(tmp_path / "store" / "ratings.parquet").to_pylist()
    assert len(store) == stats.rows_accepted
    rejects = pq.read_table(tmp_path / "rejects.parquet").to_pylist()
    assert len(rejects) == stats.rows_rejected and all(r["reason"] in REASONS for r in rejects)
    assert all(r["source_file"] == str(src) for r in rejects)
    return Result(
        stats, [(r["user_id"], r["movie_id"], r["rating"], r["timestamp"]) for r in store], rejects
    )


def _stops(tmp_path: Path, ratings: str | bytes, match: str, name: str = "ratings.csv") -> None:
    with pytest.raises(InputError, match=match) as info:
        _ingest(tmp_path, ratings, name=name)
    assert str(tmp_path / name) in str(info.value)
    assert not (tmp_path / "store" / "ratings.parquet").exists()


# Columns


def test_missing_column_stops(tmp_path: Path) -> None:
    _stops(
        tmp_path, "userId,movieId,timestamp\n1,1,5\n", r"line 1: missing column\(s\) \['rating'\]"
    )


def test_extra_columns_are_ignored(tmp_path: Path) -> None:
    out = _ingest(
        tmp_path,
        'userId,movieId,rating,timestamp,comment\n1,1,4.0,10,"great, really"\n2,2,3.5,11,\n',
    )
    assert out.accepted == [(1, 1, 4.0, 10), (2, 2, 3.5, 11)] and not out.rejects


def test_reordered_columns_are_read_by_name(tmp_path: Path) -> None:
    out = _ingest(tmp_path, "timestamp,rating,movieId,userId\n10,4.0,1,7\n11,2.5,3,8\n")
    assert out.accepted == [(7, 1, 4.0, 10), (8, 3, 2.5, 11)]


def test_row_with_extra_field_is_quarantined(tmp_path: Path) -> None:
    out = _ingest(tmp_path, HEADER + "1,1,4.0,10\n1,2,4.0,11,oops\n")
    assert out.reasons() == [(3, "wrong_field_count")]
    assert (
        out.rejects[0]["detail"] == "5 fields, expected 4"
        and out.rejects[0]["raw"] == "1,2,4.0,11,oops"
    )


# Values


def test_wrong_types_are_quarantined_with_original_fields(tmp_path: Path) -> None:
    out = _ingest(tmp_path, HEADER + "abc,1,4.0,10\n1,1.5,4.0,10\n1,2,4.0,2020-01-01\n1,3,4.0,10\n")
    assert out.reasons() == [(2, "not_an_integer"), (3, "not_an_integer"), (4, "not_an_integer")]
    assert [r["detail"] for r in out.rejects] == [
        "column 'userId': 'abc' is not an integer",
        "column 'movieId': '1.5' is not an integer",
        "column 'timestamp': '2020-01-01' is not an integer",
    ]
    assert {k: out.rejects[2][k] for k in ("userId", "movieId", "rating", "timestamp")} == {
        "userId": "1", "movieId": "2", "rating": "4.0", "timestamp": "2020-01-01",
    }  # fmt: skip
    assert out.accepted == [(1, 3, 4.0, 10)]


def test_missing_values_are_quarantined(tmp_path: Path) -> None:
    out = _ingest(tmp_path, HEADER + "1,,4.0,10\n,,,\n1,1,4.0,10\n")
    assert out.reasons() == [(2, "missing_value"), (3, "missing_value")]
    assert out.rejects[0]["detail"] == "column 'movieId' is empty"


def test_non_numeric_rating(tmp_path: Path) -> None:
    out = _ingest(tmp_path, HEADER + "1,1,four,10\n1,2,4.0,10\n")
    assert out.reasons() == [(2, "not_a_number")]
    assert out.rejects[0]["detail"] == "column 'rating': 'four' is not a number"


def test_nan_rating(tmp_path: Path) -> None:
    out = _ingest(tmp_path, HEADER + "1,1,NaN,10\n1,2,nan,10\n1,3,4.0,10\n")
    assert out.reasons() == [(2, "rating_nan"), (3, "rating_nan")]


@pytest.mark.parametrize("rating", ["0", "0.0", "5.5", "7", "-1", "inf", "1e400"])
def test_out_of_range_rating(tmp_path: Path, rating: str) -> None:
    out = _ingest(tmp_path, HEADER + f"1,1,{rating},10\n1,2,5.0,10\n1,3,0.5,10\n")
    assert out.reasons() == [(2, "rating_out_of_range")]
    assert out.rejects[0]["detail"] == f"column 'rating': '{rating}' is outside 0.5-5.0"


def test_non_half_star_rating(tmp_path: Path) -> None:
    out = _ingest(tmp_path, HEADER + "1,1,3.7,10\n1,2,4.25,10\n1,3,3.50,10\n2,1,4,10\n2,2,4.,10\n")
    assert out.reasons() == [(2, "rating_not_half_star"), (3, "rating_not_half_star")]
    assert [r[2] for r in out.accepted] == [3.5, 4.0, 4.0]


def test_negative_and_zero_ids(tmp_path: Path) -> None:
    out = _ingest(tmp_path, HEADER + "-1,1,4.0,10\n1,0,4.0,10\n1,-3,4.0,10\n1,1,4.0,10\n")
    assert out.reasons() == [(2, "id_out_of_range"), (3, "id_out_of_range"), (4, "id_out_of_range")]
    assert out.rejects[0]["detail"] == "column 'userId': '-1' is not an id in 1-2147483647"


def test_overflowing_ids(tmp_path: Path) -> None:
    rows = (
        "2147483648,1,4.0,10\n"
        "1,99999999999999999999,4.0,10\n"
        "-99999999999999999999,1,4.0,10\n"
        "9999999999999999999,1,4.0,10\n"
    )
    out = _ingest(tmp_path, HEADER + rows + "2147483647,1,4.0,10\n")
    assert out.reasons() == [
        (2, "id_out_of_range"),
        (3, "id_out_of_range"),
        (4, "id_out_of_range"),
        (5, "id_out_of_range"),
    ]
    assert out.accepted == [(2147483647, 1, 4.0, 10)]


def test_duplicates_latest_wins_and_are_counted(tmp_path: Path) -> None:
    rows = "1,1,2.0,50\n1,1,4.5,90\n1,1,3.0,70\n2,2,1.0,5\n2,2,1.5,5\n3,3,3.0,1\n"
    out = _ingest(tmp_path, HEADER + rows)
    assert out.stats.duplicates_dropped == 3 and out.stats.rows_accepted == 3 and not out.rejects
    # equal times: the later line wins
    assert out.accepted == [(1, 1, 4.5, 90), (2, 2, 1.5, 5), (3, 3, 3.0, 1)]
    assert out.stats.users == 3


def test_timestamps_in_the_future_or_negative(tmp_path: Path) -> None:
    rows = (
        f"1,1,4.0,{NOW + 1}\n1,2,4.0,-5\n1,3,4.0,99999999999999999999\n2,1,4.0,{NOW}\n2,2,4.0,0\n"
    )
    out = _ingest(tmp_path, HEADER + rows)
    assert out.reasons() == [
        (2, "timestamp_in_future"),
        (3, "timestamp_negative"),
        (4, "timestamp_in_future"),
    ]
    assert out.rejects[0]["detail"].startswith(
        f"column 'timestamp': '{NOW + 1}' is after the ingest time 2027-01-15T08:00:00"
    )
    assert [r[3] for r in out.accepted] == [NOW, 0]


def test_ratings_of_movies_absent_from_movies_csv(tmp_path: Path) -> None:
    out = _ingest(tmp_path, HEADER + "1,99,4.0,10\n1,1,4.0,10\n")
    assert out.reasons() == [(2, "unknown_movie")] and out.stats.unknown_movie_dropped == 1
    assert out.rejects[0]["detail"] == "column 'movieId': '99' is not in movies.csv"


# The movie catalog


def test_titles_with_quotes_commas_unicode_and_no_year(tmp_path: Path) -> None:
    movies = (
        "movieId,title,genres\n"
        '1,"Kid, The (1921)",Comedy\n'
        '2,"Dr. ""Quoted"" Title (2001)",Drama\n'
        "3,Amélie – 日本語 🎬 (2001),Romance\n"
        "4,No Year Here,Drama\n"
        "5,Serie (2006\u20132007),Drama\n"
        '6,"  Spaces, Trailing (1999)  ",Drama\n'
    )
    (tmp_path / "m.csv").write_text(movies, encoding="utf-8")
    out = ingest_movies(tmp_path / "m.csv", tmp_path / "movies.parquet")
    table = pq.read_table(out.path).to_pydict()
    assert table["title"][:3] == [
        "Kid, The (1921)",
        'Dr. "Quoted" Title (2001)',
        "Amélie – 日本語 🎬 (2001)",
    ]
    assert table["year"] == [1921, 2001, 2001, None, 2006, 1999]
    assert out.without_year == 1


def test_unknown_genres_and_no_genres_listed(tmp_path: Path) -> None:
    movies = (
        "movieId,title,genres\n1,A (2000),Space Opera|Drama\n2,B (2001),(no genres listed)\n3,C "
        "(2002),\n"
    )
    movies += "4,D (2003),Comedy|Space Opera\n"
    (tmp_path / "m.csv").write_text(movies, encoding="utf-8")
    out = ingest_movies(tmp_path / "m.csv", tmp_path / "movies.parquet")
    assert out.unknown_genres == {"Space Opera": 2} and out.without_genres == 2
    assert pq.read_table(out.path).column("genres").to_pylist()[1] == "(no genres listed)"


def test_bad_movie_row_stops(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "movieId,title,genres\n1,A (2000),Drama\nx,B,Drama\n", encoding="utf-8"
    )
    with pytest.raises(InputError, match=r"m.csv: line 3, column 'movieId': 'x' is not an integer"):
        ingest_movies(tmp_path / "m.csv", tmp_path / "movies.parquet")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"movieId,title,genres\n1,A (2000),Drama\n2,Kid, The (1921),Comedy\n",
            r"line 3: 4 fields, expected 3",
        ),
        (
            b"movieId,title,genres\n1,A (2000),Drama\n2,Caf\xe9 (1999),Drama\n",
            r"line 3, column 6: not UTF-8 text \(byte 0xe9\)",
        ),
        (b"movieId,title\n1,A (2000)\n", r"line 1: missing column\(s\) \['genres'\]"),
        (b"movieId,title,genres\n", r"no movies \(header only\?\)"),
        (b"", r"empty file"),
    ],
)
def test_bad_movies_file_stops(tmp_path: Path, body: bytes, message: str) -> None:
    (tmp_path / "m.csv").write_bytes(body)
    with pytest.raises(InputError, match=message) as info:
        ingest_movies(tmp_path / "m.csv", tmp_path / "movies.parquet")
    assert str(tmp_path / "m.csv") in str(info.value)


# The file as a whole


def test_empty_file_stops(tmp_path: Path) -> None:
    _stops(tmp_path, "", r"empty file, expected a header line userId,movieId,rating,timestamp")


@pytest.mark.parametrize("body", [HEADER, HEADER.rstrip("\n"), HEADER + "\n\n"])
def test_header_only_stops(tmp_path: Path, body: str) -> None:
    _stops(tmp_path, body, r"no ratings \(header only\?\)")


def test_truncated_last_line_is_quarantined(tmp_path: Path) -> None:
    out = _ingest(tmp_path, HEADER + "1,1,4.0,10\n1,2,4.0,11\n1,3,4")
    assert out.reasons() == [(4, "wrong_field_count")]
    assert (
        out.rejects[0]["detail"] == "3 fields, expected 4 (truncated line?)"
        and out.rejects[0]["raw"] == "1,3,4"
    )
    assert len(out.accepted) == 2


@pytest.mark.parametrize(("sep", "shown"), [(";", "';'"), ("\t", "'\\\\t'"), ("|", "'\\|'")])
def test_wrong_delimiter_stops(tmp_path: Path, sep: str, shown: str) -> None:
    body = (
        sep.join(["userId", "movieId", "rating", "timestamp"])
        + "\n"
        + sep.join(["1", "1", "4.0", "5"])
        + "\n"
    )
    _stops(
        tmp_path,
        body,
        r"line 1: missing column\(s\) .*is it comma-separated\? the header looks "
        rf"{shown}-separated",
    )


def test_bom_is_skipped(tmp_path: Path) -> None:
    out = _ingest(tmp_path, "\ufeff" + HEADER + "1,1,4.0,10\n1,2,bad,11\n")
    assert out.accepted == [(1, 1, 4.0, 10)] and out.reasons() == [(3, "not_a_number")]


def test_crlf_line_ends(tmp_path: Path) -> None:
    out = _ingest(
        tmp_path, HEADER.replace("\n", "\r\n") + "1,1,4.0,10\r\n\r\n1,2,9,11\r\n1,3,2.5,12\r\n"
    )
    assert out.accepted == [(1, 1, 4.0, 10), (1, 3, 2.5, 12)]
    assert out.reasons() == [(4, "rating_out_of_range")] and out.rejects[0]["rating"] == "9"
    assert out.stats.blank_lines == 1


def test_gzip_compressed_csv(tmp_path: Path) -> None:
    body = gzip.compress((HEADER + "1,1,4.0,10\n1,2,4.0,11\n1,3,x,12\n").encode())
    out = _ingest(tmp_path, body, name="ratings.csv.gz")
    assert len(out.accepted) == 2 and out.reasons() == [(4, "not_a_number")]
    # recognised by its magic bytes, not its name
    out = _ingest(tmp_path, body, name="ratings_no_suffix.csv")
    assert len(out.accepted) == 2


def test_truncated_gzip_stops(tmp_path: Path) -> None:
    body = gzip.compress((HEADER + "".join(f"{u},1,4.0,{u}\n" for u in range(1, 20000))).encode())
    _stops(
        tmp_path,
        body[: len(body) // 2],
        r"compressed data is corrupt or cut short",
        name="ratings.csv.gz",
    )


def test_huge_single_line(tmp_path: Path) -> None:
    huge = "9" * 3_000_000
    out = _ingest(tmp_path, HEADER + f"1,1,4.0,10\n1,2,4.0,{huge}\n{huge}\n1,3,4.0,12\n")
    assert out.reasons() == [(3, "timestamp_in_future"), (4, "wrong_field_count")]
    assert len(out.rejects[1]["raw"]) == 4096 and len(out.accepted) == 2


def test_line_longer_than_a_block_is_skipped_unread(tmp_path: Path) -> None:
    huge = "x" * 200_000
    out = _ingest(tmp_path, HEADER + f"1,1,4.0,10\n{huge}\n1,2,4.0,11\n{huge}", block_size=1 << 14)
    assert out.reasons() == [(3, "line_too_long"), (5, "line_too_long")]
    assert (
        out.rejects[0]["detail"] == "line of 200,000 bytes, longer than the 16,384-byte read block"
    )
    assert out.rejects[0]["raw"] == "x" * 4096 and len(out.accepted) == 2


def test_not_utf8_stops_naming_line_and_column(tmp_path: Path) -> None:
    _stops(
        tmp_path,
        HEADER.encode() + b"1,1,4.0,10\n2\xe9,1,4.0,11\n",
        r"line 3, column 'userId': not UTF-8 text \(byte 0xe9\)",
    )
    _stops(
        tmp_path,
        "userId,movieId,rating,timestamp\n".encode("utf-16"),
        r"line 1: the file is UTF-16 text",
    )


def test_blank_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    out = _ingest(tmp_path, HEADER + "1,1,4.0,10\n\n1,2,abc,11\n\n")
    assert (
        out.stats.blank_lines == 2
        and out.stats.rows_read == 2
        and out.reasons() == [(4, "not_a_number")]
    )


# Line numbers, the two parse paths, the threshold, Parquet


def test_line_numbers_are_exact_across_blocks(tmp_path: Path) -> None:
    bad = {17: "1,2,x,5", 400: "1,99,4.0,5", 2501: "1,2", 4999: "-4,2,3.0,5"}
    lines = [HEADER.strip()] + [
        bad.get(i, f"{i},{1 + i % 3},{0.5 * (1 + i % 10)},{i}") for i in range(2, 5001)
    ]
    body = "\n".join(lines) + "\n"
    small = _ingest(tmp_path, body, block_size=4096)
    assert [line for line, _ in small.reasons()] == sorted(bad)
    assert [r["userId"] for r in small.rejects if r["line"] == 4999] == ["-4"]
    one_block = _ingest(tmp_path, body)
    assert one_block.accepted == small.accepted and one_block.rejects == small.rejects


def test_fast_and_row_checks_accept_the_same_spellings(tmp_path: Path) -> None:
    good = HEADER + '05,0x2, 4.5 ,10\n1,1,+4.,0\n"2","3","3.5","7"\n3,1,4.5e0,7\n'
    clean = _ingest(tmp_path, good)  # every block clean: the typed, multi-threaded path
    # the same block with one bad row: the string path
    mixed = _ingest(tmp_path, good + "1,1,bad,1\n")
    assert (
        clean.accepted
        == mixed.accepted
        == [(5, 2, 4.5, 10), (1, 1, 4.0, 0), (2, 3, 3.5, 7), (3, 1, 4.5, 7)]
    )


def test_spellings_pyarrow_refuses_are_rejected_one_by_one(tmp_path: Path) -> None:
    # '-0x10' passes the integer pattern but not pyarrow's cast, which sends the block value by
    # value
    out = _ingest(tmp_path, HEADER + "-0x10,1,4.0,1\n0x10,1,4.0,1\n")
    assert out.reasons() == [(2, "not_an_integer")] and out.accepted == [(16, 1, 4.0, 1)]


def test_record_spanning_lines_does_not_break_line_numbers(tmp_path: Path) -> None:
    out = _ingest(tmp_path, HEADER + '1,1,4.0,10\n1,2,"4.0\n",11\n1,3,4.0,12\n')
    assert [line for line, _ in out.reasons()] == [3, 4] and len(out.accepted) == 2


def test_reject_share_above_threshold_fails_and_keeps_the_rejects(tmp_path: Path) -> None:
    body = HEADER + "".join(f"{u},1,4.0,{u}\n" for u in range(1, 99)) + "1,1,x,1\n1,99,4.0,1\n"
    with pytest.raises(RejectThresholdError) as info:
        _ingest(tmp_path, body, share=0.01)
    message = str(info.value)
    assert "2 of 100 rows rejected (2.00%), more than max_reject_share 1.00%" in message
    assert (
        "first: "
        + str(tmp_path / "ratings.csv")
        + ": line 100, column 'rating': 'x' is not a number"
        in message
    )
    assert str(tmp_path / "rejects.parquet") in message and info.value.stats["rows_rejected"] == 2
    assert pq.read_table(tmp_path / "rejects.parquet").num_rows == 2
    assert not (tmp_path / "store" / "ratings.parquet").exists()
    # at the threshold it passes
    assert _ingest(tmp_path, body, share=0.02).stats.rows_accepted == 98


def test_all_rows_rejected_stops(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no valid ratings: all 1 rows were rejected"):
        _ingest(tmp_path, HEADER + "1,1,x,1\n")


def test_parquet_input_quarantines_by_row_number(tmp_path: Path) -> None:
    table = pa.table(
        {
            "userId": [1, 2, -3],
            "movieId": [1, 99, 1],
            "rating": [4.0, 4.0, 4.0],
            "timestamp": [1, 2, 3],
        }
    )
    pq.write_table(table, tmp_path / "r.parquet")
    out = _ingest(tmp_path, (tmp_path / "r.parquet").read_bytes(), name="ratings.parquet")
    assert out.reasons() == [(2, "unknown_movie"), (3, "id_out_of_range")] and out.accepted == [
        (1, 1, 4.0, 1)
    ]


def test_ingest_reports_movie_counts_with_the_ratings(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text(HEADER + "1,1,4.0,10\n")
    (tmp_path / "m.csv").write_text(
        "movieId,title,genres\n1,A,Space Opera\n2,B (2000),(no genres listed)\n"
    )
    _, _, stats = ingest(tmp_path / "r.csv", tmp_path / "m.csv", tmp_path / "store", now=NOW)
    assert (stats.movies_without_year, stats.movies_without_genres, stats.unknown_genres) == (
        1,
        1,
        {"Space Opera": 1},
    )
    assert stats.rejects_path == str(tmp_path / "store" / "rejects.parquet")
    # always published, empty when nothing was rejected
    assert pq.read_table(stats.rejects_path).num_rows == 0
