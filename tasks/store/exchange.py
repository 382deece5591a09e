"""Shards on Dask workers that share no disk with the flow: their inputs and parts travel through
the store.

With ``--data-dir s3://...`` and ``--dask-address``, the flow offers what the scoring shards read
(the served vectors, the index, the scalers, the ratings and the catalog) under the same keys as
their paths under the night's scratch (``work/<version>/model/...``, ``store/<input hash>/...``). A
worker copies each into its own temporary directory once (fetched again only when the store's sha256
differs), scores, and writes its part back under the part's key; the flow then copies the parts into
its scratch and publishes as usual. A worker needs the store's endpoint and credentials in its own
environment, not TensorFlow.

Why not Prefect result storage or Dask's own transfer: the parts are files of tens of MB at scale,
and the store is where they must end up anyway; each object carries its sha256, checked by whoever
reads it.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from tasks.errors import ConfigError
from tasks.store.remote import ObjectStore, same_file
from tasks.store.storage import sha256_file


class Exchange:
    """Files under the flow's scratch ``root``, mirrored under the same keys in the store at
    ``store_uri``.
    """

    def __init__(self, store_uri: str, root: str):
        self.store = ObjectStore(store_uri)
        self.root = PurePosixPath(root)
        tag = hashlib.sha256(f"{store_uri}\x1f{root}".encode()).hexdigest()[:12]
        self.cache = Path(tempfile.gettempdir()) / "towerflow-exchange" / tag

    def key(self, path: str | Path) -> str:
        """The key of a scratch path (an error for a path outside the scratch: nothing else
        travels).
        """
        try:
            return str(PurePosixPath(str(path)).relative_to(self.root))
        except ValueError:
            raise ConfigError(
                f"{path} is not under the night's scratch {self.root}; it cannot reach a worker"
            ) from None

    def offer(self, paths: Iterable[Path]) -> int:
        """Flow side: write each file to the store unless it holds the same bytes; return how many
        were sent.
        """
        sent = 0
        for path in paths:
            if not same_file(self.store, self.key(path), Path(path)):
                self.store.upload(Path(path), self.key(path))
                sent += 1
        return sent

    def local(self, path: str | Path) -> Path:
        """Worker side: the worker's copy of a scratch file, fetched when missing or different from
        the store's.
        """
        key = self.key(path)
        copy = self.cache / key
        head = self.store.head(key)
        if head is None:
            raise FileNotFoundError(f"{self.store.uri}/{key}: not offered by the flow")
        if not (copy.is_file() and sha256_file(copy) == head["sha256"]):
            self.store.download(key, copy)
        return copy

    def local_dir(self, path: str | Path, names: Iterable[str]) -> Path:
        """The worker's copy of the files ``names`` of a scratch directory."""
        for name in names:
            self.local(Path(path) / name)
        return self.cache / self.key(path)

    def output(self, path: str | Path) -> Path:
        """Where a worker writes the file it will deliver to ``path``."""
        out = self.cache / self.key(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    def deliver(self, path: str | Path) -> None:
        """Worker side: send the worker's output for ``path`` to the store."""
        self.store.upload(self.output(path), self.key(path))

    def collect(self, path: str | Path) -> None:
        """Flow side: copy a delivered part into the scratch at ``path``."""
        self.store.download(self.key(path), Path(path))
