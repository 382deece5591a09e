"""Every night keeps its row in outputs/history/, whatever its outcome; the history reads back
oldest first.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from flows.outcome import history_markdown
from tasks.store.layout import Layout
from tasks.store.nights import Night, night_from, read_nights, record

LATEST = {
    "model_version": "2026-02-01-abcdefabcdef",
    "metrics": {
        "two-tower": {
            "ndcg": 0.2,
            "ndcg_low": 0.18,
            "ndcg_high": 0.22,
            "rmse": 0.9,
            "users": 120.0,
        },
        "most-popular": {"ndcg": 0.1, "users": 120.0},
    },
    "gate": {"verdict": "passed", "reason": "passed: ..."},
    "popularity_prior": {"weight": 0.3},
    "drift": {
        "lists": {"coverage": 0.25},
        "versus_published": {"drift": 0.4, "changed_share": 0.9},
    },
}


def test_rows_round_trip_oldest_first(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert read_nights(layout).empty
    first = night_from(dt.date(2026, 2, 1), "published", 12.3, LATEST)
    assert (first.ndcg, first.users, first.prior_weight, first.drift, first.coverage) == (
        0.2,
        120,
        0.3,
        0.4,
        0.25,
    )
    record(layout, first)
    record(
        layout,
        Night(
            "2026-02-02",
            "2099-02-02T03:00:00+00:00",
            "failed",
            reason="stage ingest failed: bad row",
        ),
    )
    nights = read_nights(layout)
    assert list(nights["outcome"]) == ["published", "failed"] and nights["users"].iloc[0] == 120
    assert pd.isna(nights["ndcg"].iloc[1])
    assert list(read_nights(layout, last=1)["run_date"]) == ["2026-02-02"]
    text = history_markdown(nights, None, embed=False)
    assert text.index("2026-02-02") < text.index("2026-02-01")  # newest first
    assert "Last night not published (2026-02-02, failed): stage ingest failed: bad row" in text
    assert "nan" not in text  # the failed night's missing verdict and model are blank cells
    with pytest.raises(ValueError, match="outcome must be one of"):
        Night("2026-02-03", "x", "exploded")
