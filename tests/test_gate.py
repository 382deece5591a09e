"""The quality gate decides on evidence: intervals from a bootstrap over users, and how many users
stand behind them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from tasks.evaluation.gate import MIN_USERS, Interval, Verdict, bootstrap, decide, paired_difference
from tests.documents import a_latest


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_users(
    rng: np.random.Generator,
) -> None:
    few, many = rng.random(40), rng.random(4000)
    a, b = bootstrap(few), bootstrap(many)
    assert a.low < a.mean < a.high and b.low < b.mean < b.high
    assert (b.high - b.low) < (a.high - a.low) / 5  # about sqrt(100) = 10 times narrower
    assert bootstrap(few, seed=3) == bootstrap(few, seed=3)  # seeded
    with pytest.raises(ValueError, match="non-empty 1-d"):
        bootstrap(np.zeros((0,)))


def test_paired_difference_sees_a_small_gap_that_unpaired_intervals_hide(
    rng: np.random.Generator,
) -> None:
    base = rng.random(300)  # users differ a lot; the model is better by 0.02 for every user
    model = base + 0.02
    assert bootstrap(model).low < bootstrap(base).high  # the two intervals overlap
    diff = paired_difference(model, base)
    assert diff.low > 0 and diff.mean == pytest.approx(0.02)
    with pytest.raises(ValueError, match="one entry per user"):
        paired_difference(model, base[:10])


def _verdict(
    model: np.ndarray,
    base: np.ndarray,
    previous: dict[str, Any] | None = None,
    margin: float = 0.01,
) -> Verdict:
    # decide() measures at k=10
    published = a_latest(**{"k": 10, **previous}) if previous is not None else None
    return decide(
        bootstrap(model),
        float(base.mean()),
        paired_difference(model, base),
        len(model),
        published,
        margin,
    )


def test_clearly_better_passes_clearly_worse_refuses(rng: np.random.Generator) -> None:
    base = rng.random(500) * 0.3
    passed = _verdict(base + 0.05, base)
    assert (
        passed.verdict == "passed"
        and passed.users == 500
        and passed.comparisons[0].outcome == "better"
    )
    assert "500 users" in passed.reason and "95% interval" in passed.reason
    refused = _verdict(base - 0.05, base)
    assert refused.verdict == "refused" and refused.reason.startswith(
        "refused: most-popular is better with confidence"
    )


def test_too_few_users_or_no_clear_difference_is_undecided(rng: np.random.Generator) -> None:
    base = rng.random(MIN_USERS - 1)
    small = _verdict(base - 0.2, base)  # far worse, but on too few users to say
    assert small.verdict == "undecided" and f"{MIN_USERS - 1} users" in small.reason
    base = rng.random(200)
    tied = _verdict(base + rng.normal(0, 0.05, 200), base)
    assert tied.verdict == "undecided" and "cannot tell the model from most-popular" in tied.reason


def test_published_model_compared_with_its_own_interval(rng: np.random.Generator) -> None:
    base = rng.random(400) * 0.2
    model = base + 0.05
    own = bootstrap(model)
    width = (own.high - own.low) / 2

    def previous(ndcg: float) -> dict[str, Any]:
        return {
            "model_version": "2026-01-01-abc",
            "metrics": {
                "two-tower": {"ndcg": ndcg, "ndcg_low": ndcg - width, "ndcg_high": ndcg + width}
            },
        }

    # the same as published: within the margin
    assert _verdict(model, base, previous(own.mean)).verdict == "passed"
    worse = _verdict(model, base, previous(own.mean + 0.2))
    assert worse.verdict == "refused" and "more than 0.01 below the published model" in worse.reason
    assert "published 2026-01-01-abc" in worse.reason
    # 0.015 below, intervals too wide to say it is 0.01 below
    near = _verdict(model, base, previous(own.mean + 0.015))
    assert near.verdict == "undecided"
    # an older latest.json: not compared
    no_interval = {"model_version": "old", "metrics": {"two-tower": {"ndcg": 0.9}}}
    assert _verdict(model, base, no_interval).verdict == "passed"
    with pytest.raises(ValueError, match="margin must be >= 0"):
        _verdict(model, base, None, margin=-1)


def test_verdict_is_json_ready() -> None:
    verdict = decide(Interval(0.2, 0.18, 0.22), 0.1, Interval(0.1, 0.08, 0.12), 100, None, 0.01)
    data = dataclasses.asdict(verdict)
    assert (
        data["verdict"] == "passed"
        and data["users"] == 100
        and data["comparisons"][0]["difference"]["low"] == 0.08
    )
    # the typed stage result: the same JSON, keys in the same order
    document = verdict.document(enforced=False)
    assert json.dumps(document) == json.dumps({**data, "enforced": False})


def test_large_holdouts_use_the_normal_interval(rng: np.random.Generator) -> None:
    from tasks.evaluation.gate import NORMAL_ABOVE

    values = rng.random(NORMAL_ABOVE + 1)
    normal = bootstrap(values)
    assert normal.mean == pytest.approx(values.mean())
    assert (normal.high - normal.low) / 2 == pytest.approx(
        1.959964 * values.std(ddof=1) / np.sqrt(len(values))
    )
    # the percentile bootstrap just below agrees to within its noise
    drawn = bootstrap(values[:NORMAL_ABOVE])
    assert abs((drawn.high - drawn.low) - (normal.high - normal.low)) < 0.1 * (
        normal.high - normal.low
    )


def test_a_published_run_at_another_k_is_not_compared(rng: np.random.Generator) -> None:
    base = rng.random(200) * 0.2
    model = base + 0.05
    previous = a_latest(
        k=20, metrics={"two-tower": {"ndcg": 0.9, "ndcg_low": 0.89, "ndcg_high": 0.91}}
    )
    verdict = decide(
        bootstrap(model),
        float(base.mean()),
        paired_difference(model, base),
        200,
        previous,
        0.01,
        k=10,
    )
    assert verdict.verdict == "passed" and [c.against for c in verdict.comparisons] == [
        "most-popular"
    ]


def test_a_holdout_with_nothing_to_measure_is_undecided() -> None:
    from tasks.evaluation.quality import gate_verdict

    verdict = gate_verdict(
        {
            "skipped": (
                "no held-out rating of 4 or more among 12 held-out ratings: nothing to rank against"
            )
        },
        None,
        0.01,
        10,
    )
    assert (
        verdict.verdict == "undecided"
        and verdict.users == 0
        and "nothing to rank against" in verdict.reason
    )
