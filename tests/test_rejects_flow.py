"""Bad input through the nightly flow: the reject threshold fails the run, the rejects table stays
for people to read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from flows.cli import main

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_harness")]
# The first flow run of a session must not be under capsys (Prefect keeps the stream it first saw),
# so the test on the shared `published` run comes first.


def test_latest_json_reports_ingest_counts(published: dict[str, Any]) -> None:
    ingest = published["latest"]["ingest"]
    assert ingest["rows_read"] == len(published["ratings"])
    assert (
        ingest["rows_read"]
        == ingest["rows_accepted"] + ingest["rows_rejected"] + ingest["duplicates_dropped"]
    )
    assert (
        ingest["rows_rejected"] == 0
        and ingest["rejected_by_reason"] == {}
        and ingest["max_reject_share"] == 0.01
    )
    rejects = published["dir"] / ingest["rejects_path"]
    assert (
        ingest["rejects_path"].startswith("rejects/run_date=2026-01-02/part-")
        and pq.read_table(rejects).num_rows == 0
    )


def test_too_many_rejects_fail_the_run_and_keep_the_rejects(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ratings, movies = tiny_data
    lines = ratings.read_text(encoding="utf-8").splitlines()
    bad_lines = list(range(10, len(lines), 40))  # 2.5% of the rows: rating 'oops'
    for i in bad_lines:
        lines[i] = lines[i].rsplit(",", 2)[0] + ",oops," + lines[i].rsplit(",", 1)[1]
    bad = tmp_path / "ratings.csv"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = tmp_path / "data"
    args = [
        "run",
        "--ratings",
        str(bad),
        "--movies",
        str(movies),
        "--data-dir",
        str(data),
        "--run-date",
        "2026-02-01",
    ]
    assert main([*args, "--max-reject-share", "0.02"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    share = len(bad_lines) / (len(lines) - 1)
    assert err.startswith(
        f"towerflow run failed: stage ingest failed: {bad}: {len(bad_lines):,} of "
        f"{len(lines) - 1:,} rows rejected"
    )
    assert f"({share:.2%}), more than max_reject_share 2.00% (not_a_number {len(bad_lines)})" in err
    assert f"first: {bad}: line {bad_lines[0] + 1}, column 'rating': 'oops' is not a number" in err
    parts = list((data / "rejects" / "run_date=2026-02-01").glob("part-*.parquet"))
    assert len(parts) == 1 and str(parts[0]) in err
    rejects = pq.read_table(parts[0]).to_pylist()
    assert [r["line"] for r in rejects] == [i + 1 for i in bad_lines] and {
        r["rating"] for r in rejects
    } == {"oops"}
    assert not (data / "outputs" / "latest.json").exists()
    # the counts reach the Prefect UI
    shown = {row["count"]: row["value"] for row in _latest_ingest_artifact()}
    assert shown["rows rejected"] == len(bad_lines) and shown["rows read"] == len(lines) - 1


def _latest_ingest_artifact() -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["towerflow-ingest"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, "no towerflow-ingest artifact"
    data = found[0].data
    assert isinstance(data, str), (
        f"a table artifact's data is its JSON text, got {type(data).__name__}"
    )
    rows: list[dict[str, Any]] = json.loads(data)
    return rows
