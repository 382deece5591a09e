"""The night's choice of MSE weight (tasks/evaluation/selection.py): which candidate the holdout
keeps, and on which users."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tasks.errors import ConfigError
from tasks.evaluation.evaluate import CHOICE_USERS, best_candidate, choice_users
from tasks.presets import ModelConfig, preset


def test_the_first_is_kept_unless_another_is_better_with_confidence(
    rng: np.random.Generator,
) -> None:
    first = rng.uniform(0.0, 1.0, 600)
    # a little better on average, but within the noise: the first stays
    noisy = np.clip(first + rng.normal(0.005, 0.3, 600), 0.0, 1.0)
    assert best_candidate([first, noisy]) == 0
    # better on most users: chosen; of two better ones, the better mean
    better = np.clip(first + 0.05, 0.0, 1.0)
    best = np.clip(first + 0.1, 0.0, 1.0)
    assert best_candidate([first, better]) == 1
    assert best_candidate([first, better, best]) == 2
    assert best_candidate([first, first - 0.1]) == 0
    assert best_candidate([first]) == 0
    with pytest.raises(ValueError, match="no candidate"):
        best_candidate([])


def test_the_choice_rests_on_a_seeded_sample_of_the_sweep_users() -> None:
    few = {u: {1} for u in range(100)}
    assert choice_users(few, 0) == few
    many = {u: {u} for u in range(3 * CHOICE_USERS)}
    chosen = choice_users(many, 5)
    assert len(chosen) == CHOICE_USERS and chosen == choice_users(many, 5)
    assert all(many[u] == movies for u, movies in chosen.items())
    assert chosen != choice_users(many, 6)


def test_the_default_tries_a_ranking_led_weight_and_alternatives_must_be_positive() -> None:
    default = preset("default")
    assert default.mse_weight == 40.0 and default.mse_weight_alternatives == (10.0,)
    assert ModelConfig.from_dict(default.to_dict()) == default
    # the alternative goes on from the first's weights for a quarter of its epochs
    first, alternative = default.candidates()
    assert (first.mse_weight, first.max_epochs, first.max_examples) == (40.0, 20, 2_400_000)
    assert (alternative.mse_weight, alternative.max_epochs, alternative.max_examples) == (
        10.0,
        5,
        600_000,
    )
    assert first.mse_weight_alternatives == alternative.mse_weight_alternatives == ()
    assert preset("default", max_epochs=2).candidates()[1].max_epochs == 1
    unbounded = dataclasses.replace(default, max_examples=None)
    assert unbounded.candidates()[1].max_examples is None
    assert [c.mse_weight for c in preset("lab").candidates()] == [1.0]
    assert preset("lab").mse_weight_alternatives == ()
    with pytest.raises(ConfigError, match="mse_weight_alternatives must all be > 0"):
        preset("default", mse_weight_alternatives=(10.0, 0.0))
