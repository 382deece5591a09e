"""What L2 normalization and the [-1, 1] rating target buy, measured.

The lab model L2-normalizes both tower outputs, so their dot product lies in
[-1, 1], and MinMax-scales the rating to exactly that range. :func:`variants`
switches each off in turn (``ModelConfig.normalize``, ``ModelConfig.target_scale``)
on the lab preset, with the default preset as a reference row, and
:func:`measure` scores one trained variant on the per-user temporal protocol of
``towerflow evaluate``: RMSE in stars (clipped to the rating range), the share of
predictions outside that range before clipping, NDCG and coverage of the FAISS
top-k, whether FAISS inner-product search agrees with the model's own ranking by
predicted stars, gradient norms, embedding norms, and how much raw norms decide
similar-movie neighbours (inner product against cosine).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tasks.evaluation.evaluate import Fitted, _fit_once
from tasks.evaluation.metrics import coverage, ranking_metrics, relevant_sets, rmse
from tasks.modeling.model import l2_normalize, run_tower, towers
from tasks.presets import ModelConfig, preset
from tasks.serving.export import build_index
from tasks.serving.recommend import seen_csr, topk_lists

RATING_RANGE = (0.5, 5.0)


def variants(max_epochs: int | None = None) -> dict[str, ModelConfig]:
    """(a)-(d): the lab preset with each switch on or off; then the default preset for reference."""
    lab = preset("lab", max_epochs=max_epochs)
    return {
        "(a) lab: L2 + minmax": lab,
        "(b) no L2, minmax": dataclasses.replace(lab, normalize=False),
        "(c) L2, stars": dataclasses.replace(lab, target_scale="stars"),
        "(d) no L2, stars": dataclasses.replace(lab, normalize=False, target_scale="stars"),
        "default preset": preset("default", max_epochs=max_epochs),
    }


def out_of_range_share(
    stars: np.ndarray,
    low: float = RATING_RANGE[0],
    high: float = RATING_RANGE[1],
    tol: float = 1e-4,
) -> float:
    """Share of predictions below ``low`` or above ``high`` (beyond float round-off ``tol``)."""
    stars = np.asarray(stars, dtype=np.float64)
    if stars.size == 0:
        raise ValueError("no predictions")
    return float(np.mean((stars < low - tol) | (stars > high + tol)))


def overlap_at_k(a: Mapping[int, Sequence[int]], b: Mapping[int, Sequence[int]], k: int) -> float:
    """Mean over the keys of ``a`` of |top-k of a ∩ top-k of b| / k (1.0: the same k items, order
    aside).
    """
    if k < 1 or not a:
        raise ValueError(
            f"overlap needs k >= 1 and at least one list, got k={k} and {len(a)} lists"
        )
    return float(
        np.mean(
            [
                len(set(list(items)[:k]) & set(list(b.get(key, []))[:k])) / k
                for key, items in a.items()
            ]
        )
    )


def norm_summary(emb: np.ndarray) -> dict[str, float]:
    """Mean, min and max L2 norm of the rows of ``emb``, and their ``concentration``.

    Concentration is the length of the mean unit row: 0 when the directions spread
    evenly, 1 when every row points the same way (a collapsed tower); ``distinct``
    is the number of different rows (to 1e-4) as a share of all rows.
    """
    x = np.asarray(emb, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.maximum(norms, 1e-12)[:, None]
    stats = {
        "mean": norms.mean(),
        "min": norms.min(),
        "max": norms.max(),
        "concentration": np.linalg.norm(unit.mean(axis=0)),
    }
    stats["distinct"] = len(np.unique(np.round(x, 4), axis=0)) / max(len(x), 1)
    return {key: float(v) for key, v in stats.items()}


def stars_per_unit(fitted: Fitted) -> float:
    """Stars per unit of the training target: half the rating range for minmax, 1 for stars."""
    scalers = fitted.prepared.scalers
    return 1.0 if scalers.target_scale == "stars" else float(scalers.target.data_range_[0]) / 2.0


def ranking_agreement(
    fitted: Fitted,
    train: pd.DataFrame,
    faiss_lists: Mapping[int, Sequence[int]],
    k: int,
    chunk: int = 128,
) -> dict[str, float]:
    """Does the FAISS top-k agree with the model's own ranking by predicted stars? Seen movies
    excluded.

    Predicted stars come from :func:`~tasks.modeling.train.predict_scores` (the model's
    output) for every user and catalog movie. Returns ``overlap`` (overlap@k of the
    two lists, ties broken by catalog order, so exact ties count as misses),
    ``valid`` (share of FAISS items that score at least the model's k-th best,
    i.e. agreement up to ties), ``outside`` (share of all unseen pairs predicted
    outside the rating range), ``above_max`` (mean unseen movies per user predicted
    above 5 stars) and ``tied_top`` (share of users whose k best all exceed 5
    stars: clipped to 5, their top-k by displayed rating is a tie) and ``at_cut``
    (mean unseen movies per user scoring at least the k-th best: above k means ties
    at the cut, where any tie-break is as right as another).
    """
    from tasks.modeling.train import predict_scores

    p = fitted.prepared
    n_users, n_movies = len(p.feats.user_ids), len(p.movie_x)
    indptr, seen = seen_csr(train, p.feats.user_ids, p.feats.movie_ids)
    movie_rows = pd.Index(p.feats.movie_ids)
    own: dict[int, list[int]] = {}
    valid, at_cut, above, tied, outside, unseen = [], [], [], 0, 0, 0
    for start in range(0, n_users, chunk):
        rows = np.arange(start, min(start + chunk, n_users))
        pairs_u, pairs_m = np.repeat(rows, n_movies), np.tile(np.arange(n_movies), len(rows))
        stars = p.scalers.target_to_rating(
            predict_scores(fitted.model, p.user_input, p.movie_x, pairs_u, pairs_m)
        ).reshape(len(rows), -1)
        mask = np.zeros(stars.shape, dtype=bool)
        for i, r in enumerate(rows):
            mask[i, seen[indptr[r] : indptr[r + 1]]] = True
        outside += int(
            ((stars < RATING_RANGE[0] - 1e-4) | (stars > RATING_RANGE[1] + 1e-4))[~mask].sum()
        )
        unseen += int((~mask).sum())
        values = np.where(mask, -np.inf, stars)
        ranked = np.argsort(-values, axis=1, kind="stable")[:, :k]
        over = (values > RATING_RANGE[1] + 1e-4).sum(axis=1)
        above += over.tolist()
        tied += int((over >= k).sum())
        for i, r in enumerate(rows):
            user = int(p.feats.user_ids[r])
            own[user] = p.feats.movie_ids[ranked[i]].tolist()
            kth = values[i, ranked[i, -1]]
            floor = kth - 1e-5 * max(1.0, abs(kth))
            found = values[i, movie_rows.get_indexer(list(faiss_lists.get(user, [])))]
            valid.append(float(np.sum(found >= floor)) / k)
            at_cut.append(int(np.sum(values[i] >= floor)))
    return {
        "overlap": overlap_at_k(own, faiss_lists, k),
        "valid": float(np.mean(valid)),
        "at_cut": float(np.mean(at_cut)),
        "outside": outside / max(unseen, 1),
        "above_max": float(np.mean(above)),
        "tied_top": tied / n_users,
    }


def similar_lists(movie_emb: np.ndarray, k: int, cosine: bool) -> dict[int, list[int]]:
    """Each movie row's k nearest other rows by inner product (or by cosine), via a FAISS flat
    index.
    """
    x = (
        np.asarray(l2_normalize(movie_emb), dtype=np.float32)
        if cosine
        else np.ascontiguousarray(movie_emb, dtype=np.float32)
    )
    _, items = build_index(x).search(x, k + 1)
    return {i: [int(j) for j in row if j != i and j >= 0][:k] for i, row in enumerate(items)}


def distinct_share(lists: Mapping[int, Sequence[int]], n_items: int) -> float:
    """Share of the catalog that is someone's neighbour (low: a few hub items are everyone's
    neighbours).
    """
    return len({i for items in lists.values() for i in items}) / n_items


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")


def train_variant(
    train: pd.DataFrame, movies: pd.DataFrame, config: ModelConfig, seed: int
) -> tuple[Fitted, list[dict[str, float]]]:
    """What :func:`tasks.evaluation.evaluate.fit` does for a fixed epoch count, keeping the epoch
    records.

    Each record gains ``train_rmse_stars``: its training MSE as RMSE in stars.
    """
    started = time.perf_counter()
    result, scaled = _fit_once(
        train, None, movies, np.sort(train["user_id"].unique()), config, seed, None
    )
    fitted = Fitted(result.model, scaled, result.best_epoch, time.perf_counter() - started)
    unit = stars_per_unit(fitted)
    return fitted, [
        {**h, "train_rmse_stars": float(np.sqrt(h["mse"])) * unit} for h in result.history
    ]


def measure(
    name: str,
    config: ModelConfig,
    fitted: Fitted,
    history: list[dict[str, float]],
    train: pd.DataFrame,
    test: pd.DataFrame,
    k: int = 10,
) -> dict[str, Any]:
    """Every number of the ablation table for one trained variant (see the module doc)."""
    from tasks.modeling.train import predict_scores

    p = fitted.prepared
    user_tower, movie_tower = towers(fitted.model)
    user_emb, movie_emb = run_tower(user_tower, p.user_input), run_tower(movie_tower, p.movie_x)
    faiss_lists = topk_lists(
        build_index(movie_emb), user_emb, p.feats.user_ids, p.feats.movie_ids, train, k
    )
    relevant = relevant_sets(test)
    u, m, _ = p.triples(test)
    known = (u >= 0) & (m >= 0)
    actual = test["rating"].to_numpy()[known]
    stars = p.scalers.target_to_rating(
        predict_scores(fitted.model, p.user_input, p.movie_x, u[known], m[known])
    )
    agree = ranking_agreement(fitted, train, faiss_lists, k)
    similar_ip, similar_cos = similar_lists(movie_emb, k, False), similar_lists(movie_emb, k, True)
    counts = train["movie_id"].value_counts().reindex(p.feats.movie_ids, fill_value=0).to_numpy()
    means = train.groupby("movie_id")["rating"].mean().reindex(p.feats.movie_ids).to_numpy()
    movie_norms = np.linalg.norm(movie_emb, axis=1)
    rated = counts > 0
    return {
        "variant": name,
        "normalize": config.normalize,
        "target": config.target_scale,
        "epochs": len(history),
        "seconds": fitted.seconds,
        "rmse": rmse(np.clip(stars, *RATING_RANGE), actual),
        "rmse_unclipped": rmse(stars, actual),
        "pred_min": float(stars.min()),
        "pred_max": float(stars.max()),
        "outside_test": out_of_range_share(stars),
        "outside_all": agree["outside"],
        "ndcg": ranking_metrics(faiss_lists, relevant, k)["ndcg"],
        "coverage": coverage(
            {user: faiss_lists.get(user, []) for user in relevant}, len(p.feats.movie_ids)
        ),
        "faiss_overlap": agree["overlap"],
        "faiss_valid": agree["valid"],
        "at_cut": agree["at_cut"],
        "above_max": agree["above_max"],
        "tied_top": agree["tied_top"],
        "similar_ip_vs_cos": overlap_at_k(similar_ip, similar_cos, k),
        "similar_distinct_ip": distinct_share(similar_ip, len(movie_emb)),
        "similar_distinct_cos": distinct_share(similar_cos, len(movie_emb)),
        "norm_vs_count": _spearman(movie_norms[rated], np.log1p(counts[rated]))
        if not config.normalize
        else float("nan"),
        "norm_vs_mean": _spearman(movie_norms[rated], means[rated])
        if not config.normalize
        else float("nan"),
        "user_norm": norm_summary(user_emb),
        "movie_norm": norm_summary(movie_emb),
        "train_rmse_first": history[0]["train_rmse_stars"],
        "train_rmse_last": history[-1]["train_rmse_stars"],
        "grad_first": history[0]["grad_norm_mean"],
        "grad_last": history[-1]["grad_norm_mean"],
        "grad_max": max(h["grad_norm_max"] for h in history),
    }


def run(
    train: pd.DataFrame,
    test: pd.DataFrame,
    movies: pd.DataFrame,
    seed: int = 42,
    k: int = 10,
    max_epochs: int | None = None,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, float]]]]:
    """Train and measure every variant on one split and seed; (table rows, epoch histories by
    variant).
    """
    rows, histories = [], {}
    for name, config in variants(max_epochs).items():
        if only and not any(name.startswith(o) or o in name for o in only):
            continue
        if log:
            log(f"training {name} ({config.max_epochs} epochs, batch {config.batch_size}) ...")
        fitted, histories[name] = train_variant(train, movies, config, seed)
        rows.append(measure(name, config, fitted, histories[name], train, test, k))
        if log:
            r = rows[-1]
            log(
                f"  {r['seconds']:.0f} s: RMSE {r['rmse']:.3f}, NDCG@{k} {r['ndcg']:.4f}, "
                f"outside range {r['outside_test']:.1%}"
            )
    return rows, histories
