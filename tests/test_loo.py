"""Leave-one-out rows equal the features recomputed without the example's rating."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from tasks.modeling.train import train_model
from tasks.preparation.features import compute_features
from tasks.preparation.loo import example_rows, leave_one_out
from tasks.preparation.phases import Prepared, prepared
from tasks.preparation.scalers import fit_scalers
from tasks.preparation.training import TrainData
from tasks.presets import preset

MOVIES = pd.DataFrame(
    {
        "movie_id": [10, 20, 30, 40],
        "title": ["A (1990)", "B (2000)", "C", "D (1970)"],
        "genres": ["Action|Comedy", "Comedy", "(no genres listed)", "Drama|Action"],
        "year": pd.array([1990, 2000, None, 1970], dtype="Int32"),
    }
)
RATINGS = pd.DataFrame(
    {
        "user_id": [1, 1, 1, 2, 2, 3],
        "movie_id": [10, 20, 40, 10, 30, 40],
        "rating": [4.0, 2.0, 3.5, 5.0, 1.0, 4.5],
        "timestamp": [1, 2, 3, 4, 5, 6],
    }
)
USERS = np.array([1, 2, 3])


def _prepared(ratings: pd.DataFrame) -> Prepared:
    feats = compute_features(ratings, MOVIES, USERS, "confidence", shrinkage=3.0)
    return prepared(
        feats,
        fit_scalers(
            feats.user_x,
            feats.movie_x,
            ratings["rating"].to_numpy(),
            feats.user_names,
            feats.movie_names,
        ),
    )


def test_rows_equal_features_computed_without_the_rating() -> None:
    full = _prepared(RATINGS)
    loo = leave_one_out(RATINGS, full.feats, full.scalers, shrinkage=3.0)
    u, m, y = full.triples(RATINGS)
    user_rows, movie_rows = example_rows(
        loo, loo.tensors(), full.movie_x[m], u, m, y.astype(np.float32)
    )
    for i in range(len(RATINGS)):
        # features from the other five ratings, shrunk toward the same global mean, scaled as before
        without = compute_features(
            RATINGS.drop(index=i), MOVIES, USERS, "confidence", shrinkage=3.0, mu=loo.mu
        )
        want_user = full.scalers.user.transform(without.user_x[u[i] : u[i] + 1])[0]
        want_movie = full.scalers.movie.transform(without.movie_x[m[i] : m[i] + 1])[0]
        np.testing.assert_allclose(np.asarray(user_rows)[i], want_user, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(movie_rows)[i], want_movie, rtol=1e-4, atol=1e-4)
    # user 3 and movie 30 have one rating each: without it they look like a newcomer and an unrated
    # movie
    newcomer = RATINGS.index[RATINGS.user_id == 3][0]
    assert np.asarray(user_rows)[newcomer][0] == pytest.approx(
        (0.0 - full.scalers.user.mean_[0]) / full.scalers.user.scale_[0], abs=1e-5
    )


def test_refuses_lab_features_and_other_ratings() -> None:
    lab = compute_features(RATINGS, MOVIES, USERS, "lab")
    scalers = fit_scalers(
        lab.user_x, lab.movie_x, RATINGS["rating"].to_numpy(), lab.user_names, lab.movie_names
    )
    with pytest.raises(ValueError, match="needs the confidence features"):
        leave_one_out(RATINGS, lab, scalers, 3.0)
    full = _prepared(RATINGS)
    with pytest.raises(ValueError, match="not the ones the features were computed from"):
        leave_one_out(RATINGS.iloc[:4], full.feats, full.scalers, 3.0)


def test_train_model_needs_the_sums_when_the_config_asks_for_them() -> None:
    full = _prepared(RATINGS)
    config = dataclasses.replace(preset("default"), hidden=(4,), embedding_dim=2, max_epochs=1)
    plain = TrainData(full.user_x, full.movie_x, *full.triples(RATINGS))
    with pytest.raises(
        ValueError, match="leave_one_out=True but the data's leave-one-out sums missing"
    ):
        train_model(plain, config, seed=0)
    result = train_model(full.train_data(RATINGS, config), config, seed=0)
    assert np.isfinite(result.history[0]["loss"])


@pytest.mark.parametrize("batch", [2, 4])
def test_rows_computed_a_chunk_of_batches_at_a_time_train_the_same_model(
    monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """The epoch's loop computes leave-one-out rows for ``ROW_CHUNK`` batches at once; a shorter
    last chunk (batch 2: chunks of 2 and 1 batches) and a shorter last batch (batch 4) train the
    same weights as rows computed for the whole epoch at once."""
    from tasks.modeling import train

    full = _prepared(RATINGS)
    config = dataclasses.replace(
        preset("default"), hidden=(4,), embedding_dim=2, max_epochs=2, batch_size=batch
    )
    data = full.train_data(RATINGS, config)
    weights = []
    for chunk in (1, 2, 100):
        monkeypatch.setattr(train, "ROW_CHUNK", chunk)
        result = train_model(data, config, seed=0)
        assert [h["examples"] for h in result.history] == [6, 6]
        weights.append(result.model.get_weights())
    for other in weights[1:]:
        for a, b in zip(weights[0], other, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
