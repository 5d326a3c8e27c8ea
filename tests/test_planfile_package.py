"""The planfile package: one concern a module, one yaml importer, and the old names still import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rollout.planfile

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rollout" / "planfile"

# The names other modules imported from `rollout/planfile.py`, and its old `__all__`.
IMPORTED_NAMES = (
    "MAX_PLAN_BYTES",
    "LoadedPlan",
    "Mark",
    "PlanInvalid",
    "SourceMap",
    "TemplateError",
    "Variables",
    "check_overrides",
    "format_loc",
    "host_variables",
    "load_plan",
    "load_yaml_document",
    "plan_json_schema",
    "render_model",
)


def _imports_yaml(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "yaml" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "yaml" and not node.level:
            return True
    return False


def test_marked_yaml_is_the_only_module_in_rollout_that_imports_yaml() -> None:
    importers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "rollout").rglob("*.py") if _imports_yaml(p))

    assert importers == ["rollout/planfile/marked_yaml.py"]


@pytest.mark.parametrize("name", IMPORTED_NAMES)
def test_every_name_imported_from_planfile_still_imports(name: str) -> None:
    assert name in rollout.planfile.__all__
    assert getattr(rollout.planfile, name) is not None


def test_planfile_is_a_package_of_small_modules_each_saying_its_concern() -> None:
    modules = sorted(PACKAGE.glob("*.py"))

    assert {p.name for p in modules} >= {
        "__init__.py",
        "locations.py",
        "marked_yaml.py",
        "validation.py",
        "loading.py",
        "render.py",
        "schema.py",
    }
    for path in modules:
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 450, path.name
        assert ast.get_docstring(ast.parse(text)), path.name


def test_parse_marked_keeps_the_mark_of_every_key_and_of_the_document() -> None:
    document = rollout.planfile.parse_marked("# a comment\nname: x\nsteps:\n  - run: a\n", "p.yaml")

    assert document is not None
    assert document.data == {"name": "x", "steps": [{"run": "a"}]}
    assert str(document.start) == "p.yaml:2:1"
    assert str(document.marks[("steps", 0, "run")]) == "p.yaml:4:5"
    assert rollout.planfile.parse_marked("# nothing but a comment\n", "p.yaml") is None
