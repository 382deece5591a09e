"""The packages under tasks/ import one way: each only those before it in ORDER (no cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

ORDER = ("store", "preparation", "ingestion", "modeling", "serving", "evaluation")
TASKS = Path(__file__).resolve().parents[1] / "tasks"


def _imported_packages(path: Path) -> set[str]:
    """The tasks sub-packages a module imports, lazily inside functions included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        for name in names:
            parts = name.split(".")
            if len(parts) > 1 and parts[0] == "tasks" and parts[1] in ORDER:
                found.add(parts[1])
    return found


def test_each_package_imports_only_the_ones_before_it() -> None:
    wrong = []
    for rank, package in enumerate(ORDER):
        modules = sorted((TASKS / package).glob("*.py"))
        assert modules, f"no modules in tasks/{package}"
        for module in modules:
            later = _imported_packages(module) & set(ORDER[rank + 1 :])
            wrong += [f"{module.relative_to(TASKS)} imports tasks.{p}" for p in sorted(later)]
    assert not wrong, wrong
