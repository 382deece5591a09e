"""Incremental nights: the ingest ledger (by content hash), drop folders, cross-file duplicates,
warm start.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.ingestion.incremental import combine, expand, ledger_path, run_incremental_ingest

DAY = dt.date(2026, 3, 1)


def _split(tiny_data: tuple[Path, Path], out: Path, share: float = 0.8) -> tuple[Path, Path]:
    """The tiny ratings split by time: (older share, the rest) as two CSV files."""
    ratings = pd.read_csv(tiny_data[0]).sort_values("timestamp", kind="stable")
    cut = int(len(ratings) * share)
    out.mkdir(parents=True, exist_ok=True)
    ratings.iloc[:cut].to_csv(out / "a.csv", index=False)
    ratings.iloc[cut:].to_csv(out / "b.csv", index=False)
    return out / "a.csv", out / "b.csv"


# first in the file: the Prefect test server should start before this file builds Keras models
# in-process
@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_two_nights_ingest_only_new_file_and_warm_start(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.dataset as pds

    from flows.cli import main

    a, b = _split(tiny_data, tmp_path / "in")
    drop, data = tmp_path / "drop", tmp_path / "data"
    drop.mkdir()
    shutil.copyfile(a, drop / "2026-03-01.csv")
    common = [
        "--movies",
        str(tiny_data[1]),
        "--data-dir",
        str(data),
        "--k",
        "5",
        "--max-epochs",
        "4",
        "--no-gate",
        "--no-loss-choice",
    ]
    assert main(["run", "--ratings", str(drop), "--run-date", "2026-03-01", *common]) == 0
    first = json.loads((data / "outputs" / "latest.json").read_text())
    assert (first["ingest"]["files_new"], first["ingest"]["files_skipped"]) == (1, 0)
    shutil.copyfile(b, drop / "2026-03-02.csv")
    assert (
        main(["run", "--ratings", str(drop), "--run-date", "2026-03-02", "--warm-start", *common])
        == 0
    )
    out = capsys.readouterr().out
    latest = json.loads((data / "outputs" / "latest.json").read_text())
    assert (latest["ingest"]["files_new"], latest["ingest"]["files_skipped"]) == (1, 1)
    assert latest["ingest"]["rows_total"] == len(pd.read_csv(tiny_data[0]))
    assert latest["training"]["warm_start"] == f"from {first['model_version']}"
    assert latest["training"]["epochs_run"] == 1  # a quarter of --max-epochs 4
    assert (
        "1 new, 1 already ingested (skipped)" in out
        and f"warm      from {first['model_version']}" in out
    )
    recs = (
        pds.dataset(data / latest["tables"]["recommendations"]["path"], format="parquet")
        .to_table()
        .to_pandas()
    )
    # users new since night 1 included
    assert set(recs.user_id) == set(pd.read_csv(tiny_data[0]).userId)


def test_ledger_skips_files_by_content_hash(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = _split(tiny_data, tmp_path / "in")
    data = tmp_path / "data"
    first = run_incremental_ingest([str(a)], tiny_data[1], data, DAY)
    assert first["stats"]["files_new"] == 1 and first["stats"]["files_skipped"] == 0
    copy = shutil.copyfile(a, tmp_path / "in" / "renamed.csv")  # same content, another name
    second = run_incremental_ingest([str(a), str(copy)], tiny_data[1], data, DAY)
    assert (second["stats"]["files_new"], second["stats"]["files_skipped"]) == (0, 2)
    assert second["input_hash"] == first["input_hash"] and second["stats"]["rows_read"] == 0
    third = run_incremental_ingest([str(a), str(b)], tiny_data[1], data, DAY + dt.timedelta(days=1))
    assert (third["stats"]["files_new"], third["stats"]["files_skipped"]) == (1, 1)
    assert third["input_hash"] != first["input_hash"]
    total = len(pd.read_csv(tiny_data[0]))
    assert third["stats"]["rows_total"] == total == len(pd.read_parquet(third["ratings"]))
    ledger = json.loads(ledger_path(data).read_text())
    assert sorted(entry["name"] for entry in ledger.values()) == ["a.csv", "b.csv"]
    assert {entry["ingested_on"] for entry in ledger.values()} == {"2026-03-01", "2026-03-02"}
    # the model always sees every ingested file, even when a night is given only the new one
    only_b = run_incremental_ingest([str(b)], tiny_data[1], data, DAY)
    assert only_b["stats"]["files_skipped"] == 1 and only_b["stats"]["rows_total"] == total


def test_drop_folder_takes_ratings_files_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    for name in ("b.csv", "a.parquet", "c.csv.gz", "notes.txt"):
        (folder / name).write_text("x")
    (folder / "sub").mkdir()
    assert [p.name for p in expand(str(folder))] == ["a.parquet", "b.csv", "c.csv.gz"]
    with pytest.raises(Exception, match="no ratings files"):
        expand(str(folder / "sub"))


def _ingest_two(
    tiny_data: tuple[Path, Path], tmp_path: Path, first: str, second: str
) -> dict[str, Any]:
    """Ingest two ratings files of (user, rating, timestamp) rows, all for the catalog's first
    movie, in this order.
    """
    movie = int(pd.read_csv(tiny_data[1]).movieId.iloc[0])
    for name, rows in (("1.csv", first), ("2.csv", second)):
        lines = [f"{u},{movie},{r},{t}" for u, r, t in (row.split(",") for row in rows.split())]
        (tmp_path / name).write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")
    return run_incremental_ingest(
        [str(tmp_path / "1.csv"), str(tmp_path / "2.csv")], tiny_data[1], tmp_path / "data", DAY
    )


def test_cross_file_duplicate_latest_wins(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    out = _ingest_two(tiny_data, tmp_path, "1,2.0,100 2,3.0,500", "1,5.0,200 2,1.0,400 3,4.0,300")
    got = pd.read_parquet(out["ratings"]).set_index("user_id").rating.to_dict()
    assert got == {1: 5.0, 2: 3.0, 3: 4.0}  # user 2's later rating is in the earlier file
    assert out["stats"]["duplicates_across_files"] == 2 and out["stats"]["users"] == 3


def test_combine_breaks_timestamp_ties_by_later_file(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    out = _ingest_two(tiny_data, tmp_path, "1,2.0,100", "1,4.5,100")
    assert pd.read_parquet(out["ratings"]).rating.tolist() == [4.5]
    assert combine([Path(out["ratings"])], tmp_path / "again.parquet") == (0, 1, 1)


def _tiny_config() -> Any:
    from tasks.presets import preset

    return dataclasses.replace(preset("default"), hidden=(8,), embedding_dim=4, history_length=3)


@pytest.mark.train
def test_warm_start_copies_weights_and_maps_history(tmp_path: Path) -> None:
    from tasks.modeling.model import build_model, save_model
    from tasks.modeling.warmstart import warm_start_weights

    config = _tiny_config()
    old = build_model(5, 6, config, n_movies=3)
    for layer in old.get_layer("user_tower").layers:  # a history table that is not all zero
        if layer.name == "user_tower_history":
            layer.set_weights([np.arange(16, dtype=np.float32).reshape(4, 4) + k for k in (0, 100)])
    path = save_model(old, tmp_path / "old.keras")
    new = build_model(5, 6, config, n_movies=4)
    reason = warm_start_weights(new, path, np.array([10, 20, 30]), np.array([20, 40, 10, 30]))
    assert reason is None
    for tower in ("user_tower", "movie_tower"):
        for name in ("dense_0", "out"):
            got = new.get_layer(tower).get_layer(f"{tower}_{name}").get_weights()
            want = old.get_layer(tower).get_layer(f"{tower}_{name}").get_weights()
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
    seen, liked = new.get_layer("user_tower").get_layer("user_tower_history").get_weights()
    base = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(seen[0], 0)  # padding
    np.testing.assert_array_equal(seen[1], base[2])  # movie 20 was old row 1 (+1)
    np.testing.assert_array_equal(seen[2], 0)  # movie 40 is new: zero, as in a cold start
    np.testing.assert_array_equal(seen[3], base[1])  # movie 10
    np.testing.assert_array_equal(liked[4], base[3] + 100)  # movie 30


@pytest.mark.train
def test_warm_start_other_features_stays_cold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tasks.modeling.model import build_model, save_model
    from tasks.modeling.warmstart import initializer
    from tasks.preparation.feature_tables import write_features

    config = dataclasses.replace(_tiny_config(), history_length=0)
    path = save_model(build_model(5, 6, config), tmp_path / "old.keras")
    new = build_model(7, 6, config)  # two more user feature columns
    before = [w.copy() for w in new.get_weights()]
    ids = np.array([1, 2])
    write_features(
        tmp_path / "movie_features.parquet",
        ids,
        np.zeros((2, 6), np.float32),
        [f"f{i}" for i in range(6)],
        "movie",
    )
    outcome: dict[str, Any] = {}
    init = initializer(
        {
            "model": str(path),
            "movie_features": str(tmp_path / "movie_features.parquet"),
            "version": "v1",
        },
        ids,
        outcome,
    )
    assert init is not None
    with caplog.at_level(logging.WARNING, logger="tasks.modeling.warmstart"):
        init(new)
    assert outcome["warm_start"].startswith(
        "cold: feature columns or layer sizes differ: user_tower/user_tower_dense_0"
    )
    assert "training from scratch" in caplog.text
    for got, want in zip(new.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
