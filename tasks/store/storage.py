"""Atomic, schema-checked file I/O.

Everything towerflow writes goes to a temporary file in the destination's
directory and is renamed into place only once complete, so a reader (or a
crash) never sees a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks import faults
from tasks.errors import DataError
from tasks.store.schemas import check_schema, stamp


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes 0600; published files must be readable like any other
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has no NaN; strict parsers
    refuse it).
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented, strict JSON (NaN as null), atomically."""
    text = json.dumps(json_safe(payload), indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        if faults.armed(f"write:{path.name}"):  # crash tests: die with half of the file written
            tmp.write_text(text[: len(text) // 2], encoding="utf-8")
            faults.kill()
        tmp.write_text(text, encoding="utf-8")
    return path


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, with an error that names the file if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_table(
    path: Path, table: pa.Table, schema: pa.Schema, name: str, extra: dict[str, str] | None = None
) -> Path:
    """Check ``table`` against ``schema``, stamp the version, write it atomically."""
    check_schema(table.schema, schema, f"writing {name} to {path}", versioned=False)
    table = table.replace_schema_metadata(stamp(schema, name, extra).metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


class TableWriter:
    """Stream record batches into one Parquet file, published atomically on close."""

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        name: str,
        extra: dict[str, str] | None = None,
        **parquet_options: Any,
    ):
        """``parquet_options`` go to :class:`pyarrow.parquet.ParquetWriter` (e.g.
        ``column_encoding``).
        """
        self.path = path
        self.name = name
        self.schema = stamp(schema, name, extra)
        self.rows = 0
        self._ctx = atomic_path(path)
        tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(
            tmp, self.schema, **{"compression": "zstd", **parquet_options}
        )

    def write(self, table: pa.Table) -> None:
        check_schema(
            table.schema, self.schema, f"writing {self.name} to {self.path}", versioned=False
        )
        self._writer.write_table(table.replace_schema_metadata(self.schema.metadata))
        self.rows += table.num_rows

    def close(self) -> Path:
        self._writer.close()
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        self._writer.close()
        with contextlib.suppress(RuntimeError):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def read_table(
    path: Path, schema: pa.Schema, name: str, columns: list[str] | None = None
) -> pa.Table:
    """Read a towerflow Parquet file and verify its schema and version."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name} table not found at {path}")
    check_schema(pq.read_schema(path), schema, f"reading {name} from {path}")
    return pq.read_table(path, columns=columns)


def table_meta(path: Path, key: str) -> str | None:
    """Return ``towerflow.<key>`` from a Parquet file's schema metadata."""
    meta = pq.read_schema(path).metadata or {}
    value = meta.get(f"towerflow.{key}".encode())
    return value.decode() if value is not None else None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(*parts: str) -> str:
    """Hex sha256 of text parts joined with a separator."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
