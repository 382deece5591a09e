"""What the trainer is given: the scaled feature matrices and the rating triples of one phase.

It lives with the preparation, which builds it, so that the modeling code depends on the
preparation and never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.preparation.history import History
from tasks.preparation.loo import LeaveOneOut

TowerInput = np.ndarray | tuple[np.ndarray, ...]  # features, or (features, history ids, values)


@dataclass(frozen=True)
class TrainData:
    """Scaled feature matrices and the (user row, movie row, scaled target) triples."""

    user_x: np.ndarray
    movie_x: np.ndarray
    users: np.ndarray
    movies: np.ndarray
    target: np.ndarray
    user_hist: History | None = None
    loo: LeaveOneOut | None = None  # train on leave-one-out rows (see tasks.preparation.loo)

    def user_input(self) -> TowerInput:
        return (
            self.user_x
            if self.user_hist is None
            else (self.user_x, self.user_hist.ids, self.user_hist.values)
        )
