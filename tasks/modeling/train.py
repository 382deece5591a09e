"""Training loop for the two-tower model.

An epoch is one call of a compiled loop over batches sliced from three constant tensors of (user
index, movie index, scaled rating) triples (:meth:`_Steps._train_epoch`); feature rows are gathered
by index inside the train step, so no per-rating copy of the feature rows is ever materialized. The
loss is the lab's MSE of the dot product against the MinMax(-1, 1) rating, optionally plus an
in-batch softmax over the same dot product (temperature, accidental hits left out, log-popularity
correction).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tasks.errors import DataError
from tasks.modeling.adam import FusedAdam
from tasks.modeling.dropout import POOL_BATCHES, MaskPool
from tasks.modeling.model import build_model, run_tower, towers
from tasks.preparation.loo import example_rows
from tasks.preparation.training import TowerInput, TrainData
from tasks.presets import ModelConfig


@dataclass
class TrainResult:
    model: keras.Model
    epochs_run: int
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    examples_per_second: float = 0.0


def log_popularity(movies: np.ndarray, n_movies: int) -> np.ndarray:
    """log of each movie's share of training ratings (smoothed by 1), for the logQ correction."""
    counts = np.bincount(movies, minlength=n_movies).astype(np.float64) + 1.0
    return np.asarray(np.log(counts / counts.sum()), dtype=np.float32)


def in_batch_softmax(
    ue: tf.Tensor, me: tf.Tensor, log_q: tf.Tensor, movies: tf.Tensor, temperature: float
) -> tf.Tensor:
    """Mean in-batch softmax cross-entropy: each example's movie against the batch's other movies.

    The logit of example ``i`` for movie ``j`` is ``ue_i . me_j / temperature - log_q_j`` (logQ
    correction); other examples of the example's own movie (accidental hits) are left out of its
    denominator. The columns are the batch's distinct movies, each weighted by how often it occurs
    (its log count added to its logit), which is the sum over every example's column when a movie's
    rows are alike; a movie's column is the vector of its first example in the batch, and ``log_q``
    must be the same for every example of a movie.

    Why written by hand (``tf.custom_gradient``): on 2 cores the batch x batch passes, not the
    matmuls, were half of a training step. Autodiff of the textbook expression made about a dozen;
    here there are three (the logits with the bias and their exponentials fused in, a row sum,
    and the two products of the gradient reading them back) over a matrix of distinct movies, with
    no hit mask (a hit is one column per row, subtracted from its row sum) and no per-row max: the
    logits are shifted by one bound on them all (Cauchy-Schwarz), unless that would underflow a
    row, and their exponentials come out of the product's own kernel as a sigmoid
    (``_SIGMOID_MARGIN``).
    """
    return _softmax_loss(ue / temperature, me, log_q, movies)


# exp(-80) is far above float32's smallest normal number (1.2e-38): a shift within this of every
# example's own logit cannot turn its row's sum to zero
_SAFE_SHIFT = 80.0
# The shifted path takes the exponentials as sigmoid(z) of logits z at least this far below zero,
# where sigmoid(z) = exp(z) / (1 + exp(z)) is exp(z) to within exp(-16) = 1.1e-7 of itself,
# float32's rounding. oneDNN fuses a sigmoid into the product's kernel (with the bias), not an
# exp, which saves one pass over the batch x columns matrix.
_SIGMOID_MARGIN = 16.0


@tf.custom_gradient  # type: ignore[untyped-decorator]  # tensorflow ships no types
def _softmax_loss(us: tf.Tensor, me: tf.Tensor, log_q: tf.Tensor, movies: tf.Tensor) -> Any:
    n = tf.shape(us)[0]
    columns, pos = tf.unique(movies)  # example i's own movie is column pos[i]
    d = tf.shape(columns)[0]
    first = tf.math.unsorted_segment_min(tf.range(n), pos, d)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(log_q), pos, d)
    mc = tf.gather(me, first)
    bias = tf.math.log(counts) - tf.gather(log_q, first)
    own = tf.reduce_sum(us * me, axis=1) - log_q  # each example's logit for its own movie
    norms = tf.reduce_max(tf.reduce_sum(us * us, 1)) * tf.reduce_max(tf.reduce_sum(mc * mc, 1))
    # no logit is within _SIGMOID_MARGIN of it
    bound = tf.sqrt(norms) + tf.reduce_max(bias) + _SIGMOID_MARGIN

    def shifted() -> tuple[tf.Tensor, tf.Tensor]:
        e = tf.sigmoid(tf.nn.bias_add(tf.matmul(us, mc, transpose_b=True), bias - bound))
        return e, tf.fill([n], bound)

    def row_max() -> tuple[tf.Tensor, tf.Tensor]:  # a bound too loose for some row's own logit
        logits = tf.nn.bias_add(tf.matmul(us, mc, transpose_b=True), bias)
        top = tf.maximum(tf.reduce_max(logits, axis=1), own)
        return tf.exp(logits - top[:, tf.newaxis]), top

    e, top = tf.cond(tf.reduce_max(bound - own) < _SAFE_SHIFT, shifted, row_max)
    hit = tf.gather_nd(e, tf.stack([tf.range(n), pos], axis=1))  # the own movie's column
    e_own = tf.exp(own - top)
    total = tf.maximum(tf.reduce_sum(e, axis=1) - hit, 0.0) + e_own
    loss = tf.reduce_mean(tf.math.log(total) + top - own)

    def grad(upstream: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, None, None]:
        # d loss / d logit = (softmax - identity) / batch; the rows' 1 / total scale the batch x 32
        # operands, and the hit columns and the positives act on them too, never on the matrix
        scale = upstream / tf.cast(n, us.dtype)
        w = scale / total
        diag = (e_own * w - scale)[:, tf.newaxis]
        hits = (hit * w)[:, tf.newaxis]
        d_us = tf.matmul(e, mc) * w[:, tf.newaxis] - hits * tf.gather(mc, pos) + diag * me
        d_mc = tf.matmul(e, us * w[:, tf.newaxis], transpose_a=True)
        d_mc -= tf.math.unsorted_segment_sum(hits * us, pos, d)
        d_me = tf.tensor_scatter_nd_add(diag * us, first[:, tf.newaxis], d_mc)
        return d_us, d_me, None, None

    return loss, grad


class _Steps:
    """Compiled train and evaluation steps for one model and one data set."""

    def __init__(self, model: keras.Model, data: TrainData, config: ModelConfig, seed: int) -> None:
        self.user_tower, self.movie_tower = towers(model)
        # dropout masks drawn once per epoch (tasks.modeling.dropout); attached while training
        self.masks = MaskPool(model, POOL_BATCHES * config.batch_size, seed)
        self.masks.attach()
        self.U = tf.constant(data.user_x)
        self.M = tf.constant(data.movie_x)
        self.H = (
            None if data.user_hist is None else tf.constant(data.user_hist.ids.astype(np.int32))
        )
        self.V = (
            None
            if data.user_hist is None
            else tf.constant(data.user_hist.values.astype(np.float32))
        )
        self.log_q = tf.constant(log_popularity(data.movies, len(data.movie_x)))
        self.loo, self.loo_t = data.loo, None if data.loo is None else data.loo.tensors()
        self.config = config
        self.variables = self.user_tower.trainable_variables + self.movie_tower.trainable_variables
        self.optimizer = FusedAdam(self.variables, config.learning_rate)
        # global gradient norm per step, summarized per epoch by grad_stats (kept in variables so
        # the step's outputs stay (loss, mse))
        self.grad_sum, self.grad_max, self.grad_steps = (
            tf.Variable(0.0, trainable=False) for _ in range(3)
        )
        # One trace each, for any batch length: a fixed-length trace would be redone for the short
        # last batch.
        batch = [
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.float32),
        ]
        self.train_epoch = tf.function(self._train_epoch, input_signature=batch, autograph=False)
        self.eval_step = tf.function(self._losses, input_signature=batch, autograph=False)

    def _rows(self, u: tf.Tensor, m: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor] | None:
        """The leave-one-out (user, movie) feature rows of examples; None without leave-one-out."""
        if self.loo is None or self.loo_t is None:
            return None
        return example_rows(self.loo, self.loo_t, tf.gather(self.M, m), u, m, y)

    def _embed(
        self,
        u: tf.Tensor,
        m: tf.Tensor,
        y: tf.Tensor,
        training: bool,
        rows: tuple[tf.Tensor, tf.Tensor] | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """User and movie embeddings of a batch; in training, from the batch's leave-one-out
        ``rows`` when given."""
        if training and rows is not None:
            # every example has its own rows: the towers run once per rating
            user_x, movie_x = rows
            return self._user(user_x, u, m, training), self.movie_tower(movie_x, training=training)
        # Each tower runs once per distinct user (movie) of the batch, not once per rating: a batch
        # of 1024 ratings has far fewer distinct movies, and the gradient is the same sum either
        # way.
        if self.H is None:
            users, u_pos = tf.unique(u)
            ue = tf.gather(self.user_tower(tf.gather(self.U, users), training=training), u_pos)
        else:
            ue = self._user(tf.gather(self.U, u), u, m, training)
        movies, m_pos = tf.unique(m)
        return ue, tf.gather(self.movie_tower(tf.gather(self.M, movies), training=training), m_pos)

    def _user(self, x: tf.Tensor, u: tf.Tensor, m: tf.Tensor, training: bool) -> tf.Tensor:
        """The user tower on rows ``x`` of examples (user ``u``, movie ``m``), with the history
        input if it has one."""
        if self.H is None or self.V is None:
            return self.user_tower(x, training=training)
        # the history input depends on the target (left out of the history it is predicted from)
        h = tf.gather(self.H, u)
        h = tf.where(tf.equal(h, m[:, tf.newaxis] + 1), tf.zeros_like(h), h)
        return self.user_tower([x, h, tf.gather(self.V, u)], training=training)

    def _losses(
        self,
        u: tf.Tensor,
        m: tf.Tensor,
        y: tf.Tensor,
        training: bool = False,
        rows: tuple[tf.Tensor, tf.Tensor] | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        c = self.config
        ue, me = self._embed(u, m, y, training, rows)
        pred = tf.reduce_sum(ue * me, axis=1)
        mse = tf.reduce_mean(tf.square(pred - y))
        softmax = tf.constant(0.0)
        if c.softmax_weight > 0:
            q = tf.gather(self.log_q, m) if c.logq_correction else tf.zeros_like(y)
            softmax = in_batch_softmax(ue, me, q, m, c.temperature)
        loss = c.mse_weight * mse + c.softmax_weight * softmax
        return loss, mse, softmax

    def _train_epoch(
        self, u: tf.Tensor, m: tf.Tensor, y: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Train steps over batches of the examples in the given order (callers permute): the
        sums of the batches' losses and MSEs, and the number of batches.

        One call per epoch, the steps a loop inside the graph: a call from Python costs about
        0.2 ms here, 3% of a step at batch 1,024. The loops are ``tf.while_loop``s written out,
        and the function is traced without AutoGraph: converting it and every function it calls
        took the first epoch of a 2.5M night from 3.1 to 6-7 s (the same graph either way: the
        same weights, bit for bit). Leave-one-out rows are computed for
        ``ROW_CHUNK`` batches at a time: their forty-odd small operations cost their scheduling
        more than their work, once per step (0.3 ms of a 7 ms step).
        """
        b = self.config.batch_size
        batches = (tf.shape(u)[0] + b - 1) // b
        chunk = ROW_CHUNK * b

        def chunk_step(c: tf.Tensor, loss_sum: tf.Tensor, mse_sum: tf.Tensor) -> Any:
            cu, cm, cy = (t[c * chunk : (c + 1) * chunk] for t in (u, m, y))
            rows = self._rows(cu, cm, cy)

            def step(i: tf.Tensor, loss_sum: tf.Tensor, mse_sum: tf.Tensor) -> Any:
                s = i * b
                loss, mse = self._train_step(
                    cu[s : s + b],
                    cm[s : s + b],
                    cy[s : s + b],
                    None if rows is None else (rows[0][s : s + b], rows[1][s : s + b]),
                )
                return i + 1, loss_sum + loss, mse_sum + mse

            steps = (tf.shape(cu)[0] + b - 1) // b
            _, loss_sum, mse_sum = tf.while_loop(
                lambda i, *_: i < steps, step, (tf.constant(0), loss_sum, mse_sum)
            )
            return c + 1, loss_sum, mse_sum

        chunks = (tf.shape(u)[0] + chunk - 1) // chunk
        zero = tf.constant(0.0)
        _, loss_sum, mse_sum = tf.while_loop(
            lambda c, *_: c < chunks, chunk_step, (tf.constant(0), zero, zero)
        )
        return loss_sum, mse_sum, batches

    def _train_step(
        self,
        u: tf.Tensor,
        m: tf.Tensor,
        y: tf.Tensor,
        rows: tuple[tf.Tensor, tf.Tensor] | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            loss, mse, _ = self._losses(u, m, y, training=True, rows=rows)
        grads = tape.gradient(loss, self.variables)
        norm = tf.linalg.global_norm(grads)
        self.grad_sum.assign_add(norm)
        self.grad_max.assign(tf.maximum(self.grad_max, norm))
        self.grad_steps.assign_add(1.0)
        self.optimizer.apply(grads)
        return loss, mse

    def grad_stats(self) -> dict[str, float]:
        """Mean and max global gradient norm over the steps since the last call (then reset)."""
        steps = max(float(self.grad_steps.numpy()), 1.0)
        out = {
            "grad_norm_mean": float(self.grad_sum.numpy()) / steps,
            "grad_norm_max": float(self.grad_max.numpy()),
        }
        for v in (self.grad_sum, self.grad_max, self.grad_steps):
            v.assign(0.0)
        return out


# batches whose leave-one-out rows the epoch's loop computes at once (4 MiB of rows at batch 1,024)
ROW_CHUNK = 8

# validation loss per epoch is estimated on at most this many held-out ratings ...
MAX_VALIDATION = 200_000
# ... or this many when the epochs are fixed and the loss only feeds the loss plot
PLOT_VALIDATION = 20_000


def _tensors(u: np.ndarray, m: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(user row, movie row, target) of examples as the steps' constants.

    Plain constants batched by slicing, not a ``tf.data`` pipeline: the arrays are already in
    memory, and on 2 cores ``tf.data``'s prefetch threads stalled one epoch in two by about a
    second.
    """
    return (
        tf.constant(u.astype(np.int32)),
        tf.constant(m.astype(np.int32)),
        tf.constant(y.astype(np.float32)),
    )


def _batches(
    u: np.ndarray, m: np.ndarray, y: np.ndarray, batch: int
) -> list[tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
    """Batches of (user row, movie row, target) in the given order: slices of :func:`_tensors`."""
    ut, mt, yt = _tensors(u, m, y)
    return [
        (ut[s : s + batch], mt[s : s + batch], yt[s : s + batch]) for s in range(0, len(u), batch)
    ]


def examples_per_epoch(n_examples: int, epochs: int, budget: int | None) -> int:
    """Examples each epoch sees: all of them, unless ``epochs`` passes would exceed ``budget``.

    Over budget, every epoch trains on a fresh random subset of
    ``ceil(budget / epochs)`` examples, so the cost of training is bounded by
    the budget whatever the size of the data (a big data set needs fewer
    passes anyway).
    """
    if budget is None or n_examples * epochs <= budget:
        return n_examples
    return max(1, min(n_examples, math.ceil(budget / max(epochs, 1))))


def train_model(
    data: TrainData,
    config: ModelConfig,
    seed: int,
    epochs: int | None = None,
    validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    init: Callable[[keras.Model], None] | None = None,
) -> TrainResult:
    """Train a fresh model; with ``validation`` (user rows, movie rows, scaled target), stop early.

    Early stopping monitors the validation loss with ``config.patience`` and
    restores the best epoch's weights; with ``patience=None`` every epoch runs
    and the final weights are kept (as the course does). Each epoch visits its
    examples in a fresh permutation (a subset when over ``config.max_examples``,
    see :func:`examples_per_epoch`). ``init`` may set the new model's weights first (warm start).
    """
    if len(data.users) == 0:
        raise DataError("no training ratings")
    keras.utils.set_random_seed(seed)
    if (data.user_hist is None) != (config.history_length == 0):
        given = "missing" if data.user_hist is None else "given"
        raise ValueError(f"history_length={config.history_length} but user history {given}")
    if (data.loo is None) == config.leave_one_out:
        given = "missing" if data.loo is None else "given"
        raise ValueError(
            f"leave_one_out={config.leave_one_out} but the data's leave-one-out sums {given}"
        )
    model = build_model(
        data.user_x.shape[1], data.movie_x.shape[1], config, n_movies=len(data.movie_x), seed=seed
    )
    if init is not None:
        init(model)
    steps = _Steps(model, data, config, seed)
    n_epochs = epochs if epochs is not None else config.max_epochs
    per_epoch = examples_per_epoch(len(data.users), n_epochs, config.max_examples)
    order_rng = np.random.default_rng(seed)
    val_ds = None
    if validation is not None and len(validation[0]):
        vu, vm, vy = (np.asarray(a) for a in validation)
        limit = MAX_VALIDATION if config.patience is not None else PLOT_VALIDATION
        if len(vu) > limit:
            keep = np.sort(np.random.default_rng(seed).choice(len(vu), limit, replace=False))
            vu, vm, vy = vu[keep], vm[keep], vy[keep]
        val_ds = _batches(vu, vm, vy, max(config.batch_size, 1024))
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_weights, waited = math.inf, n_epochs, None, 0
    started = time.perf_counter()
    for epoch in range(1, n_epochs + 1):
        t0 = time.perf_counter()
        n = len(data.users)
        pick = (
            order_rng.permutation(n)
            if per_epoch == n
            else order_rng.choice(n, per_epoch, replace=False)
        )
        steps.masks.draw(epoch)
        loss_sum, mse_sum, batches = steps.train_epoch(
            *_tensors(data.users[pick], data.movies[pick], data.target[pick])
        )
        record: dict[str, Any] = {
            "epoch": epoch,
            "examples": len(pick),
            "loss": float(loss_sum) / int(batches),
            "mse": float(mse_sum) / int(batches),
        }
        record["seconds"] = time.perf_counter() - t0
        record.update(steps.grad_stats())
        if val_ds is not None:
            vals = [steps.eval_step(u, m, y) for u, m, y in val_ds]
            record["val_loss"] = float(np.mean([float(v[0]) for v in vals]))
            record["val_mse"] = float(np.mean([float(v[1]) for v in vals]))
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if val_ds is not None and config.patience is not None:
            if record["val_loss"] < best_loss - 1e-6:
                best_loss, best_epoch, best_weights, waited = (
                    record["val_loss"],
                    epoch,
                    model.get_weights(),
                    0,
                )
            else:
                waited += 1
                if waited >= config.patience:
                    break
    steps.masks.detach()
    if best_weights is not None:
        model.set_weights(best_weights)
    else:
        best_epoch = len(history)
    seconds = time.perf_counter() - started
    return TrainResult(
        model, len(history), best_epoch, history, seconds, per_epoch * len(history) / seconds
    )


def predict_scores(
    model: keras.Model,
    user_x: TowerInput,
    movie_x: np.ndarray,
    users: np.ndarray,
    movies: np.ndarray,
    batch: int = 65536,
) -> np.ndarray:
    """Dot-product scores for (user row, movie row) pairs, gathered by index in batches."""
    user_tower, movie_tower = towers(model)
    ue = run_tower(user_tower, user_x, batch)
    me = run_tower(movie_tower, movie_x, batch)
    out = np.empty(len(users), dtype=np.float32)
    for s in range(0, len(users), batch):
        out[s : s + batch] = np.einsum(
            "ij,ij->i", ue[users[s : s + batch]], me[movies[s : s + batch]]
        )
    return out
