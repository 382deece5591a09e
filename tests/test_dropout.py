"""Dropout: the trainer's mask pool drops the rate of units, reproducibly, and is never saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.presets import preset

pytestmark = pytest.mark.train


def test_pool_masks_are_windows_of_rows_drawn_per_epoch_and_never_saved(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A batch's masks are consecutive rows of its layer's pool, each unit 0 or 1 / keep; the same
    epoch draws the same pool and another epoch another; the saved model holds no mask."""
    import tensorflow as tf

    from tasks.modeling.dropout import ByteDropout, MaskPool
    from tasks.modeling.model import build_model, load_model, save_model, towers

    config = preset("default")
    model = build_model(5, 7, config, seed=3)
    pool = MaskPool(model, rows=256, seed=3)
    assert len(pool.layers) == 2 * len(config.hidden)
    pool.attach()
    pool.draw(1)
    layer = pool.layers[0]
    keep = (256 - layer.threshold) / 256
    masks = pool.masks[id(layer)].numpy()
    assert set(np.unique(masks)) == {0.0, np.float32(1 / keep)}
    assert abs((masks == 0).mean() - layer.threshold / 256) < 0.01  # 51/256 of 65k units
    x = tf.constant(rng.uniform(1.0, 2.0, size=(40, masks.shape[1])).astype(np.float32))
    out = layer(x, training=True).numpy()
    np.testing.assert_allclose(out[out != 0], (x.numpy() / keep)[out != 0], rtol=1e-6)
    start = int(np.flatnonzero(((masks == 0) == (out[0] == 0)).all(axis=1))[0])
    np.testing.assert_array_equal(out == 0, masks[start : start + len(out)] == 0)
    pool.draw(2)
    assert not np.array_equal(pool.masks[id(layer)].numpy(), masks)
    pool.draw(1)
    np.testing.assert_array_equal(pool.masks[id(layer)].numpy(), masks)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    pool.detach()
    assert layer.pool is None and isinstance(layer, ByteDropout)
    again = load_model(save_model(model, tmp_path / "m.keras"))
    assert len(again.get_weights()) == len(model.get_weights())
    assert all(getattr(lay, "pool", None) is None for lay in towers(again)[0].layers)
