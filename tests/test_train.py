"""Training learns planted structure and is repeatable with a seed."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.modeling.train import predict_scores, train_model
from tasks.preparation.training import TrainData
from tasks.presets import preset

pytestmark = pytest.mark.train
PLAIN = preset("default", leave_one_out=False)  # planted feature rows, not the confidence features


def _checkerboard(rng: np.random.Generator) -> tuple[TrainData, np.ndarray]:
    """Users 0-39 love genre 0 and dislike genre 1; users 40-79 the opposite (checkerboard)."""
    n_users, n_movies = 80, 40
    kind = (np.arange(n_users) >= 40).astype(int)
    genre = (np.arange(n_movies) >= 20).astype(int)
    user_x = np.eye(2, dtype=np.float32)[kind] * 2 - 1
    movie_x = np.eye(2, dtype=np.float32)[genre] * 2 - 1
    u = np.repeat(np.arange(n_users), 10)
    m = rng.integers(0, n_movies, len(u))
    y = np.where(kind[u] == genre[m], 0.8, -0.8).astype(np.float32)
    return TrainData(user_x, movie_x, u, m, y), genre


def test_learns_planted_checkerboard(rng: np.random.Generator) -> None:
    data, genre = _checkerboard(rng)
    config = dataclasses.replace(
        PLAIN, batch_size=64, max_epochs=15, softmax_weight=0.0, mse_weight=1.0, dropout=0.0
    )
    result = train_model(data, config, seed=1)
    users = np.repeat([0, 79], 40)
    movies = np.tile(np.arange(40), 2)
    scores = predict_scores(result.model, data.user_x, data.movie_x, users, movies).reshape(2, 40)
    assert scores[0, genre == 0].min() > scores[0, genre == 1].max()
    assert scores[1, genre == 1].min() > scores[1, genre == 0].max()
    assert result.history[-1]["mse"] < result.history[0]["mse"]


def test_same_seed_same_weights(rng: np.random.Generator) -> None:
    data, _ = _checkerboard(rng)
    config = dataclasses.replace(PLAIN, batch_size=64, max_epochs=2)
    a = train_model(data, config, seed=5).model.get_weights()
    b = train_model(data, config, seed=5).model.get_weights()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_early_stopping_restores_best_epoch(rng: np.random.Generator) -> None:
    data, _ = _checkerboard(rng)
    config = dataclasses.replace(PLAIN, batch_size=64, max_epochs=30, patience=2)
    # inverted labels: validation loss rises
    val = (data.users[:100], data.movies[:100], -data.target[:100])
    result = train_model(data, config, seed=1, validation=val)
    assert result.epochs_run < 30
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1


def test_history_alone_separates_users(rng: np.random.Generator) -> None:
    """Users with identical features differ only by what they rated: the history vectors must learn
    it."""
    from tasks.preparation.history import History

    data, genre = _checkerboard(rng)
    kind = (np.arange(80) >= 40).astype(int)
    # rows 0-4 or 20-24, + 1
    ids = np.where(kind[:, None] == 0, np.arange(1, 6), np.arange(21, 26)).astype(np.int32)
    values = np.full(ids.shape, 1.0, dtype=np.float32)
    flat = dataclasses.replace(
        data, user_x=np.ones((80, 1), np.float32), user_hist=History(ids, values)
    )
    config = dataclasses.replace(
        PLAIN, history_length=5, batch_size=64, max_epochs=25, softmax_weight=0.0, mse_weight=1.0
    )
    result = train_model(flat, config, seed=3)
    scores = predict_scores(
        result.model,
        flat.user_input(),
        flat.movie_x,
        np.repeat([0, 79], 40),
        np.tile(np.arange(40), 2),
    )
    scores = scores.reshape(2, 40)
    assert scores[0, genre == 0].mean() > scores[0, genre == 1].mean() + 0.5
    assert scores[1, genre == 1].mean() > scores[1, genre == 0].mean() + 0.5


def test_example_budget_shrinks_epochs_not_their_number(rng: np.random.Generator) -> None:
    from tasks.modeling.train import examples_per_epoch

    assert examples_per_epoch(100, 5, None) == 100
    assert examples_per_epoch(100, 5, 500) == 100
    assert examples_per_epoch(100, 20, 1000) == 50
    assert examples_per_epoch(10, 3, 1) == 1
    data, _ = _checkerboard(rng)
    config = dataclasses.replace(PLAIN, batch_size=64, max_epochs=4, max_examples=600)
    result = train_model(data, config, seed=2)
    assert [h["examples"] for h in result.history] == [150] * 4


@pytest.mark.parametrize("refit", ["full", "warm", "none"])
def test_refit_modes_publish_what_they_say(
    tiny_data: tuple[Path, Path], tmp_path: Path, refit: str
) -> None:
    """full: trained again on every rating for the validation run's epochs; warm: from the
    validation weights for a fifth of them; none: the validation model itself, with the scalers it
    was trained with."""
    from tasks.evaluation.selection import run_train_choosing
    from tasks.ingestion.ingest import run_ingest
    from tasks.modeling.fitting import run_refit
    from tasks.modeling.model import load_model
    from tasks.preparation.phases import run_features, run_scalers
    from tasks.stage_results import Phases

    config = preset("default", max_epochs=3, refit=refit, loss_choice=False)
    ingested = run_ingest(tiny_data[0], tiny_data[1], tmp_path / "store")
    ratings = Path(ingested["ratings"])
    feats = run_features(ratings, Path(ingested["movies"]), tmp_path / "features", config, 0.2)
    dirs = Phases(train=feats["train"], full=feats["full"])
    scalers = run_scalers(ratings, dirs, 0.2)
    trained = run_train_choosing(ratings, dirs, scalers, tmp_path / "train", config, 1, 0.2, 10)
    out = run_refit(
        ratings,
        dirs,
        scalers,
        Path(trained["validation_model"]),
        tmp_path / "train",
        config,
        1,
        3,
        0.2,
    )
    validation = load_model(Path(trained["validation_model"])).get_weights()
    published = load_model(Path(out["model"])).get_weights()
    same = all(np.array_equal(a, b) for a, b in zip(validation, published, strict=True))
    assert out["refit_epochs"] == {"full": 3, "warm": 1, "none": 0}[refit]
    assert out["scalers"] == (scalers["train"] if refit == "none" else scalers["full"])
    assert same == (refit == "none")
    if refit == "warm":  # a fifth of the epochs and of the examples a full refit would see
        n = len(pd.read_parquet(ratings))
        assert sum(h["examples"] for h in out["history"]) == math.ceil(3 * n * 0.2)


@pytest.mark.parametrize("norm", [1.0, 12.0], ids=["shifted", "row-max"])
def test_in_batch_softmax_matches_autodiff_of_the_plain_expression(
    rng: np.random.Generator, norm: float
) -> None:
    """The hand-written softmax equals TensorFlow's autodiff of the textbook masked softmax.

    Every example of a movie has that movie's vector and log_q, as without leave-one-out rows; the
    softmax gives a movie's column gradient to its first example, so the movie gradients are
    compared summed per movie. ``norm`` 12 makes the bound on the logits too loose for one shift
    (the per-row path)."""
    import tensorflow as tf

    from tasks.modeling.train import in_batch_softmax

    n, d, temperature, k = 64, 8, 0.1, 20
    ue = rng.normal(size=(n, d))
    ue = tf.constant((norm * ue / np.linalg.norm(ue, axis=1, keepdims=True)).astype(np.float32))
    ids = rng.integers(0, k, n)  # many accidental hits
    per_movie = rng.normal(size=(k, d))
    per_movie /= np.linalg.norm(per_movie, axis=1, keepdims=True)
    me = tf.constant(per_movie[ids], tf.float32)
    movies = tf.constant(ids.astype(np.int32))
    q = tf.constant(rng.normal(size=k).astype(np.float32)[ids])

    def plain(u: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
        logits = tf.matmul(u, v, transpose_b=True) / temperature - q[tf.newaxis, :]
        same = tf.equal(movies[:, tf.newaxis], movies[tf.newaxis, :])
        accidental = tf.logical_and(same, tf.logical_not(tf.eye(n, dtype=tf.bool)))
        logits = tf.where(accidental, tf.constant(-1e9, logits.dtype), logits)
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.range(n), logits=logits)
        )

    results = []
    for loss_of in (plain, lambda u, v: in_batch_softmax(u, v, q, movies, temperature)):
        with tf.GradientTape() as tape:
            tape.watch([ue, me])
            loss = 3.0 * loss_of(ue, me)
        d_ue, d_me = (g.numpy() for g in tape.gradient(loss, [ue, me]))
        per_movie_grad = np.zeros((k, d), dtype=np.float64)
        np.add.at(per_movie_grad, ids, d_me)
        results.append([loss.numpy(), d_ue, per_movie_grad])
    for ours, theirs in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=2e-5)
    assert np.abs(results[0][1]).max() > 1e-3  # the gradient compared is not zero
