"""The ablation's two switches do what they say, and its measures are right on hand-made numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from benchmarks.ablation_measures import (
    distinct_share,
    norm_summary,
    out_of_range_share,
    overlap_at_k,
    similar_lists,
    variants,
)
from tasks.modeling.model import build_model, run_tower, towers
from tasks.modeling.train import predict_scores, train_model
from tasks.preparation.scalers import fit_scalers, load_scalers, save_scalers
from tasks.preparation.training import TrainData
from tasks.presets import preset
from tasks.store.storage import read_json, write_json


def test_variants_differ_only_in_the_two_switches() -> None:
    found = {name: dataclasses.asdict(c) for name, c in variants(max_epochs=3).items()}
    lab = found.pop("(a) lab: L2 + minmax")
    assert (lab["normalize"], lab["target_scale"], lab["max_epochs"]) == (True, "minmax", 3)
    switches = set()
    for name, config in found.items():
        if name.startswith("default"):
            continue
        changed = {key for key in lab if lab[key] != config[key]}
        assert changed <= {"normalize", "target_scale"} and changed, name
        switches.add((config["normalize"], config["target_scale"]))
    assert switches == {(False, "minmax"), (True, "stars"), (False, "stars")}


def test_unnormalized_towers_give_non_unit_embeddings(rng: np.random.Generator) -> None:
    x = rng.normal(size=(50, 4)).astype(np.float32)
    for normalize in (True, False):
        model = build_model(4, 4, dataclasses.replace(preset("lab"), normalize=normalize))
        norms = np.linalg.norm(run_tower(towers(model)[0], x), axis=1)
        assert np.allclose(norms, 1.0, atol=1e-5) == normalize
        assert any(layer.name.endswith("_l2") for layer in towers(model)[0].layers) == normalize


def test_stars_target_is_the_identity_and_round_trips(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    ux, mx = rng.normal(size=(10, 3)), rng.normal(size=(12, 2))
    y = np.array([0.5, 1.0, 3.5, 5.0, 4.0])
    stars = fit_scalers(ux, mx, y, list("abc"), list("xy"), target_scale="stars")
    np.testing.assert_array_equal(stars.rating_to_target(y), y.astype(np.float32))
    np.testing.assert_array_equal(
        stars.target_to_rating(np.array([0.7, 6.0])), np.array([0.7, 6.0], np.float32)
    )
    back = load_scalers(save_scalers(stars, tmp_path / "stars.json"))
    assert back.target_scale == "stars"
    np.testing.assert_array_equal(back.rating_to_target(y), y.astype(np.float32))
    # a file written before the switch existed has no "scale": it reads as minmax
    old = read_json(
        save_scalers(fit_scalers(ux, mx, y, list("abc"), list("xy")), tmp_path / "old.json")
    )
    del old["target"]["scale"]
    legacy = load_scalers(write_json(tmp_path / "old.json", old))
    assert legacy.target_scale == "minmax"
    np.testing.assert_allclose(legacy.rating_to_target(np.array([0.5, 5.0])), [-1.0, 1.0])
    with pytest.raises(ValueError, match="unknown target scale"):
        fit_scalers(
            ux,
            mx,
            y,
            list("abc"),
            list("xy"),
            target_scale="percent",  # type: ignore[arg-type]
        )


@pytest.mark.train
def test_normalized_model_with_stars_target_stays_at_or_below_one_star(
    rng: np.random.Generator,
) -> None:
    """Targets of 1 and 4.5 stars: the unit-vector dot product cannot exceed 1, an unnormalized one
    can.
    """
    kind, genre = (np.arange(40) >= 20).astype(int), (np.arange(20) >= 10).astype(int)
    user_x, movie_x = (
        np.eye(2, dtype=np.float32)[kind] * 2 - 1,
        np.eye(2, dtype=np.float32)[genre] * 2 - 1,
    )
    u = np.repeat(np.arange(40), 10)
    m = rng.integers(0, 20, len(u))
    data = TrainData(
        user_x, movie_x, u, m, np.where(kind[u] == genre[m], 4.5, 1.0).astype(np.float32)
    )
    base = dataclasses.replace(preset("lab"), batch_size=32, max_epochs=6, target_scale="stars")
    pairs = (np.repeat(np.arange(40), 20), np.tile(np.arange(20), 40))
    for normalize in (True, False):
        result = train_model(data, dataclasses.replace(base, normalize=normalize), seed=1)
        top = predict_scores(result.model, user_x, movie_x, *pairs).max()
        assert (top <= 1.0 + 1e-5) if normalize else (top > 3.0)
        assert {"grad_norm_mean", "grad_norm_max"} <= set(result.history[-1])
        assert 0 < result.history[-1]["grad_norm_mean"] <= result.history[-1]["grad_norm_max"]


def test_out_of_range_share_on_hand_made_numbers() -> None:
    assert out_of_range_share(np.array([0.4, 0.5, 3.0, 5.0, 5.00001, 5.2])) == pytest.approx(2 / 6)
    assert out_of_range_share(np.array([1.0, 2.0])) == 0.0
    with pytest.raises(ValueError):
        out_of_range_share(np.array([]))


def test_norm_summary_on_hand_made_vectors() -> None:
    got = norm_summary(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    assert (got["mean"], got["min"], got["max"], got["distinct"]) == pytest.approx(
        (4 / 3, 1.0, 2.0, 2 / 3)
    )
    assert got["concentration"] == pytest.approx(np.hypot(2 / 3, 1 / 3))
    assert norm_summary(np.array([[3.0, 0.0], [1.0, 0.0]]))["concentration"] == pytest.approx(1.0)


def test_overlap_at_k_on_a_hand_made_example() -> None:
    a = {1: [10, 20, 30], 2: [40, 50, 60], 3: [70, 80, 90]}
    b = {1: [30, 20, 99], 2: [60, 50, 40]}  # user 3 missing: no overlap
    assert overlap_at_k(a, b, 3) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert overlap_at_k(a, a, 2) == 1.0
    # only the first item counts at k=1
    assert overlap_at_k({1: [10, 20, 30]}, {1: [30, 20, 10]}, 1) == 0.0


def test_inner_product_neighbours_follow_norms_cosine_ones_direction() -> None:
    emb = np.array([[20.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.2], [1.0, 0.1]], dtype=np.float32)
    ip, cos = similar_lists(emb, 1, cosine=False), similar_lists(emb, 1, cosine=True)
    assert all(i not in items for i, items in ip.items())  # never the movie itself
    # the long vector is everyone's nearest by inner product
    assert [ip[i][0] for i in (2, 3, 4)] == [0, 0, 0]
    assert (cos[1][0], cos[2][0], cos[3][0]) == (2, 1, 4)
    assert distinct_share(ip, 5) < distinct_share(cos, 5)
    assert overlap_at_k(ip, cos, 1) < 1.0


@pytest.mark.train
def test_measure_end_to_end_on_tiny_data(tiny_data: tuple[Path, Path]) -> None:
    """One short training per switch on generated data: FAISS agrees with the model up to ties,
    norms as set.
    """
    import pandas as pd

    from benchmarks.ablation_measures import measure, train_variant
    from tasks.preparation.features import per_user_holdout

    ratings = pd.read_csv(tiny_data[0]).rename(columns={"userId": "user_id", "movieId": "movie_id"})
    movies = pd.read_csv(tiny_data[1]).rename(columns={"movieId": "movie_id"})
    movies["year"] = movies["title"].str.extract(r"\((\d{4})\)\s*$", expand=False).astype("Int32")
    hold = per_user_holdout(ratings, 0.2)
    for normalize in (True, False):
        config = dataclasses.replace(
            variants(max_epochs=1)["(a) lab: L2 + minmax"], batch_size=256, normalize=normalize
        )
        fitted, history = train_variant(ratings[~hold], movies, config, seed=1)
        row = measure("x", config, fitted, history, ratings[~hold], ratings[hold], k=5)
        assert row["faiss_valid"] == 1.0
        assert 0.0 <= row["outside_test"] <= 1.0 and 0.0 <= row["outside_all"] <= 1.0
        assert (abs(row["movie_norm"]["mean"] - 1.0) < 1e-4) == normalize
        assert row["rmse"] <= row["rmse_unclipped"] + 1e-9
        assert 0.0 < row["coverage"] <= 1.0 and len(history) == 1
