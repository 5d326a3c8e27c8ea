"""The journal's modules: what they may import, what their docstrings say, what they export.

The journal is on the CLI start-up path and below the report and CLI layers, so it may
import only the standard library and the foundations `rollout.errors`, `rollout.atomic`
and `rollout.event`; each module's docstring states what it depends on, and that
statement must stay true. Other modules import the journal by its package name, so
every name they import from it must be exported there.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import rollout.journal

REPO = Path(__file__).resolve().parents[1]
JOURNAL = REPO / "rollout" / "journal"
FOUNDATIONS = {"rollout.errors", "rollout.atomic", "rollout.event"}
MAX_LINES = 450


def journal_modules() -> list[Path]:
    """The journal's source files (the package's modules, or the single module it once was)."""
    return sorted(JOURNAL.glob("*.py")) or [JOURNAL.with_suffix(".py")]


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def ours(path: Path) -> set[str]:
    return {name for name in imported_modules(path) if name.split(".")[0] == "rollout"}


@pytest.mark.parametrize("path", journal_modules(), ids=lambda p: p.name)
def test_the_journal_imports_only_the_standard_library_and_the_foundations(path: Path) -> None:
    others = {
        name
        for name in imported_modules(path)
        if name.split(".")[0] not in sys.stdlib_module_names
        and name not in FOUNDATIONS
        and not name.startswith("rollout.journal.")
        and name != "__future__"
    }

    assert not others, f"{path.name} imports {sorted(others)}"


@pytest.mark.parametrize("path", journal_modules(), ids=lambda p: p.name)
def test_each_journal_module_docstring_names_every_rollout_module_it_imports(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    unnamed = [
        name
        for name in sorted(ours(path))
        if name not in docstring and f"`{name.removeprefix('rollout.journal.')}`" not in docstring
    ]

    assert docstring, f"{path.name} has no module docstring"
    assert not unnamed, f"{path.name} imports {unnamed} but its docstring does not say so"


@pytest.mark.parametrize("path", journal_modules(), ids=lambda p: p.name)
def test_each_journal_module_is_short_enough_to_hold_one_concern(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())

    assert lines <= MAX_LINES, f"{path.name} has {lines} lines"


def test_every_name_imported_from_the_journal_anywhere_is_exported_by_the_package() -> None:
    wanted: dict[str, str] = {}
    for top in ("rollout", "tests", "bench", "examples"):
        for path in (REPO / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "rollout.journal":
                    wanted.update({alias.name: str(path.relative_to(REPO)) for alias in node.names})

    missing = {name: where for name, where in wanted.items() if name not in rollout.journal.__all__}

    assert "Journal" in wanted  # the scan found the importers
    assert not missing
    assert all(hasattr(rollout.journal, name) for name in rollout.journal.__all__)
