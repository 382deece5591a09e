"""The two-tower model: a user MLP and a movie MLP, each L2-normalized, joined by a dot product.

:func:`l2_normalize` is the one place embeddings are normalized; the towers end
in :class:`L2Normalize`, so every embedding the pipeline exports or searches
comes out of a tower already on the unit sphere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from tasks.modeling.dropout import ByteDropout, DropoutDense  # noqa: F401  (saved models)
from tasks.preparation.training import TowerInput
from tasks.presets import ModelConfig

USER_TOWER = "user_tower"
MOVIE_TOWER = "movie_tower"


def l2_normalize(x: Any, epsilon: float = 1e-12) -> Any:
    """Scale each row of ``x`` to unit L2 norm; an all-zero row stays zero (no NaN)."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, epsilon)


@keras.saving.register_keras_serializable(package="towerflow")
class L2Normalize(layers.Layer):  # type: ignore[misc]  # keras ships no types
    """Keras layer wrapper of :func:`l2_normalize` (serializable, safe_mode loadable)."""

    def __init__(self, epsilon: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs: Any) -> Any:
        return l2_normalize(inputs, self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="towerflow")
class HistoryMean(layers.Layer):  # type: ignore[misc]  # keras ships no types
    """What a user's rated movies say about them: learned movie vectors averaged over the history.

    Inputs are ids (catalog row + 1; 0 pads) and, per id, the user's rating
    minus their mean rating. The output is the plain mean of one learned table
    (what they watch) beside the rating-weighted mean of another (what they
    liked more or less than usual), as in asymmetric SVD. Both tables start at
    zero, so an empty history (a newcomer) gives a zero vector.
    """

    def __init__(self, n_movies: int, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if n_movies < 1 or dim < 1:
            raise ValueError(
                f"HistoryMean needs n_movies >= 1 and dim >= 1, got {n_movies} and {dim}"
            )
        self.n_movies, self.dim = n_movies, dim
        self.seen = layers.Embedding(
            n_movies + 1, dim, embeddings_initializer="zeros", name="seen_vectors"
        )
        self.liked = layers.Embedding(
            n_movies + 1, dim, embeddings_initializer="zeros", name="liked_vectors"
        )

    def build(self, input_shape: Any) -> None:
        self.seen.build(input_shape[0])
        self.liked.build(input_shape[0])

    def call(self, inputs: Any) -> Any:
        ids, values = inputs
        mask = ops.expand_dims(ops.cast(ops.not_equal(ids, 0), "float32"), -1)
        count = ops.maximum(ops.sum(mask, axis=1), 1.0)
        seen = ops.sum(self.seen(ids) * mask, axis=1) / count
        liked = ops.sum(self.liked(ids) * mask * ops.expand_dims(values, -1), axis=1) / count
        return ops.concatenate([seen, liked], axis=-1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0][0], 2 * self.dim)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_movies": self.n_movies, "dim": self.dim}


def layer_seed(seed: int, layer: str) -> int:
    """The seed of one layer's initializer or dropout masks: a function of the run's seed and the
    layer's name only.

    Keras draws an unseeded layer's seed from Python's global ``random`` when the layer is created,
    so any other thread using ``random`` meanwhile (Prefect's client backs off with jitter) would
    change the model a seed stands for, and a resumed night would no longer reproduce a clean one.
    """
    digest = hashlib.sha256(f"{seed}:{layer}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1)


def _dense(units: int, name: str, seed: int, activation: str | None = None) -> layers.Dense:
    init = keras.initializers.GlorotUniform(seed=layer_seed(seed, name))
    return layers.Dense(units, activation=activation, kernel_initializer=init, name=name)


def _tower(
    name: str, n_features: int, config: ModelConfig, n_movies: int = 0, seed: int = 0
) -> keras.Model:
    features = keras.Input((n_features,), name=f"{name}_features")
    inputs: list[Any] = [features]
    x = features
    if n_movies > 0 and config.history_length > 0:
        ids = keras.Input((config.history_length,), dtype="int32", name=f"{name}_history_ids")
        values = keras.Input(
            (config.history_length,), dtype="float32", name=f"{name}_history_values"
        )
        inputs += [ids, values]
        history = HistoryMean(n_movies, config.embedding_dim, name=f"{name}_history")([ids, values])
        x = layers.Concatenate(name=f"{name}_with_history")([features, history])
    for i, width in enumerate(config.hidden):
        layer = f"{name}_dense_{i}"
        # dropout on the ReLU's output, in the same layer (one gradient for both: DropoutDense)
        x = DropoutDense(
            width,
            rate=config.dropout,
            dropout_seed=layer_seed(seed, f"{name}_dropout_{i}"),
            kernel_initializer=keras.initializers.GlorotUniform(seed=layer_seed(seed, layer)),
            name=layer,
        )(x)
    x = _dense(config.embedding_dim, f"{name}_out", seed)(x)
    if config.normalize:  # off only in the ablation: the raw dot product is then unbounded
        x = L2Normalize(name=f"{name}_l2")(x)
    return keras.Model(inputs if len(inputs) > 1 else features, x, name=name)


def build_model(
    n_user_features: int,
    n_movie_features: int,
    config: ModelConfig,
    n_movies: int = 0,
    seed: int = 0,
) -> keras.Model:
    """Two towers, outputs L2-normalized, prediction = their dot product (in [-1, 1]).

    Every random initializer and dropout layer is seeded from ``seed`` and its own name
    (:func:`layer_seed`), so the same seed builds the same model whatever else the process has done
    with its random generators.

    ``config.normalize=False`` drops the normalization (only the ablation does), so the
    dot product is unbounded.

    With ``config.history_length > 0`` (and the catalog size ``n_movies``) the
    user tower also takes the user's recent movies and learns a history vector
    (:class:`HistoryMean`) beside the user features.
    """
    if n_user_features < 1 or n_movie_features < 1:
        raise ValueError(
            f"need at least one feature per tower, got {n_user_features} and {n_movie_features}"
        )
    if config.history_length > 0 and n_movies < 1:
        raise ValueError(
            f"history_length={config.history_length} needs the catalog size n_movies, "
            f"got {n_movies}"
        )
    user_tower = _tower(USER_TOWER, n_user_features, config, n_movies, seed)
    movie_tower = _tower(MOVIE_TOWER, n_movie_features, config, seed=seed)
    u_in: list[Any] = [keras.Input((n_user_features,), name="user_features")]
    if len(user_tower.inputs) > 1:
        u_in.append(keras.Input((config.history_length,), dtype="int32", name="user_history_ids"))
        u_in.append(
            keras.Input((config.history_length,), dtype="float32", name="user_history_values")
        )
    m_in = keras.Input((n_movie_features,), name="movie_features")
    user = user_tower(u_in if len(u_in) > 1 else u_in[0])
    score = layers.Dot(axes=1, name="score")([user, movie_tower(m_in)])
    return keras.Model([*u_in, m_in], score, name="two_tower")


def towers(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """The (user, movie) tower sub-models of a two-tower model."""
    return model.get_layer(USER_TOWER), model.get_layer(MOVIE_TOWER)


def run_tower(tower: keras.Model, x: TowerInput, batch: int = 65536) -> np.ndarray:
    """Embed rows with a tower in batches (inference mode), as float32.

    ``x`` is a feature matrix, or (features, history ids, history values)
    for a user tower with a history input. A direct call instead of ``Model.predict``, which
    builds a new traced function per model and input shape and warns about
    retracing.
    """
    parts_in = [np.asarray(a) for a in (x if isinstance(x, tuple) else (x,))]
    parts_in[0] = parts_in[0].astype(np.float32, copy=False)
    if len(parts_in) != len(tower.inputs):
        raise ValueError(
            f"tower {tower.name} takes {len(tower.inputs)} input(s), got {len(parts_in)}"
        )
    n = len(parts_in[0])
    if n == 0:
        return np.zeros((0, tower.output_shape[-1]), dtype=np.float32)
    out = []
    for s in range(0, n, batch):
        chunk = [a[s : s + batch] for a in parts_in]
        out.append(
            np.asarray(
                tower(chunk if len(chunk) > 1 else chunk[0], training=False), dtype=np.float32
            )
        )
    return np.concatenate(out)


def save_model(model: keras.Model, path: Path) -> Path:
    """Save in the ``.keras`` format (weights and config only), atomically."""
    from tasks.store.storage import atomic_path

    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"model path must end in .keras, got {path}")
    with atomic_path(path) as tmp:
        keras_tmp = tmp.with_suffix(".keras")
        model.save(keras_tmp)
        keras_tmp.replace(tmp)
    return path


def load_model(path: Path) -> keras.Model:
    """Load a ``.keras`` model with ``safe_mode=True`` (no arbitrary code)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    return keras.models.load_model(path, safe_mode=True, compile=False)
