"""Dropout for the towers: one random byte per unit, or in training a window of masks drawn once
per epoch.

Why not ``keras.layers.Dropout``: on 2 CPU cores a training step of the default towers drops
units of 1,024 x 768 activations, and drawing them was most of dropout's cost. Keras's draws a
float per unit with Philox; :class:`ByteDropout` alone draws one byte per unit (four per 32-bit
word). The trainer goes further (:class:`MaskPool`): each layer gets a block of ready-made masks,
``8 x batch`` rows of 0 or 1 / keep, drawn once per epoch, and each step multiplies its batch by a
window of consecutive rows at a random offset (a slice that copies nothing). Within a step every
example of a layer has a mask row of its own; within an epoch a row serves several examples of
different steps (about ten at ml-latest-small's 80 steps an epoch), which leaves each example's own
mask as random as before. On ml-latest-small this took a step from 8.3 to 7.4 ms.

The towers' hidden layers are :class:`DropoutDense`: the ReLU ``Dense`` and its dropout in one
layer, so that one ReLU gradient does the work of two passes (7.3 to 7.1 ms and 6.9 to 6.5 ms,
alternating). :class:`ByteDropout` stays for models saved before it, and loads as it was.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

# mask rows per layer, in batches: the reuse of a row within an epoch is steps / this
POOL_BATCHES = 8


@keras.saving.register_keras_serializable(package="towerflow")
class ByteDropout(layers.Layer):  # type: ignore[misc]  # keras ships no types
    """Dropout whose keep/drop draw is one random byte per unit: four units per 32-bit random word.

    The rate is rounded to a multiple of 1/256 (0.2 drops 51/256 = 0.199); in inference the layer
    passes its input through, like Keras's. With a :class:`MaskPool` attached (the trainer's), it
    takes its training masks from there instead of drawing them.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed, self.seed_generator = seed, keras.random.SeedGenerator(seed)
        self.drops = _Drops(rate, seed, "ByteDropout")

    @property
    def rate(self) -> float:
        return self.drops.rate

    @property
    def threshold(self) -> int:
        return self.drops.threshold

    @property
    def pool(self) -> MaskPool | None:
        return self.drops.pool

    def call(self, inputs: Any, training: bool = False) -> Any:
        if not training or self.threshold == 0:
            return inputs
        import tensorflow as tf

        return inputs * self.drops.mask(self, tf.shape(inputs), inputs.shape[-1], inputs.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class _Drops:
    """What both dropout layers share: the rate as a byte threshold, the scale of a kept unit, and
    the :class:`MaskPool` the trainer may attach. (Each layer keeps its own seed generator, so that
    Keras tracks it.)"""

    def __init__(self, rate: float, seed: int | None, layer: str) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{layer} rate must be in [0, 1), got {rate!r}")
        self.rate, self.seed = float(rate), seed
        self.threshold = min(255, round(self.rate * 256))
        self.scale = 256.0 / (256 - self.threshold)
        self.pool: MaskPool | None = None

    def mask(self, layer: Any, shape: Any, width: int | None, dtype: Any) -> Any:
        """A training mask of ``shape`` (last axis ``width`` when known): a window of the pool's
        rows if one is attached, else fresh bytes."""
        seed = layer.seed_generator.next()
        if self.pool is not None:
            return self.pool.window(layer, shape[0], seed)
        return byte_mask(shape, width, dtype, seed, self.threshold)


def byte_mask(shape: Any, width: int | None, dtype: Any, seed: Any, threshold: int) -> Any:
    """A dropout mask of ``shape``: 0 where a random byte is below ``threshold``, else
    256 / (256 - threshold). ``width`` is the last axis when known statically."""
    import tensorflow as tf

    if width is not None and width % 4 == 0:  # one word per four units of a row: no flattening
        rows = tf.reduce_prod(shape[:-1])
        words = tf.random.stateless_uniform(
            [rows, width // 4], seed, minval=None, maxval=None, dtype=tf.uint32
        )
        draws = tf.reshape(tf.bitcast(words, tf.uint8), shape)
    else:
        n = tf.reduce_prod(shape)
        words = tf.random.stateless_uniform(
            [(n + 3) // 4], seed, minval=None, maxval=None, dtype=tf.uint32
        )
        draws = tf.reshape(tf.reshape(tf.bitcast(words, tf.uint8), [-1])[:n], shape)
    return tf.cast(draws >= threshold, dtype) * (256.0 / (256 - threshold))


@keras.saving.register_keras_serializable(package="towerflow")
class DropoutDense(layers.Dense):  # type: ignore[misc]  # keras ships no types
    """A ReLU ``Dense`` layer and dropout on its output (rate and masks as :class:`ByteDropout`'s),
    with the pair's gradient written as one.

    Why: autodiff of ``relu(x W + b) * mask`` multiplies the upstream gradient by the mask, then
    TensorFlow's ReLU gradient masks it again by the activation: two passes over the batch x
    units. The kept, positive units are exactly those where the output is positive, so one ReLU
    gradient against the output does both; the mask's scale (1 / keep) goes onto the small
    products (the kernel, the kernel's and the bias's gradients). In inference, and with rate 0,
    it is Keras's ``Dense`` with ReLU; its weights and their names are a ``Dense``'s.
    """

    def __init__(
        self, units: int, rate: float = 0.0, dropout_seed: int | None = None, **kwargs: Any
    ) -> None:
        kwargs["activation"] = "relu"
        super().__init__(units, **kwargs)
        self.dropout_seed = dropout_seed
        self.seed_generator = keras.random.SeedGenerator(dropout_seed)
        self.drops = _Drops(rate, dropout_seed, "DropoutDense")

    @property
    def rate(self) -> float:
        return self.drops.rate

    @property
    def threshold(self) -> int:
        return self.drops.threshold

    @property
    def pool(self) -> MaskPool | None:
        return self.drops.pool

    def call(self, inputs: Any, training: bool = False) -> Any:
        if not training or self.threshold == 0:
            return super().call(inputs)
        import tensorflow as tf

        shape = tf.stack([tf.shape(inputs)[0], self.units])
        mask = self.drops.mask(self, shape, self.units, inputs.dtype)
        return _relu_dropout(
            inputs,
            tf.convert_to_tensor(self.kernel),
            tf.convert_to_tensor(self.bias),
            mask,
            self.drops.scale,
        )

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "rate": self.rate, "dropout_seed": self.dropout_seed}
        config.pop("activation", None)
        return config


def _relu_dropout(x: Any, kernel: Any, bias: Any, mask: Any, scale: float) -> Any:
    """``relu(x kernel + bias) * mask`` (mask values 0 or ``scale``) and its gradient: ``g`` =
    the upstream gradient where the output is positive, and ``scale`` applied to the products."""
    import tensorflow as tf

    @tf.custom_gradient  # type: ignore[untyped-decorator]  # tensorflow ships no types
    def forward(x: Any, kernel: Any, bias: Any) -> Any:
        y = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, kernel), bias)) * mask

        def grad(dy: Any) -> tuple[Any, Any, Any]:
            g = tf.raw_ops.ReluGrad(gradients=dy, features=y)
            return (
                tf.matmul(g, kernel * scale, transpose_b=True),
                tf.matmul(x, g, transpose_a=True) * scale,
                tf.reduce_sum(g, axis=0) * scale,
            )

        return y, grad

    return forward(x, kernel, bias)


class MaskPool:
    """Training masks of the dropout layers of one model (:class:`DropoutDense`, and
    :class:`ByteDropout` in models built before it): per layer, ``rows`` x
    width values of 0 (dropped) or 1 / keep, redrawn by :meth:`draw`.

    Attached to the layers by :meth:`attach` and taken off by :meth:`detach` (it is never saved
    with the model); ``rows`` must be at least the largest batch the model trains on.
    """

    def __init__(self, model: keras.Model, rows: int, seed: int) -> None:
        import tensorflow as tf

        self.layers = [
            layer
            for layer in _all_layers(model)
            if isinstance(layer, ByteDropout | DropoutDense) and layer.threshold > 0
        ]
        self.rows, self.seed = rows, seed
        self.masks = {
            id(layer): tf.Variable(
                tf.zeros([rows, _width(layer)]), trainable=False, name=layer.name
            )
            for layer in self.layers
        }
        self._draw = tf.function(self._draw_all, autograph=False)  # no tensor control flow

    def attach(self) -> None:
        for layer in self.layers:
            layer.drops.pool = self

    def detach(self) -> None:
        for layer in self.layers:
            layer.drops.pool = None

    def draw(self, epoch: int) -> None:
        """Draw every layer's masks afresh, from the pool's seed, the layer's own and ``epoch``."""
        import tensorflow as tf

        self._draw(tf.constant(epoch, tf.int32))

    def _draw_all(self, epoch: Any) -> None:
        import tensorflow as tf

        for layer in self.layers:
            mask = self.masks[id(layer)]
            both = ((layer.drops.seed or 0) ^ self.seed) & 0x7FFFFFFF
            seed = tf.stack([tf.constant(both, tf.int32), epoch])
            # one random byte per unit, as a layer without a pool draws them: a quarter of the
            # random words of an int32 per unit (a draw of every pool was 20 ms an epoch, 0.25 ms
            # a step of ml-latest-small's)
            mask.assign(byte_mask(mask.shape, mask.shape[-1], mask.dtype, seed, layer.threshold))

    def window(self, layer: ByteDropout | DropoutDense, n: Any, seed: Any) -> Any:
        """``layer``'s masks for a batch of ``n`` rows: ``n`` consecutive rows from a random one."""
        import tensorflow as tf

        start = tf.random.stateless_uniform(
            [], seed, minval=0, maxval=self.rows - n + 1, dtype=tf.int32
        )
        return self.masks[id(layer)][start : start + n]


def _width(layer: ByteDropout | DropoutDense) -> int:
    return int(layer.units if isinstance(layer, DropoutDense) else layer.input.shape[-1])


def _all_layers(model: keras.Model) -> list[Any]:
    """Every layer of ``model``, nested models' included."""
    out: list[Any] = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_all_layers(layer))
    return out
