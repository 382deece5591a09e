"""Fetch a MovieLens release from GroupLens, verify it, unpack it safely (``towerflow download``).

The zip is streamed to a temporary file beside its destination while its MD5
is computed, checked against the ``.zip.md5`` file GroupLens publishes next to
it (and against the value recorded here, where one is known), and only then
renamed into place. Unpacking refuses any member that would land outside the
release's own folder (absolute paths, ``..``, links: "zip slip") before
writing anything, extracts into a temporary folder, and renames it into place.
A verified folder is recognized on the next call and not fetched again.

``TOWERFLOW_DOWNLOAD_BASE_URL`` replaces the GroupLens base URL (a mirror, or
a local server in the tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tasks.errors import TowerflowError

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "TOWERFLOW_DOWNLOAD_BASE_URL"
# MD5s GroupLens publishes for its frozen releases (ml-latest-small has none recorded here: it is
# checked against its .md5 file alone). A published .md5 that disagrees with these stops the
# download.
KNOWN_MD5 = {
    "ml-latest-small": None,
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
    "ml-32m": "d472be332d4daa821edc399621853b57",
}
MARKER = ".towerflow-download.json"
_MD5_RE = re.compile(r"\b([0-9a-fA-F]{32})\b")


class DownloadError(TowerflowError, RuntimeError):
    """The data set could not be fetched, verified or unpacked; the message says which and why."""


@dataclass(frozen=True)
class Downloaded:
    """Where a verified release was unpacked, and what this call had to do."""

    name: str
    folder: Path
    md5: str
    verified_by: str
    downloaded: bool
    unpacked: bool

    @property
    def ratings(self) -> Path:
        return self.folder / "ratings.csv"

    @property
    def movies(self) -> Path:
        return self.folder / "movies.csv"

    def run_command(self) -> str:
        """The ``towerflow run`` command for this data set."""
        return (
            f"towerflow run --ratings {shlex.quote(str(self.ratings))} --movies "
            f"{shlex.quote(str(self.movies))}"
        )


def _open(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "towerflow"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: {getattr(exc, 'reason', exc)}") from exc


def published_md5(url: str, timeout: float = 30.0) -> str:
    """The MD5 in a ``.md5`` file (``<hash>  file`` or ``MD5 (file) = <hash>``)."""
    with _open(url, timeout) as response:
        text = response.read(4096).decode("utf-8", "replace")
    match = _MD5_RE.search(text)
    if not match:
        raise DownloadError(f"{url}: no MD5 checksum in {text.strip()[:80]!r}")
    return match.group(1).lower()


def expected_md5(name: str, base_url: str, timeout: float = 30.0) -> tuple[str, str]:
    """(md5, where it came from): the published ``.md5`` file, cross-checked with
    :data:`KNOWN_MD5`.
    """
    known = KNOWN_MD5[name]
    url = f"{base_url}/{name}.zip.md5"
    try:
        published = published_md5(url, timeout)
    except DownloadError as exc:
        if known is None:
            raise DownloadError(f"cannot verify {name}.zip: {exc}") from exc
        return known, f"MD5 recorded in towerflow; {url} unavailable"
    if known is not None and published != known:
        raise DownloadError(
            f"{url} says {published}, but {name}.zip is known to have MD5 {known}; not "
            "downloading a changed file"
        )
    return published, url


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    url: str,
    dest: Path,
    expected: str,
    source: str,
    progress: IO[str] | None,
    timeout: float = 60.0,
) -> None:
    """Stream ``url`` to a temporary file beside ``dest``; rename it to ``dest`` only if its MD5 is
    ``expected``.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out, _open(url, timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done, reported, shown = 0, -1, 0.0
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress is not None and time.monotonic() - shown > 0.5:
                    shown, reported = time.monotonic(), done
                    _report(progress, dest.name, done, total)
        if progress is not None:
            if reported != done:
                _report(progress, dest.name, done, total)
            progress.write("\n")
        got = digest.hexdigest()
        if got != expected:
            raise DownloadError(
                f"{url}: MD5 {got} does not match {expected} ({source}); nothing was kept or "
                "unpacked"
            )
        tmp.chmod(0o644)  # mkstemp made it private; the data set is not secret
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _report(stream: IO[str], name: str, done: int, total: int) -> None:
    of = f" of {total / 1e6:.1f} MB ({100 * done / total:.0f}%)" if total else " MB"
    stream.write(f"\rdownloading {name}: {done / 1e6:.1f}{of}")
    stream.flush()


def check_members(archive: zipfile.ZipFile, name: str, where: str) -> None:
    """Refuse a zip any of whose members would land outside ``name/`` or is a link."""
    for info in archive.infolist():
        member = info.filename
        parts = PurePosixPath(member).parts
        unsafe = (
            member.startswith(("/", "\\"))
            or "\\" in member
            or ".." in parts
            or (parts and ":" in parts[0])
            or stat.S_ISLNK(info.external_attr >> 16)
            or not parts
            or parts[0] != name
        )
        if unsafe:
            raise DownloadError(
                f"{where}: refusing to unpack member {member!r}: it would land outside {name}/"
            )


def unpack(zip_path: Path, name: str, to: Path, md5: str, source: str) -> Path:
    """Unpack ``name/`` from a verified zip into ``to/name``, atomically; return that folder."""
    final = to / name
    with zipfile.ZipFile(zip_path) as archive:
        check_members(archive, name, str(zip_path))
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.unpack-", dir=to))
        try:
            archive.extractall(staging)
            folder = staging / name
            missing = [f for f in ("ratings.csv", "movies.csv") if not (folder / f).is_file()]
            if missing:
                raise DownloadError(f"{zip_path}: no {' or '.join(missing)} in {name}/")
            (folder / MARKER).write_text(
                json.dumps({"md5": md5, "source": source}) + "\n", encoding="utf-8"
            )
            trash = None
            if final.exists():
                trash = to / f".{name}.old-{os.getpid()}"
                os.replace(final, trash)
            os.replace(folder, final)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _already_unpacked(folder: Path) -> str | None:
    """The verified MD5 recorded in a complete unpacked folder, else None."""
    marker = folder / MARKER
    if not (
        marker.is_file()
        and (folder / "ratings.csv").is_file()
        and (folder / "movies.csv").is_file()
    ):
        return None
    try:
        md5 = json.loads(marker.read_text(encoding="utf-8")).get("md5")
    except (ValueError, AttributeError):
        return None
    return md5 if isinstance(md5, str) else None


def download(
    name: str, to: Path, base_url: str | None = None, progress: IO[str] | None = None
) -> Downloaded:
    """Make ``to/name/{ratings,movies}.csv`` from the verified GroupLens zip, fetching only what is
    missing.

    The verified zip is kept as ``to/name.zip``; a zip that fails its checksum or
    holds an unsafe member is deleted and nothing is unpacked.
    """
    if name not in KNOWN_MD5:
        raise DownloadError(f"unknown data set {name!r}; expected one of {', '.join(KNOWN_MD5)}")
    to = Path(to)
    folder = to / name
    if (recorded := _already_unpacked(folder)) is not None:
        return Downloaded(
            name,
            folder,
            recorded,
            f"recorded in {folder / MARKER}",
            downloaded=False,
            unpacked=False,
        )
    base = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    url = f"{base}/{name}.zip"
    md5, source = expected_md5(name, base)
    to.mkdir(parents=True, exist_ok=True)
    zip_path = to / f"{name}.zip"
    downloaded = False
    if not (zip_path.is_file() and file_md5(zip_path) == md5):
        fetch(url, zip_path, md5, source, progress)
        downloaded = True
    try:
        unpack(zip_path, name, to, md5, source)
    except DownloadError:
        zip_path.unlink(missing_ok=True)
        raise
    except zipfile.BadZipFile as exc:
        zip_path.unlink(missing_ok=True)
        raise DownloadError(f"{zip_path}: not a readable zip ({exc}); deleted") from exc
    return Downloaded(name, folder, md5, source, downloaded=downloaded, unpacked=True)
