"""Warm start: initialize a new model from the last published one instead of from scratch.

The towers take features, not ids, so their Dense layers carry over whenever the
feature columns (and the preset's layer sizes) are unchanged. A history table
(:class:`tasks.modeling.model.HistoryMean`) has one row per catalog movie; it grows with
the catalog: rows are copied by movie id, new movies start at zero (as in a cold
start). Anything else that differs means a cold start, with the reason logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.store.layout import Layout

log = logging.getLogger(__name__)


def warm_epochs(max_epochs: int, override: int | None = None) -> int:
    """Epochs of a warm-started night: ``override``, else a quarter of the preset's, at least 1."""
    return max(1, override if override is not None else max_epochs // 4)


def source(
    data_dir: Path, feature_dir: Path, config: dict[str, Any]
) -> tuple[dict[str, str] | None, str]:
    """The published model to start from (sha256-checked against latest.json) and a note; ``None``
    means a cold start.

    Cold when nothing is published, or when the published model had other feature columns
    (those of ``feature_dir``) or other layer sizes (``config``, the preset's settings).
    """
    from tasks.errors import DataError
    from tasks.preparation.feature_tables import read_features
    from tasks.store import schemas
    from tasks.store.latest import read_latest
    from tasks.store.layout import verified

    path = Layout(Path(data_dir)).latest
    if not path.exists():
        return None, "cold: nothing published yet"
    try:
        latest = read_latest(Path(data_dir))
    except DataError:
        return (
            None,
            f"cold: the published run has another schema version than {schemas.SCHEMA_VERSION}",
        )
    model = verified(Path(data_dir), latest.model["keras"])
    warm = {"model": str(model), "version": latest.model_version}
    for kind in ("user", "movie"):
        warm[f"{kind}_features"] = str(verified(Path(data_dir), latest.model[f"{kind}_features"]))
        if (
            read_features(Path(warm[f"{kind}_features"]), kind)[2]
            != read_features(Path(feature_dir) / f"{kind}_features.parquet", kind)[2]
        ):
            return None, f"cold: the {kind} feature columns differ from the published model's"
    shape = ("hidden", "embedding_dim", "history_length")
    if any(latest.config.get(key) != config.get(key) for key in shape):
        return None, "cold: the published model has other layer sizes (preset)"
    return warm, f"from {warm['version']}"


def _history_rows(old: np.ndarray, old_ids: np.ndarray, new_ids: np.ndarray) -> np.ndarray:
    """A history table (row 0 pads, row i+1 is catalog movie i) re-indexed from ``old_ids`` to
    ``new_ids``.
    """
    out = np.zeros((len(new_ids) + 1, old.shape[1]), dtype=old.dtype)
    rows = pd.Index(old_ids).get_indexer(new_ids)
    known = rows >= 0
    out[1:][known] = old[rows[known] + 1]
    return out


def warm_start_weights(
    new_model: Any, old_model_path: Path, old_movie_ids: np.ndarray, new_movie_ids: np.ndarray
) -> str | None:
    """Copy the old model's weights into ``new_model``; ``None`` on success, else why it stays a
    cold start.

    Nothing is changed unless every layer with weights matches (by name and shape, history tables by
    width).
    """
    # Keras only where a model is trained (not on Dask shard workers)
    from tasks.modeling.model import HistoryMean, load_model

    old_model = load_model(Path(old_model_path))
    plan: list[tuple[Any, list[np.ndarray]]] = []
    for tower in ("user_tower", "movie_tower"):
        try:
            new_layers, old_layers = (
                new_model.get_layer(tower).layers,
                {lay.name: lay for lay in old_model.get_layer(tower).layers},
            )
        except ValueError as exc:
            return f"no {tower} in one of the models ({exc})"
        for layer in new_layers:
            new_w = layer.get_weights()
            if not new_w:
                continue
            old = old_layers.get(layer.name)
            if old is None or type(old) is not type(layer):
                return f"layer {tower}/{layer.name} is not in the published model"
            old_w = old.get_weights()
            if isinstance(layer, HistoryMean):
                if [w.shape[1] for w in old_w] != [w.shape[1] for w in new_w] or old_w[0].shape[
                    0
                ] != len(old_movie_ids) + 1:
                    return (
                        f"history table {tower}/{layer.name} has another width or catalog than "
                        "the published one"
                    )
                old_w = [_history_rows(w, old_movie_ids, new_movie_ids) for w in old_w]
            elif [w.shape for w in old_w] != [w.shape for w in new_w]:
                shapes = [tuple(w.shape) for w in old_w], [tuple(w.shape) for w in new_w]
                return (
                    f"feature columns or layer sizes differ: {tower}/{layer.name} weights "
                    f"{shapes[0]} published, {shapes[1]} now"
                )
            plan.append((layer, old_w))
    for layer, weights in plan:
        layer.set_weights(weights)
    return None


def initializer(
    warm: dict[str, str] | None, new_movie_ids: np.ndarray, outcome: dict[str, Any]
) -> Callable[[Any], None] | None:
    """The ``init`` hook of :func:`tasks.modeling.train.train_model` for ``warm`` (from
    :func:`source`); records the outcome.
    """
    if warm is None:
        return None
    from tasks.preparation.feature_tables import read_features

    def init(model: Any) -> None:
        old_ids = read_features(Path(warm["movie_features"]), "movie")[0]
        reason = warm_start_weights(model, Path(warm["model"]), old_ids, new_movie_ids)
        if reason is None:
            log.info("warm start from model %s", warm["version"])
            outcome["warm_start"] = f"from {warm['version']}"
        else:
            log.warning(
                "warm start from model %s impossible, training from scratch: %s",
                warm["version"],
                reason,
            )
            outcome["warm_start"] = f"cold: {reason}"

    return init
