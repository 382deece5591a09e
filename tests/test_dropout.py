"""Dropout: the trainer's mask pool drops the rate of units, reproducibly, and is never saved; the
ReLU-and-dropout layer's written-out gradient is autodiff's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.presets import preset

pytestmark = pytest.mark.train


def _window(masks: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The consecutive rows of ``masks`` whose zeros are ``out``'s (a batch's masks)."""
    start = int(np.flatnonzero(((masks == 0) == (out[0] == 0)).all(axis=1))[0])
    return masks[start : start + len(out)]


def test_pool_masks_are_windows_of_rows_drawn_per_epoch_and_never_saved(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A batch's masks are consecutive rows of its layer's pool, each unit 0 or 1 / keep; the same
    epoch draws the same pool and another epoch another; the saved model holds no mask."""
    import tensorflow as tf

    from tasks.modeling.dropout import DropoutDense, MaskPool
    from tasks.modeling.model import build_model, load_model, save_model, towers

    config = preset("default")
    model = build_model(5, 7, config, seed=3)
    pool = MaskPool(model, rows=256, seed=3)
    assert len(pool.layers) == 2 * len(config.hidden)
    pool.attach()
    pool.draw(1)
    layer = pool.layers[0]
    assert isinstance(layer, DropoutDense)
    keep = (256 - layer.threshold) / 256
    masks = pool.masks[id(layer)].numpy()
    assert set(np.unique(masks)) == {0.0, np.float32(1 / keep)}
    assert abs((masks == 0).mean() - layer.threshold / 256) < 0.01  # 51/256 of 65k units
    # a positive bias: every unit active, so the zeros of the output are the mask's
    layer.bias.assign(np.full(layer.units, 100.0, dtype=np.float32))
    x = tf.constant(rng.uniform(0.0, 1.0, size=(40, 5)).astype(np.float32))
    plain = layer(x, training=False).numpy()
    out = layer(x, training=True).numpy()
    np.testing.assert_allclose(out, plain * _window(masks, out), rtol=1e-6)
    pool.draw(2)
    assert not np.array_equal(pool.masks[id(layer)].numpy(), masks)
    pool.draw(1)
    np.testing.assert_array_equal(pool.masks[id(layer)].numpy(), masks)
    pool.detach()
    assert layer.pool is None
    again = load_model(save_model(model, tmp_path / "m.keras"))
    assert len(again.get_weights()) == len(model.get_weights())
    assert all(getattr(lay, "pool", None) is None for lay in towers(again)[0].layers)


def test_relu_dropout_gradient_matches_autodiff(rng: np.random.Generator) -> None:
    """``DropoutDense``'s gradients (input, kernel, bias) equal autodiff of ``relu(x W + b) * mask``
    with the batch's mask, some units dropped and some negative."""
    import tensorflow as tf

    from tasks.modeling.dropout import DropoutDense, MaskPool

    inputs = tf.keras.Input((6,))
    layer = DropoutDense(16, rate=0.3, dropout_seed=5)
    model = tf.keras.Model(inputs, layer(inputs))
    pool = MaskPool(model, rows=64, seed=1)
    pool.attach()
    pool.draw(1)
    x = tf.constant(rng.normal(size=(32, 6)).astype(np.float32))
    weights = tf.constant(rng.normal(size=(32, 16)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = layer(x, training=True)
        ours = tape.gradient(tf.reduce_sum(out * weights), [x, layer.kernel, layer.bias])
    masks = pool.masks[id(layer)].numpy()
    z = x.numpy() @ layer.kernel.numpy() + layer.bias.numpy()
    assert (z < 0).any() and (masks == 0).any()
    # the window: the rows whose product with the plain output gives this output
    plain = np.maximum(z, 0.0)
    # atol: NumPy's and TensorFlow's float32 products differ by ~1e-7 absolute, which a unit near
    # zero fails at any rtol (one draw of the kernel in six did at rtol 1e-6 alone); a wrong window
    # differs by whole activations
    start = next(
        s
        for s in range(len(masks) - len(z) + 1)
        if np.allclose(plain * masks[s : s + len(z)], out.numpy(), rtol=1e-5, atol=1e-5)
    )
    mask = tf.constant(masks[start : start + len(z)])
    with tf.GradientTape() as tape:
        tape.watch(x)
        reference = tf.nn.relu(x @ layer.kernel + layer.bias) * mask
        theirs = tape.gradient(tf.reduce_sum(reference * weights), [x, layer.kernel, layer.bias])
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(theirs[1])).max() > 1e-3
