"""towerflow download, offline: a zip the test builds, served by a local HTTP server on
127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.cli import main
from tasks.sources.download import BASE_URL_ENV, KNOWN_MD5

# The release these tests download: one with no recorded MD5, checked against the .md5 the test
# serves.
UNPINNED = next(name for name, md5 in KNOWN_MD5.items() if md5 is None)
RATINGS = (
    "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n2,1,5.0,964982224\n"
)
MOVIES = "movieId,title,genres\n1,Made-up Movie (1995),Comedy\n2,Another One (2001),Drama|Romance\n"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory served over HTTP on 127.0.0.1 (random port), with the base-URL variable pointing
    at it.
    """
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    monkeypatch.setenv(BASE_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield root
    finally:
        server.shutdown()
        server.server_close()


def _publish(root: Path, name: str, members: dict[str, str], md5: str | None = None) -> str:
    """Write ``name.zip`` with ``members`` and its ``.md5`` file (the real MD5 unless given); return
    the real MD5.
    """
    path = root / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in members.items():
            archive.writestr(zipfile.ZipInfo(member), text)
    real = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    (root / f"{name}.zip.md5").write_text(f"{md5 or real}  {name}.zip\n")
    return real


def _release(name: str = UNPINNED) -> dict[str, str]:
    return {
        f"{name}/": "",
        f"{name}/ratings.csv": RATINGS,
        f"{name}/movies.csv": MOVIES,
        f"{name}/README.txt": "made up\n",
    }


def test_download_verifies_unpacks_and_prints_the_run_command(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md5 = _publish(served, UNPINNED, _release())
    dest = tmp_path / "datasets"
    assert main(["download", UNPINNED, "--to", str(dest)]) == 0
    out, err = capsys.readouterr()
    folder = dest / UNPINNED
    assert (folder / "ratings.csv").read_text() == RATINGS and (
        folder / "movies.csv"
    ).read_text() == MOVIES
    assert (folder / "README.txt").is_file() and (dest / f"{UNPINNED}.zip").is_file()
    assert f"MD5 {md5} verified" in out and f"downloading {UNPINNED}.zip" in err
    assert (
        out.splitlines()[-1] == f"next: towerflow run --ratings {folder / 'ratings.csv'} --movies "
        f"{folder / 'movies.csv'}"
    )
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temporary files left
    # A second call finds the verified folder and fetches nothing, even with the server's files
    # gone.
    for served_file in served.iterdir():
        served_file.unlink()
    assert main(["download", UNPINNED, "--to", str(dest)]) == 0
    out = capsys.readouterr().out
    assert (
        "already in" in out
        and "nothing downloaded" in out
        and out.splitlines()[-1].startswith("next: towerflow run --ratings")
    )


def test_bad_checksum_leaves_nothing(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(served, UNPINNED, _release(), md5="0" * 32)
    dest = tmp_path / "datasets"
    assert main(["download", UNPINNED, "--to", str(dest)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err.startswith("towerflow download failed: http://127.0.0.1:")
        and f"{UNPINNED}.zip: MD5 " in err
    )
    assert f"does not match {'0' * 32}" in err
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(
    "member",
    ["../evil.txt", f"{UNPINNED}/../../evil.txt", "/tmp/towerflow-evil.txt", "other/evil.txt"],
)
def test_zip_slip_member_is_refused(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], member: str
) -> None:
    _publish(served, UNPINNED, {**_release(), member: "pwned\n"})
    dest = tmp_path / "a" / "b"
    assert main(["download", UNPINNED, "--to", str(dest)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"refusing to unpack member {member!r}" in err
    assert list(dest.iterdir()) == []  # no folder, no zip, no temporary files
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()
    assert not Path("/tmp/towerflow-evil.txt").exists()


def test_missing_checksum_file_refuses(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(served, UNPINNED, _release())
    (served / f"{UNPINNED}.zip.md5").unlink()
    assert main(["download", UNPINNED, "--to", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert f"cannot verify {UNPINNED}.zip" in err and f"{UNPINNED}.zip.md5: HTTP 404" in err
    assert not (tmp_path / "d" / UNPINNED).exists()


def test_published_md5_must_agree_with_the_recorded_one(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # consistent zip + .md5, but not the real ml-25m
    real = _publish(served, "ml-25m", _release("ml-25m"))
    assert main(["download", "ml-25m", "--to", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert f"says {real}, but ml-25m.zip is known to have MD5 {KNOWN_MD5['ml-25m']}" in err
    assert not (tmp_path / "d" / "ml-25m.zip").exists()


def test_a_zip_without_ratings_is_refused(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(served, UNPINNED, {f"{UNPINNED}/movies.csv": MOVIES})
    dest = tmp_path / "d"
    assert main(["download", UNPINNED, "--to", str(dest)]) == 1
    assert f"no ratings.csv in {UNPINNED}/" in capsys.readouterr().err
    assert list(dest.iterdir()) == []
