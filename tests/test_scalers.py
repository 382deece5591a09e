"""Scalers survive a JSON round trip exactly; nothing is pickled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tasks.preparation.scalers import fit_scalers, load_scalers, save_scalers


def test_json_round_trip_is_exact(tmp_path: Path, rng: np.random.Generator) -> None:
    ux, mx = rng.normal(3, 2, (50, 4)), rng.normal(-1, 5, (80, 3))
    ux[:, 2] = 7.0  # a constant column
    y = rng.choice(np.arange(0.5, 5.5, 0.5), 200)
    s = fit_scalers(ux, mx, y, list("abcd"), list("xyz"))
    path = save_scalers(s, tmp_path / "scalers.json")
    assert json.loads(path.read_text())["target"]["feature_range"] == [-1, 1]
    t = load_scalers(path)
    np.testing.assert_array_equal(t.user.transform(ux), s.user.transform(ux))
    np.testing.assert_array_equal(t.movie.transform(mx), s.movie.transform(mx))
    np.testing.assert_array_equal(t.rating_to_target(y), s.rating_to_target(y))
    np.testing.assert_allclose(t.target_to_rating(np.array([-1.0, 1.0])), [y.min(), y.max()])
    assert t.user_names == list("abcd") and t.movie_names == list("xyz")


def test_query_scalers_give_scikit_learns_numbers_without_it(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    from tasks.preparation.scalers import QueryScalers

    ux, mx = rng.normal(3, 2, (50, 4)), rng.normal(-1, 5, (80, 3))
    ux[:, 2] = 7.0  # a constant column: scale 1
    y = rng.choice(np.arange(0.5, 5.5, 0.5), 200)
    for mode in ("minmax", "stars"):
        s = fit_scalers(ux, mx, y, list("abcd"), list("xyz"), target_scale=mode)
        q = QueryScalers.read(save_scalers(s, tmp_path / f"{mode}.json"))
        np.testing.assert_array_equal(q.user(ux), s.user.transform(ux).astype(np.float32))
        # the pipeline's feature rows are float32: computed in float32 by both
        rows32 = ux.astype(np.float32)
        np.testing.assert_array_equal(q.user(rows32), s.user.transform(rows32))
        scores = rng.uniform(-1, 1, 300)
        np.testing.assert_array_equal(q.target_to_rating(scores), s.target_to_rating(scores))
        assert q.user_names == list("abcd") and q.target_scale == mode
