"""The popularity prior: served vectors stay unit, the score is (u.m + w p) / (1 + w), the towers'
dot product reads back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.modeling.model import l2_normalize
from tasks.serving.export import build_index
from tasks.serving.popularity import WEIGHTS, ServingSpace, movie_popularity, select_weight


def _unit(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    return np.asarray(l2_normalize(rng.normal(size=(n, d)).astype(np.float32)))


def test_served_vectors_are_unit_and_score_the_prior(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    users, movies = _unit(rng, 5), _unit(rng, 7)
    pop = rng.random(7).astype(np.float32)
    for weight in (0.0, 0.3, 5.0):
        space = ServingSpace(8, weight)
        su, sm = space.users(users), space.movies(movies, pop)
        assert su.shape == (5, 10) and sm.shape == (7, 10)
        np.testing.assert_allclose(np.linalg.norm(su, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(sm, axis=1), 1.0, atol=1e-6)
        expected = (users @ movies.T + weight * pop[None, :]) / (1 + weight)
        np.testing.assert_allclose(su @ sm.T, expected, atol=1e-6)
        # the towers' own dot product (predicted rating) and content similarity read back from the
        # served vectors
        pairs = np.repeat(np.arange(5), 7), np.tile(np.arange(7), 5)
        np.testing.assert_allclose(
            space.tower_scores(su[pairs[0]], sm[pairs[1]]), (users @ movies.T).ravel(), atol=1e-6
        )
        np.testing.assert_allclose(space.content_queries(sm) @ sm.T, movies @ movies.T, atol=1e-6)
    space.write(tmp_path / "serving.json")
    assert ServingSpace.read(tmp_path / "serving.json") == space


def test_weight_zero_serves_the_towers_alone(rng: np.random.Generator) -> None:
    users, movies = _unit(rng, 3), _unit(rng, 4)
    space = ServingSpace(8, 0.0)
    np.testing.assert_allclose(
        space.users(users) @ space.movies(movies, np.ones(4)).T, users @ movies.T, atol=1e-6
    )


def test_a_large_weight_ranks_by_popularity(rng: np.random.Generator) -> None:
    users, movies = _unit(rng, 20), _unit(rng, 50)
    pop = np.linspace(0.0, 1.0, 50)
    space = ServingSpace(8, 1000.0)
    _, top = build_index(space.movies(movies, pop)).search(space.users(users), 3)
    assert (top == [49, 48, 47]).all()


def test_popularity_is_log_count_share_of_the_top() -> None:
    ratings = pd.DataFrame({"movie_id": [1, 1, 1, 2]})
    p = movie_popularity(ratings, np.array([1, 2, 3]))
    np.testing.assert_allclose(p, [1.0, np.log(2) / np.log(4), 0.0], rtol=1e-6)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="weight >= 0"):
        ServingSpace(8, -0.1)
    with pytest.raises(ValueError, match=r"must be \(rows, 8\)"):
        ServingSpace(8, 0.1).users(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="popularity must be 2 values in"):
        ServingSpace(8, 0.1).movies(np.zeros((2, 8)), np.array([0.5, 1.5]))


def test_select_weight_cross_fits_and_prefers_the_smaller_weight_on_ties(
    rng: np.random.Generator,
) -> None:
    ndcg = np.tile(np.linspace(0.1, 0.2, len(WEIGHTS)), (100, 1))
    ndcg[:, 4] += 0.5  # weight WEIGHTS[4] is best for everyone
    choice = select_weight(ndcg, WEIGHTS, seed=1)
    assert choice.weight == WEIGHTS[4] and (choice.cross_index == 4).all()
    assert choice.mean_by_weight[WEIGHTS[4]] == pytest.approx(0.14 + 0.5)
    flat = select_weight(np.zeros((10, len(WEIGHTS))), WEIGHTS)
    assert flat.weight == 0.0
    # cross-fitting: a weight that only one half of the users likes is not chosen for that half by
    # itself
    split = np.zeros((200, 2))
    half = np.random.default_rng(7).permutation(200) % 2 == 0
    split[half, 1] = 1.0
    split[~half, 0] = 0.9
    crossed = select_weight(split, (0.0, 1.0), seed=7)
    assert set(crossed.cross_index[half].tolist()) == {0} and set(
        crossed.cross_index[~half].tolist()
    ) == {1}
    with pytest.raises(ValueError, match="users >= 1"):
        select_weight(np.zeros((0, 2)), (0.0, 1.0))
