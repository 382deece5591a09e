"""FAISS top-k with seen movies excluded equals a brute-force numpy top-k."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.serving.export import build_index
from tasks.serving.recommend import topk_unseen, write_similar_movies


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def _brute(users: np.ndarray, items: np.ndarray, seen: list[np.ndarray], k: int) -> list[list[int]]:
    scores = users @ items.T
    out = []
    for i, s in enumerate(scores):
        s = s.copy()
        s[seen[i]] = -np.inf
        order = np.argsort(-s, kind="stable")
        out.append([int(j) for j in order[:k] if np.isfinite(s[j])])
    return out


@pytest.mark.parametrize("path", ["scan", "faiss+scan", "faiss only"])
@pytest.mark.parametrize(("chunk_size", "first_extra"), [(1, 32), (7, 0), (1000, 2), (1000, 32)])
def test_topk_unseen_matches_brute_force(
    rng: np.random.Generator,
    chunk_size: int,
    first_extra: int,
    path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Small chunks are scanned exactly; big ones go to FAISS first (forced here); non-flat indexes
    re-ask FAISS.
    """
    import tasks.serving.recommend as rec

    if path != "scan":
        monkeypatch.setattr(rec, "FAISS_BLAS_QUERIES", 0)
    if path == "faiss only":
        monkeypatch.setattr(rec, "_index_vectors", lambda index: None)
    users, items, k = _unit(rng, 40, 8), _unit(rng, 60, 8), 5
    seen = [rng.choice(60, size=int(rng.integers(0, 30)), replace=False) for _ in range(40)]
    seen[3] = np.arange(57)  # only 3 unseen items left: fewer than k rows
    # heavy raters whose seen movies are exactly their best-scoring ones: forces re-queries
    for u in (5, 6):
        seen[u] = np.argsort(-(users[u] @ items.T))[:40]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    rows = np.concatenate(seen).astype(np.int64)
    got: dict[int, list[tuple[int, int, float]]] = {}
    for q, rank, item, score in topk_unseen(
        build_index(items), users, indptr, rows, k, chunk_size, first_extra
    ):
        for a, b, c, d in zip(q, rank, item, score, strict=True):
            got.setdefault(int(a), []).append((int(b), int(c), float(d)))
    expected = _brute(users, items, seen, k)
    for u in range(40):
        ranks = [r for r, _, _ in got[u]]
        assert ranks == list(range(1, len(expected[u]) + 1))
        assert [i for _, i, _ in got[u]] == expected[u]
        scores = [s for _, _, s in got[u]]
        assert all(a >= b for a, b in itertools.pairwise(scores))
        np.testing.assert_allclose(scores, users[u] @ items[expected[u]].T, rtol=1e-5, atol=1e-6)
    assert len(got[3]) == 3


def test_similar_movies_never_self(tmp_path: Path, rng: np.random.Generator) -> None:
    emb = _unit(rng, 30, 4)
    emb[5] = emb[4]  # an exact duplicate must not displace or duplicate self-exclusion
    ids = np.arange(100, 130, dtype=np.int64)
    n = write_similar_movies(
        tmp_path / "sim.parquet", build_index(emb), ids, emb, k=4, chunk_size=8
    )
    table = pq.read_table(tmp_path / "sim.parquet").to_pandas()
    assert n == 120 and (table.groupby("movie_id").size() == 4).all()
    assert not (table["movie_id"] == table["similar_movie_id"]).any()
    assert table.loc[table.movie_id == 104, "similar_movie_id"].iloc[0] == 105


@pytest.mark.parametrize("path", ["scan", "faiss+scan", "faiss only"])
@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_equal_scores_are_ordered_by_row_on_every_path(
    rng: np.random.Generator, chunk_size: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Movies with identical vectors (identical content rows) tie exactly; the lower row (movie_id)
    comes first, whatever the path, the chunk or where the tie falls against the cut at k."""
    import tasks.serving.recommend as rec

    if path != "scan":
        monkeypatch.setattr(rec, "FAISS_BLAS_QUERIES", 0)
    if path == "faiss only":
        monkeypatch.setattr(rec, "_index_vectors", lambda index: None)
    items = _unit(rng, 60, 8)
    items[[7, 19, 33, 41, 58]] = items[50]  # five copies of one vector, row 50 among them
    items[[2, 12]] = items[30]
    users, k = _unit(rng, 30, 8), 4
    # the tied group leads, and straddles the cut at k
    users[:10] = items[50] + 0.01 * _unit(rng, 10, 8)
    seen = [
        rng.choice([0, 1, 3, 5], size=int(rng.integers(0, 3)), replace=False) for _ in range(30)
    ]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    rows = np.concatenate(seen).astype(np.int64)
    got: dict[int, list[int]] = {}
    for q, _, item, _ in topk_unseen(build_index(items), users, indptr, rows, k, chunk_size, 2):
        for a, c in zip(q, item, strict=True):
            got.setdefault(int(a), []).append(int(c))
    # einsum's own loop, not BLAS: a blocked GEMM may round two identical columns differently
    # (seen with AVX-512 kernels), and the reference must tie exactly where the vectors do
    scores = np.einsum("ij,kj->ik", users, items)
    for u in range(30):
        s = scores[u].copy()
        s[seen[u]] = -np.inf
        expected = np.lexsort((np.arange(60), -s))[:k].tolist()  # by score, then by row
        assert got[u] == expected, (u, got[u], expected)
    assert got[0] == [7, 19, 33, 41]  # four of the five copies at the cut: the lowest rows
