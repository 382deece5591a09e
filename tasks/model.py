"""The two-tower model: a user MLP and a movie MLP, each L2-normalized, joined by a dot product.

:func:`l2_normalize` is the one place embeddings are normalized; the towers end
in :class:`L2Normalize`, so every embedding the pipeline exports or searches
comes out of a tower already on the unit sphere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from tasks.config import ModelConfig

USER_TOWER = "user_tower"
MOVIE_TOWER = "movie_tower"


def l2_normalize(x: Any, epsilon: float = 1e-12) -> Any:
    """Scale each row of ``x`` to unit L2 norm; an all-zero row stays zero (no NaN)."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, epsilon)


@keras.saving.register_keras_serializable(package="towerflow")
class L2Normalize(layers.Layer):
    """Keras layer wrapper of :func:`l2_normalize` (serializable, safe_mode loadable)."""

    def __init__(self, epsilon: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs: Any) -> Any:
        return l2_normalize(inputs, self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


def _tower(name: str, n_features: int, config: ModelConfig) -> keras.Model:
    inputs = keras.Input((n_features,), name=f"{name}_features")
    x = inputs
    for i, width in enumerate(config.hidden):
        x = layers.Dense(width, activation="relu", name=f"{name}_dense_{i}")(x)
        if config.dropout > 0:
            x = layers.Dropout(config.dropout, name=f"{name}_dropout_{i}")(x)
    x = layers.Dense(config.embedding_dim, name=f"{name}_out")(x)
    return keras.Model(inputs, L2Normalize(name=f"{name}_l2")(x), name=name)


def build_model(n_user_features: int, n_movie_features: int, config: ModelConfig) -> keras.Model:
    """Two towers, outputs L2-normalized, prediction = their dot product (in [-1, 1])."""
    if n_user_features < 1 or n_movie_features < 1:
        raise ValueError(f"need at least one feature per tower, got {n_user_features} and {n_movie_features}")
    user_tower = _tower(USER_TOWER, n_user_features, config)
    movie_tower = _tower(MOVIE_TOWER, n_movie_features, config)
    u_in = keras.Input((n_user_features,), name="user_features")
    m_in = keras.Input((n_movie_features,), name="movie_features")
    score = layers.Dot(axes=1, name="score")([user_tower(u_in), movie_tower(m_in)])
    return keras.Model([u_in, m_in], score, name="two_tower")


def towers(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """The (user, movie) tower sub-models of a two-tower model."""
    return model.get_layer(USER_TOWER), model.get_layer(MOVIE_TOWER)


def run_tower(tower: keras.Model, x: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Embed feature rows with a tower in batches (inference mode), as float32.

    A direct call instead of ``Model.predict``, which builds a new traced
    function per model and input shape and warns about retracing.
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, tower.output_shape[-1]), dtype=np.float32)
    parts = [np.asarray(tower(x[s : s + batch], training=False), dtype=np.float32) for s in range(0, len(x), batch)]
    return np.concatenate(parts)


def save_model(model: keras.Model, path: Path) -> Path:
    """Save in the ``.keras`` format (weights and config only), atomically."""
    from tasks.storage import atomic_path

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
