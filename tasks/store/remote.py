"""An S3-compatible object store as a data directory: ``--data-dir s3://bucket/prefix``.

Why boto3 and not ``pyarrow.fs``: publishing needs conditional PUTs (``If-None-Match`` /
``If-Match``), which pyarrow's S3 filesystem cannot send, and the benchmarks count requests and
bytes, which boto3's event hooks give. The store only ever moves whole files (the night itself
works on a local copy, :mod:`tasks.store.mirror`), so one client does all of it.

Endpoint, region and credentials come from the environment as for any AWS tool
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, profiles);
they never appear in a parameter, a log line, an event or ``latest.json``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import ConfigError, TowerflowError
from tasks.store.storage import atomic_path, sha256_file

SCHEME = "s3://"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SHA_META = "sha256"  # user metadata on every object towerflow writes: checkable from any machine


class StoreError(TowerflowError):
    """The object store refused a request; the message names the URI and what to fix."""


class StoreUnavailable(StoreError, OSError):
    """The store could not be reached or failed on its side (5xx): transient, so the I/O stages
    retry it.
    """


class PublishConflict(TowerflowError):
    """Another night changed ``latest.json`` (or a file it names) since this night started."""


def is_uri(value: str | os.PathLike[str] | None) -> bool:
    """True for ``scheme://...`` (an object store); local paths are not URIs."""
    return value is not None and "://" in str(value)


@dataclass(frozen=True)
class StoreURI:
    """``s3://bucket/prefix``: a bucket and a key prefix without leading or trailing slashes."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> StoreURI:
        text = str(uri)
        if not text.startswith(SCHEME):
            scheme = text.split("://", 1)[0]
            raise ConfigError(
                f"{text}: {scheme}:// is not supported; use a local path or s3://bucket/prefix"
            )
        bucket, _, prefix = text[len(SCHEME) :].partition("/")
        if not _BUCKET_RE.match(bucket):
            raise ConfigError(
                f"{text}: {bucket!r} is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')"
            )
        parts = [p for p in prefix.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ConfigError(f"{text}: '.' and '..' are not allowed in an object key")
        return cls(bucket, "/".join(parts))

    def key(self, rel: str) -> str:
        rel = rel.strip("/")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


@dataclass
class Traffic:
    """Requests sent and bytes moved, for the benchmarks and the night's log."""

    requests: int = 0
    sent: int = 0
    received: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)


def _error_code(exc: Exception) -> tuple[str, int]:
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(error.get("Code", type(exc).__name__)), status


_FIX = {
    "NoSuchBucket": "the bucket does not exist: create it, or fix the URI",
    "InvalidAccessKeyId": (
        "the store does not know AWS_ACCESS_KEY_ID: fix the credentials in the environment"
    ),
    "SignatureDoesNotMatch": (
        "AWS_SECRET_ACCESS_KEY does not match the key id: fix the credentials in the environment"
    ),
    "AccessDenied": (
        "the credentials in the environment may not use it: fix them or the bucket's policy"
    ),
    "403": (
        "the store refused the credentials in the environment (AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY): fix them"
    ),
    "404": "the bucket does not exist: create it, or fix the URI",
}


class ObjectStore:
    """Whole-file reads and writes under one ``s3://bucket/prefix``, every object stamped with its
    sha256.
    """

    def __init__(self, uri: str | StoreURI):
        import boto3
        from botocore.config import Config

        self.uri = uri if isinstance(uri, StoreURI) else StoreURI.parse(uri)
        self.traffic = Traffic()
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        config = Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 4, "mode": "standard"},
            s3={"addressing_style": "path"} if endpoint else {},
        )
        self.endpoint = endpoint
        self._client = boto3.session.Session().client(
            "s3", region_name=region, endpoint_url=endpoint, config=config
        )
        self._client.meta.events.register("before-send.s3.*", self._count_request)

    def _count_request(self, request: Any, event_name: str = "", **_: Any) -> None:
        self.traffic.requests += 1
        self.traffic.sent += int(getattr(request, "headers", {}).get("Content-Length", 0) or 0)
        name = event_name.rsplit(".", 1)[-1] or "?"
        self.traffic.by_operation[name] = self.traffic.by_operation.get(name, 0) + 1

    def _fail(self, exc: Exception, what: str, rel: str = "") -> StoreError:
        from botocore.exceptions import EndpointConnectionError, NoCredentialsError

        where = f"{self.uri}/{rel}" if rel else str(self.uri)
        if isinstance(exc, NoCredentialsError):
            return StoreError(
                f"{where}: no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or a profile)"
            )
        if isinstance(exc, EndpointConnectionError):
            return StoreUnavailable(
                f"{where}: cannot reach the store at {self.endpoint or 'AWS'}; check "
                "AWS_ENDPOINT_URL"
            )
        code, status = _error_code(exc)
        if status >= 500:
            return StoreUnavailable(
                f"{where}: {what} failed: the store answered {status} ({code}); try again later"
            )
        fix = _FIX.get(code) or _FIX.get(str(status)) or str(exc).splitlines()[0]
        return StoreError(f"{where}: {what} failed ({code}): {fix}")

    def check(self) -> None:
        """Fail in one line, before any work, if the bucket is missing or the credentials are
        refused.
        """
        try:
            self._client.head_bucket(Bucket=self.uri.bucket)
        except Exception as exc:
            raise self._fail(exc, "opening the bucket") from None

    def head(self, rel: str) -> dict[str, str] | None:
        """``{"etag", "sha256"}`` of an object, or None if there is none."""
        try:
            out = self._client.head_object(Bucket=self.uri.bucket, Key=self.uri.key(rel))
        except Exception as exc:
            if _error_code(exc)[1] == 404:
                return None
            raise self._fail(exc, "reading", rel) from None
        return {"etag": str(out["ETag"]), "sha256": str(out.get("Metadata", {}).get(_SHA_META, ""))}

    def get(self, rel: str) -> tuple[bytes, str] | None:
        """An object's bytes and ETag, or None if there is none."""
        try:
            out = self._client.get_object(Bucket=self.uri.bucket, Key=self.uri.key(rel))
            body = out["Body"].read()
        except Exception as exc:
            if _error_code(exc)[0] in ("NoSuchKey", "404"):
                return None
            raise self._fail(exc, "reading", rel) from None
        self.traffic.received += len(body)
        return body, str(out["ETag"])

    def download(self, rel: str, dest: Path) -> Path:
        """Copy an object to ``dest`` atomically; an error if it is missing."""
        got = self.get(rel)
        if got is None:
            raise StoreError(f"{self.uri}/{rel}: not found in the store")
        with atomic_path(Path(dest)) as tmp:
            tmp.write_bytes(got[0])
        return Path(dest)

    def put(
        self, rel: str, body: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Write an object (conditionally); return its ETag. A failed condition raises
        :class:`PublishConflict`.
        """
        kwargs: dict[str, Any] = {"Metadata": {_SHA_META: hashlib.sha256(body).hexdigest()}}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            out = self._client.put_object(
                Bucket=self.uri.bucket, Key=self.uri.key(rel), Body=body, **kwargs
            )
        except Exception as exc:
            code, status = _error_code(exc)
            if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise PublishConflict(
                    f"{self.uri}/{rel} changed since this night started"
                ) from None
            raise self._fail(exc, "writing", rel) from None
        return str(out["ETag"])

    def upload(self, path: Path, rel: str, *, if_none_match: bool = False) -> str:
        """Write a local file as an object (whole, one PUT: conditional writes need it); return its
        ETag.
        """
        return self.put(rel, Path(path).read_bytes(), if_none_match=if_none_match)

    def keys(self, rel_prefix: str) -> Iterator[str]:
        """Keys under ``rel_prefix``, relative to the store's prefix."""
        prefix = self.uri.key(rel_prefix) + "/"
        strip = len(self.uri.prefix) + 1 if self.uri.prefix else 0
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.uri.bucket, Prefix=prefix
            ):
                for obj in page.get("Contents", []):
                    yield str(obj["Key"])[strip:]
        except Exception as exc:
            raise self._fail(exc, "listing", rel_prefix) from None

    def delete(self, rels: list[str]) -> None:
        for start in range(0, len(rels), 1000):
            batch = [{"Key": self.uri.key(r)} for r in rels[start : start + 1000]]
            try:
                self._client.delete_objects(
                    Bucket=self.uri.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as exc:
                raise self._fail(exc, "deleting", rels[start]) from None


def same_file(store: ObjectStore, rel: str, path: Path) -> bool:
    """True when the store holds ``rel`` with the sha256 of the local ``path``."""
    head = store.head(rel)
    return head is not None and head["sha256"] == sha256_file(path)
