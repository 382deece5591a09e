"""The quality gate: publish unless the new model is worse with confidence.

Why: a gate that compares two means with ``<`` lets a dozen users decide a night (NDCG@k per user is
a heavy-tailed 0..1 variable; with a few dozen users its standard error is about the gap between two
good models). Here every figure carries a 95% interval from a bootstrap over users, and the
comparison with most-popular is paired: users are resampled, both methods' means are taken on the
same draw, and the interval is that of their difference. The gate then says:

- ``refused``: most-popular is better with confidence (the whole interval of model - most-popular is
  below 0), or the model is below the published one by more than the margin with confidence;
- ``passed``: the model is better than most-popular with confidence and not below the published
  model by more than the margin;
- ``undecided``: anything in between, e.g. too few users to tell; the night publishes and says so.

The published model's figure comes from its own night (another holdout), so that comparison is
unpaired: the two intervals' standard errors add.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tasks.errors import ConfigError
from tasks.stage_results import ComparisonDoc, GateResult, IntervalDoc
from tasks.store.latest import Latest

CONFIDENCE = 0.95
RESAMPLES = 2000
MIN_USERS = 30  # below this a bootstrap interval is itself unreliable: undecided
NORMAL_ABOVE = 10_000  # users above which the interval is the normal one (see bootstrap)
_Z = 1.959964  # normal quantile of CONFIDENCE, for the unpaired comparison
_CHUNK = 200  # resamples drawn at a time (bounds memory at 200 x users)

Outcome = Literal["better", "worse", "undecided"]
VerdictName = Literal["passed", "undecided", "refused"]


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap interval."""

    mean: float
    low: float
    high: float

    def text(self, signed: bool = False) -> str:
        f = "+.4f" if signed else ".4f"
        return f"{self.mean:{f}} ({CONFIDENCE:.0%} interval {self.low:{f}}..{self.high:{f}})"


def bootstrap(values: np.ndarray, seed: int = 0, resamples: int = RESAMPLES) -> Interval:
    """Percentile interval of the mean of ``values`` (one per user), from ``resamples`` draws of
    users with replacement.

    Above :data:`NORMAL_ABOVE` users the mean is normal to within the bootstrap's own noise, and
    drawing 2,000 x users indices costs seconds per interval: the interval is then mean +- z x sd /
    sqrt(users).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(
            f"bootstrap needs a non-empty 1-d array of per-user values, got shape {x.shape}"
        )
    if len(x) > NORMAL_ABOVE:
        half = _Z * float(x.std(ddof=1)) / np.sqrt(len(x))
        return Interval(float(x.mean()), float(x.mean()) - half, float(x.mean()) + half)
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            x[rng.integers(0, len(x), (min(_CHUNK, resamples - s), len(x)))].mean(axis=1)
            for s in range(0, resamples, _CHUNK)
        ]
    )
    tail = (1.0 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(x.mean()), float(low), float(high))


def paired_difference(model: np.ndarray, baseline: np.ndarray, seed: int = 0) -> Interval:
    """Interval of mean(model - baseline) over the same users, resampled together."""
    a, b = np.asarray(model, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"paired values need one entry per user on both sides, got {a.shape} and {b.shape}"
        )
    return bootstrap(a - b, seed)


@dataclass(frozen=True)
class Comparison:
    """One comparison the gate makes: the model's figure, the other's, their difference and its
    outcome.
    """

    against: str
    model: float
    other: float
    difference: Interval
    outcome: Outcome


@dataclass(frozen=True)
class Verdict:
    """What the gate decided, why (one line), and on how many users."""

    verdict: VerdictName
    reason: str
    users: int
    comparisons: list[Comparison] = field(default_factory=list)
    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES

    def document(self, enforced: bool) -> GateResult:
        """The verdict as the quality-gate stage returns it and latest.json keeps it."""
        comparisons = [
            ComparisonDoc(
                against=c.against,
                model=c.model,
                other=c.other,
                difference=IntervalDoc(
                    mean=c.difference.mean, low=c.difference.low, high=c.difference.high
                ),
                outcome=c.outcome,
            )
            for c in self.comparisons
        ]
        return GateResult(
            verdict=self.verdict,
            reason=self.reason,
            users=self.users,
            comparisons=comparisons,
            confidence=self.confidence,
            resamples=self.resamples,
            enforced=enforced,
        )


def _outcome(diff: Interval, floor: float) -> Outcome:
    """``worse`` if the whole interval is below ``floor``, ``better`` if it is all above, else
    ``undecided``.
    """
    if diff.high < floor:
        return "worse"
    return "better" if diff.low > floor else "undecided"


def _se(interval: Interval) -> float:
    return (interval.high - interval.low) / (2 * _Z)


def versus_published(
    model: Interval, previous: Latest | None, margin: float, k: int | None = None
) -> Comparison | None:
    """Unpaired comparison with the published run's two-tower NDCG, ``worse`` below ``-margin``
    (None: no figure with an interval).
    """
    prev = ((previous.metrics if previous is not None else None) or {}).get("two-tower") or {}
    if not all(isinstance(prev.get(key), int | float) for key in ("ndcg", "ndcg_low", "ndcg_high")):
        return None
    # NDCG at another k: not the same measure
    if k is not None and previous is not None and previous.k != k:
        return None
    theirs = Interval(float(prev["ndcg"]), float(prev["ndcg_low"]), float(prev["ndcg_high"]))
    diff = model.mean - theirs.mean
    spread = _Z * float(np.hypot(_se(model), _se(theirs)))
    version = previous.model_version if previous is not None else "?"
    interval = Interval(diff, diff - spread, diff + spread)
    return Comparison(
        f"published {version}", model.mean, theirs.mean, interval, _outcome(interval, -margin)
    )


def decide(
    model: Interval,
    baseline: float,
    vs_baseline: Interval,
    users: int,
    previous: Latest | None,
    margin: float,
    k: int = 10,
) -> Verdict:
    """The verdict for a model with NDCG@k ``model`` against most-popular's ``baseline`` and the
    published run.

    ``vs_baseline`` is the paired interval of model - most-popular; ``previous`` is the published
    run's latest.json (or None); ``margin`` is how far below the published model's NDCG@k the new
    one may be.
    """
    if margin < 0:
        raise ConfigError(f"gate margin must be >= 0, got {margin}")
    if users < MIN_USERS:
        reason = (
            f"undecided: {users} users on the holdout, fewer than {MIN_USERS} to decide on; "
            "published without a verdict"
        )
        return Verdict("undecided", reason, users)
    pop = Comparison("most-popular", model.mean, baseline, vs_baseline, _outcome(vs_baseline, 0.0))
    comparisons = [pop]
    published = versus_published(model, previous, margin, k)
    if published is not None:
        comparisons.append(published)
    facts = (
        f"NDCG@{k} {model.mean:.4f} vs most-popular {baseline:.4f}, difference "
        f"{vs_baseline.text(signed=True)}"
    )
    if published is not None:
        facts += (
            f"; vs {published.against} {published.other:.4f}, difference "
            f"{published.difference.text(signed=True)}"
        )
    facts += f"; {users:,} users"
    if pop.outcome == "worse":
        return Verdict(
            "refused",
            f"refused: most-popular is better with confidence ({facts}); not published",
            users,
            comparisons,
        )
    if published is not None and published.outcome == "worse":
        why = f"more than {margin:g} below the published model with confidence"
        return Verdict("refused", f"refused: {why} ({facts}); not published", users, comparisons)
    if all(c.outcome == "better" for c in comparisons):
        return Verdict("passed", f"passed: {facts}", users, comparisons)
    unsure = " and ".join(c.against for c in comparisons if c.outcome != "better")
    return Verdict(
        "undecided",
        f"undecided: {users:,} users cannot tell the model from {unsure} ({facts}); published",
        users,
        comparisons,
    )
