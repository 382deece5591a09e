"""towerflow recommend / similar: answers read from the published run, errors in one line."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from flows.query_cli import _fit_genres, _fit_title
from tasks.serving.export import read_embeddings
from tasks.serving.popularity import ServingSpace
from towerflow.query import display_title

pytestmark = [pytest.mark.flow]
K = 5  # the k of the session-scoped `published` run in conftest.py


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _published(published: dict[str, Any], table: str, key: str, value: int) -> pd.DataFrame:
    path = published["dir"] / published["latest"]["tables"][table]["path"]
    frame: pd.DataFrame = pq.read_table(path).to_pandas()
    return frame.query(f"{key} == {value}").sort_values("rank")


def _titles(published: dict[str, Any]) -> dict[int, tuple[str, str]]:
    movies = published["movies"]
    return {
        int(i): (display_title(t), g)
        for i, t, g in zip(movies.movieId, movies.title, movies.genres, strict=True)
    }


def test_recommend_table_is_the_published_top_k(
    published: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    user = int(published["ratings"].userId.iloc[0])
    code, out, err = _run(
        capsys, "recommend", "--user", str(user), "--data-dir", str(published["dir"])
    )
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert (
        lines[0].startswith(f"Top {K} for user {user}")
        and published["latest"]["model_version"] in lines[0]
    )
    assert lines[1].split()[:3] == ["rank", "movie", "title"]
    rows = [line.split() for line in lines[2:]]
    expected = _published(published, "recommendations", "user_id", user)
    assert [int(r[0]) for r in rows] == list(range(1, K + 1))
    assert [int(r[1]) for r in rows] == expected.movie_id.tolist()


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_recommend_json_and_csv_join_titles(
    published: dict[str, Any], capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    user = int(published["ratings"].userId.iloc[-1])
    code, out, _ = _run(
        capsys,
        "recommend",
        "--user",
        str(user),
        "--k",
        "3",
        "--format",
        fmt,
        "--data-dir",
        str(published["dir"]),
    )
    assert code == 0
    rows = json.loads(out) if fmt == "json" else list(csv.DictReader(io.StringIO(out)))
    expected = _published(published, "recommendations", "user_id", user).head(3)
    titles = _titles(published)
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]
    assert [int(r["user_id"]) for r in rows] == [user] * 3
    assert [int(r["movie_id"]) for r in rows] == expected.movie_id.tolist()
    assert [(r["title"], r["genres"]) for r in rows] == [titles[int(r["movie_id"])] for r in rows]
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected.score, atol=1e-5)
    np.testing.assert_allclose(
        [float(r["predicted_rating"]) for r in rows], expected.predicted_rating, atol=1e-5
    )


def test_recommend_errors_name_the_bad_value(
    published: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, version = str(published["dir"]), published["latest"]["model_version"]
    users = published["ratings"].userId
    code, out, err = _run(capsys, "recommend", "--user", "999999", "--data-dir", d)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert (
        f"user 999999 is not in the published run {version} ({users.nunique()} users; ids "
        f"{users.min()}..{users.max()})" in err
    )
    code, out, err = _run(
        capsys,
        "recommend",
        "--user",
        str(users.iloc[0]),
        "--format",
        "csv",
        "--k",
        str(K + 2),
        "--data-dir",
        d,
    )
    # beyond the published k: searched in the published vectors
    more = pd.read_csv(io.StringIO(out))
    assert code == 0 and more["rank"].tolist() == list(range(1, K + 3))
    published_scores = _published(published, "recommendations", "user_id", int(users.iloc[0])).score
    np.testing.assert_allclose(more.score[:K], published_scores, atol=1e-5)
    code, out, err = _run(capsys, "recommend", "--user", "1", "--data-dir", str(tmp_path))
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert (
        f"no published run in {tmp_path}" in err and f"towerflow run --data-dir {tmp_path}" in err
    )


def test_similar_by_id_is_the_published_list_never_itself(
    published: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    movie = int(published["ratings"].movieId.iloc[0])
    code, out, _ = _run(
        capsys,
        "similar",
        "--movie",
        str(movie),
        "--format",
        "json",
        "--data-dir",
        str(published["dir"]),
    )
    assert code == 0
    rows = json.loads(out)
    expected = _published(published, "similar_movies", "movie_id", movie)
    assert [r["similar_movie_id"] for r in rows] == expected.similar_movie_id.tolist()
    assert all(r["movie_id"] == movie and r["similar_movie_id"] != movie for r in rows)
    titles = _titles(published)
    assert [(r["title"], r["genres"]) for r in rows] == [
        titles[r["similar_movie_id"]] for r in rows
    ]
    code, out, _ = _run(
        capsys, "similar", "--movie", str(movie), "--data-dir", str(published["dir"])
    )
    assert code == 0 and f"movies like {titles[movie][0]} [movie {movie}]" in out.splitlines()[0]


def test_similar_beyond_published_k_searches_the_index(
    published: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    d, latest = published["dir"], published["latest"]
    movie = int(published["movies"].movieId.iloc[-1])  # any catalog movie, rated or not
    code, out, _ = _run(
        capsys,
        "similar",
        "--movie",
        str(movie),
        "--k",
        str(K + 4),
        "--format",
        "csv",
        "--data-dir",
        str(d),
    )
    assert code == 0
    rows = pd.read_csv(io.StringIO(out))
    assert (
        len(rows) == K + 4
        and movie not in set(rows.similar_movie_id)
        and rows.similar_movie_id.is_unique
    )
    assert (
        rows["rank"].tolist() == list(range(1, K + 5))
        and (rows.score.diff().dropna() <= 1e-6).all()
    )
    expected = _published(published, "similar_movies", "movie_id", movie)
    np.testing.assert_allclose(rows.score[:K], expected.score, atol=1e-5)
    mid, memb = read_embeddings(d / latest["model"]["movie_embeddings"]["path"], "movie")
    row = pd.Index(mid).get_indexer([movie])[0]
    others = pd.Index(mid).get_indexer(rows.similar_movie_id)
    # the towers' similarity
    query = ServingSpace.read(d / latest["model"]["serving"]["path"]).content_queries(memb[[row]])[
        0
    ]
    np.testing.assert_allclose(memb[others] @ query, rows.score, atol=1e-5)
    # the night's deny-list holds beyond the published k too
    allowed = ~np.isin(mid, published["denied"])
    allowed[row] = False
    best_other = np.sort((memb @ query)[allowed])[::-1][: K + 4]
    np.testing.assert_allclose(rows.score, best_other, atol=1e-5)


def test_a_modified_index_is_refused(
    published: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "copy"
    shutil.copytree(published["dir"], d, ignore=shutil.ignore_patterns("store", "work", "embedded"))
    index = d / published["latest"]["model"]["index"]["path"]
    index.write_bytes(index.read_bytes() + b"\0")
    movie = str(published["movies"].movieId.iloc[0])
    code, _, err = _run(
        capsys, "similar", "--movie", movie, "--k", str(K + 1), "--data-dir", str(d)
    )
    assert code == 1 and f"{index}: sha256 does not match latest.json" in err
    # a modified model answers nothing
    code, _, err = _run(capsys, "similar", "--movie", movie, "--data-dir", str(d))
    assert code == 1 and f"{index}: sha256 does not match latest.json" in err


def test_similar_by_title(published: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    movies, d = published["movies"], str(published["dir"])
    bare = movies.title.str.rsplit(" (", n=1).str[0]
    # a title (without its year) that is part of another title, e.g. "Red River 2" and "Red River
    # 21": the exact one wins
    shared = [i for i, b in enumerate(bare) if movies.title.str.contains(b, regex=False).sum() > 1]
    assert shared, "the generated catalog has a title contained in another one"
    movie_id, title = int(movies.movieId.iloc[shared[0]]), str(movies.title.iloc[shared[0]])
    for query in (title, bare.iloc[shared[0]].upper()):
        code, out, _ = _run(
            capsys, "similar", "--movie", query, "--format", "json", "--data-dir", d
        )
        assert code == 0 and {r["movie_id"] for r in json.loads(out)} == {movie_id}


def test_ambiguous_title_lists_the_matches(
    published: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    movies = published["movies"]
    word = movies.title.iloc[0].split()[0].lower()  # a first word many generated titles share
    matches = movies[movies.title.str.lower().str.contains(word, regex=False)]
    assert 1 < len(matches) <= 25
    code, out, err = _run(capsys, "similar", "--movie", word, "--data-dir", str(published["dir"]))
    lines = err.strip().splitlines()
    assert code == 1 and out == ""
    assert (
        lines[0] == f"towerflow similar: {word!r} matches {len(matches)} movies; give one id with "
        "--movie ID:"
    )
    listed = {int(line.split()[0]): line.split(None, 1)[1] for line in lines[1:]}
    assert listed == {
        int(i): display_title(t) for i, t in zip(matches.movieId, matches.title, strict=True)
    }


def test_unknown_movie_errors(
    published: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    d, version = str(published["dir"]), published["latest"]["model_version"]
    n = len(published["movies"])
    code, out, err = _run(capsys, "similar", "--movie", "424242", "--data-dir", d)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert (
        f"movie 424242 is not in the catalog of the published run {version} ({n:,} movies; ids "
        in err
    )
    code, _, err = _run(capsys, "similar", "--movie", "no such film", "--data-dir", d)
    assert (
        code == 1
        and f"no movie title contains 'no such film' in the catalog of the published run {version}"
        in err
    )


def test_queries_do_not_load_tensorflow(published: dict[str, Any]) -> None:
    user = int(published["ratings"].userId.iloc[0])
    code = (
        "import sys; from flows.cli import main; "
        f"assert main(['recommend', '--user', '{user}', '--data-dir', "
        f"{str(published['dir'])!r}]) == 0; "
        f"assert main(['similar', '--movie', '1', '--k', '{K + 1}', '--data-dir', "
        f"{str(published['dir'])!r}]) == 0; "
        "assert 'tensorflow' not in sys.modules and 'prefect' not in sys.modules, 'queries "
        "must stay light'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_display_helpers() -> None:
    assert display_title("Matrix, The (1999)") == "The Matrix (1999)"
    assert display_title("Auberge espagnole, L' (2002)") == "L'Auberge espagnole (2002)"
    assert (
        display_title('Little Storm 6, The "Director\'s Cut" (2009)')
        == 'Little Storm 6, The "Director\'s Cut" (2009)'
    )
    long = "The Good, the Bad and the Ugly (Buono, il brutto, il cattivo, Il) (1966)"
    assert (
        _fit_title(long, 30) == "The Good, the Bad and… (1966)" and len(_fit_title(long, 30)) <= 30
    )
    assert _fit_title("Short (2001)", 30) == "Short (2001)"
    assert (
        _fit_genres("Adventure|Animation|Children|Comedy|Fantasy", 34)
        == "Adventure, Animation, Children +2"
    )
    assert _fit_genres("Drama", 34) == "Drama"
