"""Resume a crashed night: Prefect caching keyed on content, checked against the stage's outputs on
every hit.

A stage declared with :func:`stage_task` is a Prefect task whose cache key
(:class:`ContentCache`) is the sha256 of

- the task's name,
- the code version: the source of ``flows/nightly.py`` and of every
  ``flows``/``tasks`` module it imports, directly or not (found by reading
  the import statements, so the key is the same in every process), and the
  versions of the numeric libraries;
- every input: a parameter naming an existing file or directory counts by the
  sha256 of its content (hidden files, such as a killed write's temporary,
  excluded), any other value by its JSON text; parameters listed as
  ``outputs`` (where the stage writes) count by their text only.

The task's result (a small dict of paths and facts) is persisted as plain JSON
(never a serialized Python object: :data:`SERIALIZER` has no object decoder) in
``<work>/.results/``, so it lives and dies with the run's staging directory under the data
directory. The result also carries the manifest of the stage's outputs (every file under a path it
returned or under an output parameter, with its sha256). Before Prefect looks the key up,
:meth:`ContentCache.compute_key` reads the stored record itself and deletes it unless it is a JSON
record whose every output still exists with the recorded sha256: a deleted or modified output, a
record cut short by a crash or written with another serializer is a miss, and the stage runs again.
"""

from __future__ import annotations

import ast
import datetime as dt
import functools
import hashlib
import importlib.metadata
import inspect
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

from prefect import Task, get_run_logger, task
from prefect.cache_policies import CachePolicy
from prefect.client.schemas.objects import State
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.filesystems import LocalFileSystem
from prefect.serializers import JSONSerializer

from tasks.store.storage import sha256_file

P = ParamSpec("P")
R = TypeVar("R", bound=Mapping[str, object])  # a resumable stage's result: a dict, stored as JSON
T = TypeVar("T")

RESULTS_DIR = ".results"  # under the run's work directory
MANIFEST = "outputs_sha256"  # key of the output manifest in a cached stage's result
CODE_ROOT = "flows.nightly"
LIBRARIES = (
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "scipy",
    "faiss-cpu",
)
_PACKAGES = ("flows", "tasks")
_ROOT = Path(__file__).resolve().parent.parent
_MAX_RECORD = 64 << 20


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("towerflow.caching")


def json_default(obj: Any) -> Any:
    """JSON for the few non-JSON types results hold (numpy scalars, paths, dates, a failure's
    exception); else an error.
    """
    # what Prefect stores for a failed run: the message, never the object
    if isinstance(obj, BaseException):
        return {"exception": type(obj).__name__, "message": str(obj)}
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dt.date):
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


# Plain json on the way back: no object hook, so a record can only ever load as dicts, lists and
# scalars.
SERIALIZER = JSONSerializer(object_encoder=f"{__name__}.json_default", object_decoder=None)


def _module_file(name: str) -> Path | None:
    base = _ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[str]:
    """Names of the ``flows``/``tasks`` modules a source file imports anywhere (lazy imports
    too).
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in _PACKAGES}


def code_files(root: str = CODE_ROOT) -> list[Path]:
    """The source files of ``root`` and of every project module it imports, transitively, sorted."""
    seen: dict[str, Path] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen[name] = path
        todo.extend(_imported(path))
    return sorted(set(seen.values()))


def _library_versions() -> dict[str, str]:
    versions = {}
    for dist in LIBRARIES:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@functools.cache
def code_version() -> str:
    """sha256 of the pipeline's source files and the numeric libraries' versions (computed once per
    process).
    """
    digest = hashlib.sha256()
    for path in code_files():
        digest.update(str(path.relative_to(_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps(_library_versions(), sort_keys=True).encode())
    return digest.hexdigest()


_SHA_MEMO: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, inode, size, mtime) so the large store is read once
    per process.
    """
    st = path.stat()
    memo_key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if memo_key not in _SHA_MEMO:
        _SHA_MEMO[memo_key] = sha256_file(path)
    return _SHA_MEMO[memo_key]


def _visible_files(path: Path) -> Iterator[Path]:
    """``path`` itself, or the files under it, skipping hidden names (temporaries of atomic writes,
    result records).
    """
    if path.is_file():
        yield path
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and not any(
                part.startswith(".") for part in child.relative_to(path).parts
            ):
                yield child


def _as_path(value: Any) -> Path | None:
    if isinstance(value, Path | str) and str(value).startswith("/") and "\n" not in str(value):
        path = Path(value)
        if path.exists():
            return path
    return None


def fingerprint(value: Any) -> Any:
    """What an input contributes to a key: a file or directory by its content, anything else by its
    value.
    """
    path = _as_path(value)
    if path is not None:
        return {
            "sha256": {
                str(f.relative_to(path)) if f != path else ".": file_sha256(f)
                for f in _visible_files(path)
            }
        }
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [fingerprint(v) for v in value]
    return value


def _paths_in(value: Any) -> Iterator[Path]:
    path = _as_path(value)
    if path is not None:
        yield path
    elif isinstance(value, dict):
        for v in value.values():
            yield from _paths_in(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _paths_in(v)


def output_manifest(result: Any, output_values: list[Any]) -> dict[str, str]:
    """sha256 of every file under a path the stage returned, and of the files it was told to write.

    An output *directory* parameter is not walked: files a later stage adds there are not this
    stage's.
    """
    manifest: dict[str, str] = {}
    for root in [*_paths_in(result), *(p for p in _paths_in(output_values) if p.is_file())]:
        for f in _visible_files(root):
            manifest[str(f)] = file_sha256(f)
    return manifest


def stale_reason(record_path: Path) -> str | None:
    """Why a stored cache record must not be used, or None when every output it lists is intact."""
    try:
        if record_path.stat().st_size > _MAX_RECORD:
            return "the record is too large to be one of towerflow's"
        record = json.loads(record_path.read_bytes())
        serializer = record["metadata"]["serializer"]
        if (
            serializer.get("type") != "json"
            or serializer.get("jsonlib", "json") != "json"
            or serializer.get("object_decoder")
        ):
            return (
                f"the record was written with serializer {serializer.get('type')!r}, not "
                "towerflow's plain JSON"
            )
        result = json.loads(record["result"])
        manifest = result[MANIFEST]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"the record is unreadable ({type(exc).__name__}: {exc})"
    for name, sha in manifest.items():
        path = Path(name)
        if not path.is_file():
            return f"its output {path} no longer exists"
        if file_sha256(path) != sha:
            return f"its output {path} changed since the stage wrote it"
    return None


@dataclass
class ContentCache(CachePolicy):
    """Key on the code version and the content of the inputs; a stored result counts only while its
    outputs verify.
    """

    outputs: tuple[str, ...] = ()

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        storage = task_ctx.result_store.result_storage
        if not isinstance(storage, LocalFileSystem) or not storage.basepath:
            # results outside a local directory cannot be checked: run the stage every time
            return None
        parts = {
            "task": task_ctx.task.name,
            "code": code_version(),
            "inputs": {
                name: (str(value) if name in self.outputs else fingerprint(value))
                for name, value in sorted(inputs.items())
            },
        }
        key = (
            "stage-"
            + hashlib.sha256(
                json.dumps(parts, sort_keys=True, default=json_default).encode()
            ).hexdigest()
        )
        record = Path(storage.basepath).expanduser() / key
        if record.exists():
            reason = stale_reason(record)
            if reason is not None:
                _logger().warning(
                    "stage %s: the stored result is not reused: %s; running it again",
                    task_ctx.task.name,
                    reason,
                )
                record.unlink(missing_ok=True)
        return key


def stage_task(
    name: str, outputs: tuple[str, ...] = (), **options: Any
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """``@task`` for a resumable stage returning a dict: content-keyed cache, JSON result with its
    output manifest.

    ``outputs`` names the parameters that say where the stage writes. The
    result storage is set per run by :func:`run_stage` (the run's work directory).
    The task keeps the function's signature and result type, so mypy checks every call and every key
    read.
    """

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def with_manifest(*args: P.args, **kwargs: P.kwargs) -> R:
            result = fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            stored = {
                **result,
                MANIFEST: output_manifest(result, [bound.arguments.get(p) for p in outputs]),
            }
            return cast(R, stored)

        policy = ContentCache(outputs=outputs)
        return task(
            name=name,
            cache_policy=policy,
            persist_result=True,
            result_serializer=SERIALIZER,
            **options,
        )(with_manifest)

    return decorate


def run_stage(
    fn: Callable[P, T], work: Path | None, /, *args: P.args, **kwargs: P.kwargs
) -> tuple[T, bool]:
    """Call a stage; a resumable one stores its result in ``work/.results``. Returns (result, reused
    from cache).
    """
    if work is None or not isinstance(fn, Task) or not isinstance(fn.cache_policy, ContentCache):
        return fn(*args, **kwargs), False
    # the resumable kind: a Task whose result Prefect persists in the run's work directory
    stage: Task[..., Any] = fn
    state = cast(
        "State[Any]",
        stage.with_options(result_storage=Path(work) / RESULTS_DIR)(
            *args, return_state=True, **kwargs
        ),
    )
    result = state.result()
    if isinstance(result, dict):
        result = {k: v for k, v in result.items() if k != MANIFEST}
    return cast(T, result), state.name == "Cached"
