"""Adam as one TensorFlow kernel per variable, for the trainer's step.

Why not ``keras.optimizers.Adam``: Keras 3 writes Adam's update as about ten tensor operations
per variable (moments, bias correction, square root, division, assignments). On 2 CPU cores each
op of the step's graph costs its scheduling as well as its work, and the towers have 12 variables;
TensorFlow's ``ResourceApplyAdam`` makes the same update (the same formula as Keras's: bias
correction folded into the step size, ``epsilon`` added to the root of the second moment) in one
op per variable. The moments start at zero, as Keras's do; nothing of it is saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class FusedAdam:
    """Adam over ``variables`` with Keras's defaults (beta 0.9 / 0.999, epsilon 1e-7)."""

    def __init__(
        self,
        variables: Sequence[Any],
        learning_rate: float,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
    ) -> None:
        import tensorflow as tf

        self.variables = list(variables)
        self.learning_rate, self.beta_1, self.beta_2, self.epsilon = (
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
        )
        self.iterations = tf.Variable(0.0, trainable=False, name="adam_iterations")
        self.moments = [
            (
                tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="adam_m"),
                tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="adam_v"),
            )
            for v in self.variables
        ]

    def apply(self, gradients: Sequence[Any]) -> None:
        """One update of every variable from its gradient (inside the step's ``tf.function``)."""
        import tensorflow as tf

        step = self.iterations.assign_add(1.0)
        beta_1_power = tf.pow(self.beta_1, step)
        beta_2_power = tf.pow(self.beta_2, step)
        for variable, (m, v), grad in zip(self.variables, self.moments, gradients, strict=True):
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=beta_1_power,
                beta2_power=beta_2_power,
                lr=tf.constant(self.learning_rate, grad.dtype),
                beta1=tf.constant(self.beta_1, grad.dtype),
                beta2=tf.constant(self.beta_2, grad.dtype),
                epsilon=tf.constant(self.epsilon, grad.dtype),
                grad=grad,
            )
