"""Sparse (user x movie) matrices of one set of ratings, laid out by one sort of their pairs.

Why: the features, the factors' SVD and the leave-one-out sums each need a CSR matrix of the same
(user, movie) pairs with other values (ones, ratings). ``scipy.sparse.csr_matrix((values, (u, m)))``
converts and sorts the pairs anew for every matrix; at 25M ratings that was 1.4 s a matrix, five
a phase. Here the pairs are converted once (by scipy, the values being each pair's position), and
every matrix reuses that layout; each is the matrix scipy would build, entry for entry.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def rating_matrices(
    u: np.ndarray, m: np.ndarray, shape: tuple[int, int], *values: np.ndarray
) -> list[sp.csr_matrix]:
    """``scipy.sparse.csr_matrix((v, (u, m)), shape)`` for each ``v`` of ``values`` (duplicate
    pairs summed), sorting the pairs once."""
    n = len(u)
    position = sp.csr_matrix((np.arange(1, n + 1, dtype=np.float64), (u, m)), shape=shape)
    if position.nnz != n:  # duplicate pairs (their positions were summed)
        return [sp.csr_matrix((v, (u, m)), shape=shape) for v in values]
    order = position.data.astype(np.int64) - 1
    return [
        sp.csr_matrix(
            (np.asarray(v)[order], position.indices, position.indptr), shape=shape, copy=False
        )
        for v in values
    ]
