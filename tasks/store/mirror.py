"""A night on an object store: the run works on a local copy, the store receives what is published.

Training, features and the resume cache want a local disk; readers want the store. So a night with
``--data-dir s3://bucket/prefix`` runs on a local *scratch* directory laid out like any data
directory (:class:`tasks.store.layout.Layout`), kept in step with the store:

- :func:`pull`, first thing under the lock: the store's ``latest.json`` (and its ETag) and every
  file it names become the scratch's, so the gate, drift, warm start and crash recovery see the
  published run;
- :func:`push_publish`, inside the publish stage: every model file and table part is written once
  under its version-unique key (``If-None-Match: *``), then ``latest.json`` with a conditional PUT
  (``If-None-Match: *`` when nothing was published at the start, else ``If-Match`` on the ETag the
  night read). Nothing is renamed on the store: a part is invisible until ``latest.json`` names it.
  Another night that published in between makes the PUT fail with 412: this night then removes what
  it wrote and fails in one line;
- :func:`push_extras`, after the report: history rows, the report and the rejected rows.

A killed night leaves ``latest.json`` on the store as it was, with perhaps some unreferenced parts
of its own version; the rerun resumes its stages from the scratch and writes those parts again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import faults
from tasks.errors import DataError
from tasks.store.latest import Latest
from tasks.store.layout import Layout
from tasks.store.remote import ObjectStore, PublishConflict, StoreURI, is_uri, same_file
from tasks.store.storage import atomic_path, sha256_file

LATEST = "outputs/latest.json"


def default_scratch(uri: StoreURI) -> Path:
    """``$TOWERFLOW_SCRATCH/<bucket>-<hash>`` (default ``~/.cache/towerflow``): one local copy per
    store URI.
    """
    root = Path(os.environ.get("TOWERFLOW_SCRATCH") or Path.home() / ".cache" / "towerflow")
    return root / f"{uri.bucket}-{hashlib.sha256(str(uri).encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Target:
    """Where a night publishes: a local data directory, or a store with its local scratch
    (``layout``).
    """

    layout: Layout
    uri: StoreURI | None = None

    @classmethod
    def of(cls, data_dir: str, scratch_dir: str | None = None) -> Target:
        if not is_uri(data_dir):
            return cls(Layout(Path(data_dir).resolve()))
        uri = StoreURI.parse(data_dir)
        return cls(
            Layout(Path(scratch_dir).resolve() if scratch_dir else default_scratch(uri)), uri
        )

    @property
    def name(self) -> str:
        """What users see: the URI, or the local directory."""
        return str(self.uri) if self.uri else str(self.layout.data_dir)


def _named_files(latest: Latest) -> list[str]:
    """Every key ``latest.json`` points to: model files and table parts."""
    model = [entry.path for entry in latest.model.values()]
    return [*model, *(f for info in latest.tables.values() for f in info.parts())]


def _ingested(latest: Latest) -> list[str]:
    """The ingested ratings and catalog the run served (``store/<input hash>/``): what the library's
    seen sets and fold-in read, beside the files latest.json names."""
    return [
        f"store/{latest.inputs.sha256}/{name}" for name in ("ratings.parquet", "movies.parquet")
    ]


def _referenced(body: bytes | None) -> set[str]:
    """The keys a store's latest.json names (nothing if there is none or it is not one this
    towerflow reads).
    """
    if body is None:
        return set()
    try:
        latest = Latest.parse(json.loads(body), LATEST)
    except (DataError, ValueError):
        return set()
    return {*_named_files(latest), *_ingested(latest)}


def pull(
    store: ObjectStore, layout: Layout, history: bool = True, ingested: bool = False
) -> str | None:
    """Make the scratch's published run the store's; return the ETag of its latest.json (None:
    nothing published).

    Files already in the scratch with the right sha256 (model files) or present (table parts) are
    not fetched. ``history``: the night records too; ``ingested``: the ratings the run served (for
    the library).
    """
    got = store.get(LATEST)
    if got is None:
        # the scratch mirrors the store: nothing is published there
        layout.latest.unlink(missing_ok=True)
        return None
    body, etag = got
    try:
        latest: Latest | None = Latest.parse(json.loads(body), f"{store.uri}/{LATEST}")
    except (DataError, ValueError):
        # another schema version: the night publishes over it, as on a local directory
        latest = None
    if latest is not None:
        for entry in latest.model.values():
            local = layout.data_dir / entry.path
            if not (local.is_file() and sha256_file(local) == entry.sha256):
                store.download(entry.path, local)
        for part in [
            *(f for info in latest.tables.values() for f in info.parts()),
            *(_ingested(latest) if ingested else []),
        ]:
            if not (layout.data_dir / part).is_file():
                store.download(part, layout.data_dir / part)
    if not (layout.latest.is_file() and layout.latest.read_bytes() == body):
        with atomic_path(layout.latest) as tmp:
            tmp.write_bytes(body)
    if history:
        for rel in store.keys("outputs/history"):
            if not (layout.data_dir / rel).is_file():
                store.download(rel, layout.data_dir / rel)
    return etag


def push_publish(
    store: ObjectStore, layout: Layout, latest: Latest, expect_etag: str | None
) -> str:
    """Write the run's files under their keys, then ``latest.json`` conditionally; return its new
    ETag.

    Raises :class:`PublishConflict` (having removed what this night wrote) when another night
    published first.
    """
    live = store.get(LATEST)
    protected = _referenced(live[0] if live else None)
    inputs = _ingested(latest)
    ours = [*_named_files(latest), *inputs]
    for rel in ours:
        local = layout.data_dir / rel
        try:
            store.upload(local, rel, if_none_match=True)
        except PublishConflict:
            if rel in inputs or same_file(store, rel, local):
                # an ingested input (its key is its content's hash), an interrupted attempt's, or
                # the same bytes
                continue
            if rel in protected:
                raise PublishConflict(
                    f"{store.uri}/{rel} is published by another night with other contents; "
                    "nothing of this night was published"
                ) from None
            store.upload(local, rel)  # debris of an interrupted attempt: no latest.json names it
    faults.point("publish:uploaded")
    body = latest_bytes(latest)
    try:
        etag = store.put(LATEST, body, if_match=expect_etag, if_none_match=expect_etag is None)
    except PublishConflict:
        now = store.get(LATEST)
        keep = _referenced(now[0] if now else None)
        # this night's, and its interrupted attempts'
        store.delete([rel for rel in ours if rel not in keep])
        raise PublishConflict(
            f"{store.uri}/{LATEST}: another night published since this night started; this "
            "night published nothing "
            "(its files were removed again). Run it again to publish over that night's run."
        ) from None
    faults.point("publish:store-committed")
    _drop_older_parts(store, latest)
    return etag


def latest_bytes(latest: Latest) -> bytes:
    """The exact bytes of ``latest.json`` as :meth:`Latest.write` writes them."""
    from tasks.store.storage import json_safe

    return (
        json.dumps(json_safe(latest.document()), indent=2, sort_keys=True, allow_nan=False) + "\n"
    ).encode()


def _drop_older_parts(store: ObjectStore, latest: Latest) -> None:
    """Parts of the same partitions that the new latest.json no longer names (as a local publish
    removes them).
    """
    for info in latest.tables.values():
        keep = set(info.parts())
        old = [
            rel
            for rel in store.keys(info.path)
            if rel not in keep and Path(rel).name.startswith("part-")
        ]
        if old:
            store.delete(old)


def push_extras(store: ObjectStore, layout: Layout) -> int:
    """Copy the scratch's history rows, reports and rejects to the store where it lacks them; return
    how many.

    History rows and rejects are written once under unique names, so a key the store lists is not
    sent again (one listing, not a request per file of every past night); reports, whose trend plot
    changes every night, are compared by sha256.
    """
    sent = 0
    for root, once in (
        (layout.history_dir, True),
        (layout.data_dir / "rejects", True),
        (layout.outputs / "reports", False),
    ):
        if not root.is_dir():
            continue
        listed = set(store.keys(str(root.relative_to(layout.data_dir)))) if once else set()
        for local in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = str(local.relative_to(layout.data_dir))
            if rel in listed or (not once and same_file(store, rel, local)):
                continue
            store.upload(local, rel)
            sent += 1
    return sent


def fetch_input(uri: str, dest_dir: Path) -> Path:
    """An input file on the store (``--ratings s3://...``), copied once into ``dest_dir``
    (re-fetched if it changed).
    """
    bucket_and_key = StoreURI.parse(uri)
    name = Path(bucket_and_key.prefix).name
    if not name:
        raise DataError(f"{uri}: names no file; give the URI of a ratings or movies file")
    parent = StoreURI(bucket_and_key.bucket, str(Path(bucket_and_key.prefix).parent).strip("."))
    store = ObjectStore(parent)
    head = store.head(name)
    if head is None:
        raise DataError(f"{uri}: no such object in the store")
    dest = (
        Path(dest_dir) / hashlib.sha256(f"{uri}\x1f{head['etag']}".encode()).hexdigest()[:16] / name
    )
    if not dest.is_file():
        store.download(name, dest)
    return dest


def pull_for_query(uri: str, cache_dir: str | Path | None = None) -> Path:
    """A local copy of the run published at ``uri`` (``cache_dir``, default beside the nights'
    scratch).
    """
    store = ObjectStore(uri)
    store.check()
    local = (
        Path(cache_dir)
        if cache_dir
        else default_scratch(store.uri).with_name(default_scratch(store.uri).name + "-query")
    )
    if pull(store, Layout(local), history=False, ingested=True) is None:
        raise FileNotFoundError(
            f"no published run in {uri} ({uri}/{LATEST} does not exist); run `towerflow run "
            f"--data-dir {uri}` first"
        )
    return local


def describe(store: ObjectStore) -> dict[str, Any]:
    """Requests and bytes of a store client, for logs and benchmarks (never credentials)."""
    t = store.traffic
    return {
        "requests": t.requests,
        "bytes_sent": t.sent,
        "bytes_received": t.received,
        "by_operation": dict(t.by_operation),
    }
