"""``import towerflow``: the published run as a library, with business rules and folded-in users."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import towerflow
from tasks.errors import ConfigError
from tasks.serving.rules import Rules, parse_years, read_deny_list

K = 5  # the k of the session-scoped `published` run in conftest.py


@pytest.fixture(scope="module")
def rec(published: dict[str, Any]) -> towerflow.Recommender:
    return towerflow.load(published["dir"])


def _table(published: dict[str, Any], name: str) -> pd.DataFrame:
    frame: pd.DataFrame = pq.read_table(
        published["dir"] / published["latest"]["tables"][name]["path"]
    ).to_pandas()
    return frame


def test_recommend_is_the_published_table_and_the_search_agrees(
    published: dict[str, Any], rec: towerflow.Recommender
) -> None:
    table = (
        _table(published, "recommendations").sort_values(["user_id", "rank"]).reset_index(drop=True)
    )
    users = np.sort(published["ratings"].userId.unique())
    from_table = rec.recommend_many(users, K)
    assert (
        from_table[["user_id", "rank", "movie_id"]].to_numpy().tolist()
        == table[["user_id", "rank", "movie_id"]].to_numpy().tolist()
    )
    one = rec.recommend(int(users[3]), 3)
    assert one.columns.tolist() == [
        "user_id",
        "rank",
        "movie_id",
        "title",
        "genres",
        "score",
        "predicted_rating",
    ]
    assert one.movie_id.tolist() == table[table.user_id == users[3]].movie_id.tolist()[:3]
    # a rule of its own (an empty one): searched in the vectors
    searched = rec.recommend_many(users, K, exclude=[])
    assert len(searched) == len(table)
    # rank by rank, whatever the order of ties
    np.testing.assert_allclose(searched.score, table.score, atol=1e-5)
    pairs = zip(searched.groupby("user_id"), table.groupby("user_id"), strict=True)
    same = [np.array_equal(a.movie_id, b.movie_id) for (_, a), (_, b) in pairs]
    assert np.mean(same) >= 0.95
    more = rec.recommend(int(users[0]), K + 4)
    assert len(more) == K + 4 and more["rank"].tolist() == list(range(1, K + 5))
    np.testing.assert_allclose(more.score[:K], table[table.user_id == users[0]].score, atol=1e-5)


def test_a_users_own_ratings_fold_in_to_their_published_vector_and_list(
    published: dict[str, Any], rec: towerflow.Recommender
) -> None:
    ratings = published["ratings"]
    table = _table(published, "recommendations")
    embeddings = dict(zip(rec.user_ids.tolist(), rec._user_vecs, strict=True))
    same = 0
    users = ratings.userId.unique()
    for user in users:
        mine = ratings[ratings.userId == user]
        rated = dict(zip(mine.movieId.tolist(), mine.rating.tolist(), strict=True))
        vector, _ = rec.user_vector(rated)
        np.testing.assert_allclose(vector[0], embeddings[int(user)], atol=1e-5)
        folded = rec.recommend_for_ratings(rated, K)
        assert not set(folded.movie_id) & set(rated) and len(folded) == K
        same += (
            folded.movie_id.tolist()
            == table[table.user_id == user].sort_values("rank").movie_id.tolist()
        )
    assert same / len(users) >= 0.95


def test_a_newcomer_gets_k_unseen_movies_and_changed_ratings_change_the_list(
    rec: towerflow.Recommender, published: dict[str, Any]
) -> None:
    movies = published["movies"]
    liked = movies.movieId.iloc[:3].tolist()
    first = rec.recommend_for_ratings({m: 5.0 for m in liked}, 8)
    assert len(first) == 8 and not set(first.movie_id) & set(liked)
    assert first.columns.tolist() == [
        "rank",
        "movie_id",
        "title",
        "genres",
        "score",
        "predicted_rating",
    ]
    assert (first.score.diff().dropna() <= 1e-6).all()
    other = rec.recommend_for_ratings({m: 0.5 for m in liked}, 8)
    assert other.movie_id.tolist() != first.movie_id.tolist()
    assert len(rec.recommend_for_genres({"Comedy": 5.0}, 4)) == 4


def test_business_rules_hold_and_lists_stay_full(
    rec: towerflow.Recommender, published: dict[str, Any]
) -> None:
    movies = rec.catalog.set_index("movie_id")  # with the year the night parsed from each title
    user = int(published["ratings"].userId.iloc[0])
    comedies = rec.recommend(user, 6, genres=["comedy"])  # genre names match ignoring case
    assert len(comedies) == 6 and all(
        "Comedy" in movies.loc[m, "genres"].split("|") for m in comedies.movie_id
    )
    assert (comedies.score.diff().dropna() <= 1e-6).all()
    years = movies.year.dropna()
    lo, hi = int(years.quantile(0.3)), int(years.quantile(0.7))
    dated = rec.recommend(user, 6, years=(lo, hi))
    assert len(dated) == 6 and dated.movie_id.map(movies.year).between(lo, hi).all()
    top = rec.recommend(user, 3).movie_id.tolist()
    without = rec.recommend(user, 3, exclude=top[:2])
    assert not set(without.movie_id) & set(top[:2]) and without.movie_id.iloc[0] == top[2]
    allow = movies.index[:40].tolist()
    assert set(rec.recommend(user, 5, only=allow).movie_id) <= set(allow)
    # the night's deny-list holds in every answer
    assert not set(published["denied"]) & set(rec.recommend(user, 50).movie_id)
    assert not set(published["denied"]) & set(
        rec.similar(int(movies.index[0]), 30).similar_movie_id
    )
    similar = rec.similar(int(movies.index[0]), 4, genres="Drama")
    assert len(similar) == 4 and all(
        "Drama" in movies.loc[m, "genres"] for m in similar.similar_movie_id
    )
    assert rec.recommend(
        user, 5, genres="Comedy", years=(3000, None)
    ).empty  # nothing passes: an empty answer


def test_errors_name_the_bad_id_rating_or_rule(rec: towerflow.Recommender) -> None:
    version = rec.version
    with pytest.raises(
        towerflow.QueryError,
        match=rf"user 999999 is not in the published run {version} .*recommend_for_ratings",
    ):
        rec.recommend(999999)
    with pytest.raises(towerflow.QueryError, match=r"ratings: movie 424242 is not in the catalog"):
        rec.recommend_for_ratings({424242: 4.0})
    with pytest.raises(towerflow.QueryError, match=r"movie 1 rated 7.0, outside 0.5-5.0 stars"):
        rec.recommend_for_ratings({1: 7.0})
    with pytest.raises(towerflow.QueryError, match=r"genre 'Cartoons' is not one of Action"):
        rec.recommend(int(rec.user_ids[0]), genres=["Cartoons"])
    with pytest.raises(towerflow.QueryError, match=r"exclude: movie 424242 is not in the catalog"):
        rec.recommend(int(rec.user_ids[0]), exclude=[424242])
    with pytest.raises(towerflow.QueryError, match=r"year range 2000..1990 is empty"):
        rec.similar(int(rec.movie_ids[0]), years=(2000, 1990))
    with pytest.raises(towerflow.QueryError, match=r"k must be a whole number >= 1, got 0"):
        rec.recommend(int(rec.user_ids[0]), 0)
    with pytest.raises(
        towerflow.QueryError, match=r"movie 424242 is not in the catalog of the published run"
    ):
        rec.similar(424242)


def test_predict_is_the_towers_dot_product_with_an_error_per_unknown_id(
    rec: towerflow.Recommender, published: dict[str, Any]
) -> None:
    table = _table(published, "recommendations")
    known = table.head(5)
    pairs = [
        *zip(known.user_id, known.movie_id, strict=True),
        (999999, 1),
        (int(known.user_id.iloc[0]), 424242),
    ]
    out = rec.predict(pairs)
    np.testing.assert_allclose(out.predicted_rating[:5], known.predicted_rating, atol=1e-4)
    assert out.error[:5].isna().all() and out.predicted_rating[5:].isna().all()
    assert out.error.iloc[5].startswith("unknown user 999999") and out.error.iloc[6].startswith(
        "unknown movie 424242"
    )


def test_the_night_published_its_rules(published: dict[str, Any]) -> None:
    rules = published["latest"]["rules"]
    assert (
        rules["deny"] == sorted(published["denied"])
        and rules["genres"] == []
        and rules["only"] is None
    )
    recs, similar = _table(published, "recommendations"), _table(published, "similar_movies")
    assert not set(published["denied"]) & (set(recs.movie_id) | set(similar.similar_movie_id))
    assert (recs.groupby("user_id").size() == K).all()  # still k per user with two movies denied


def test_load_and_known_user_queries_do_not_import_tensorflow(published: dict[str, Any]) -> None:
    code = (
        "import sys, towerflow; "
        f"rec = towerflow.load({str(published['dir'])!r}); "
        "rec.recommend(int(rec.user_ids[0]), 12, genres='Drama'); "
        "rec.similar(int(rec.movie_ids[0]), 12); "
        "assert 'tensorflow' not in sys.modules and 'prefect' not in sys.modules, "
        "sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_rules_parse_combine_and_read_a_deny_list(tmp_path: Path) -> None:
    catalog = pd.DataFrame(
        {
            "movie_id": [1, 2, 3, 4],
            "genres": ["Comedy", "Drama|Comedy", "Horror", "(no genres listed)"],
            "year": [1990, 2000, None, 2010],
        }
    )
    ids = catalog.movie_id.to_numpy()
    assert Rules().allowed(catalog, ids).all() and Rules().empty
    assert Rules.make(genres="comedy").allowed(catalog, ids).tolist() == [True, True, False, False]
    # no year: left out
    assert Rules.make(years=(1995, None)).allowed(catalog, ids).tolist() == [
        False,
        True,
        False,
        True,
    ]
    both = Rules.make(deny=[2]) & Rules.make(genres=["Comedy", "Horror"], years=(None, 2005))
    assert both.allowed(catalog, ids).tolist() == [True, False, False, False]
    assert (
        not (Rules.make(genres="Comedy") & Rules.make(genres="Horror")).allowed(catalog, ids).any()
    )
    assert Rules.from_document(both.document()) == both and Rules.from_document(None).empty
    assert parse_years("1990-2005") == (1990, 2005) and parse_years("-1980") == (None, 1980)
    with pytest.raises(ConfigError, match=r"years '19x0': write FIRST-LAST"):
        parse_years("19x0")
    (tmp_path / "ids.txt").write_text("# licences ended\n12\n\n7\n")
    assert read_deny_list(str(tmp_path / "ids.txt")) == frozenset({7, 12})
    (tmp_path / "bad.csv").write_text("movieId,why\n5,x\nfive,y\n")
    with pytest.raises(ConfigError, match=r"bad.csv, line 3: 'five' is not a movie id"):
        read_deny_list(str(tmp_path / "bad.csv"))


def test_bad_rules_of_a_night_fail_in_one_line_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    for option, value, said in (
        (
            "--only-genres",
            "Comedy,Cartoons",
            "--only-genres 'Comedy,Cartoons': genre 'Cartoons' is not one of",
        ),
        ("--years", "1990-19x5", "--years '1990-19x5': years '1990-19x5': write FIRST-LAST"),
        (
            "--deny-list",
            str(tmp_path / "missing.txt"),
            f"deny-list {tmp_path / 'missing.txt'}: file not found",
        ),
    ):
        assert main(["run", "--data-dir", str(tmp_path), option, value]) == 1
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "outputs").exists()
