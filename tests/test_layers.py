"""The layer order in rollout's package docstring holds for every import in rollout/, lazy ones included.

The table is read from the docstring itself, so the order is written in one place: a
module that imports from a later layer, a module in no layer, or a command-line module
that reaches past the API fails here, naming the file, line and both layers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import rollout

PACKAGE = Path(rollout.__file__).parent
CLI_MAY_USE = {"foundation", "api", "cli"}


def layers() -> dict[str, int]:
    """`name -> rank` from the table in rollout's docstring (first word: the layer; the rest: its modules)."""
    doc = rollout.__doc__ or ""
    table = doc.split("Layers, lowest first.", 1)[1].split("\n\n", 2)[1]
    ranks: dict[str, int] = {}
    for rank, line in enumerate(table.strip().splitlines()):
        layer, *modules = line.split()
        for module in modules:
            ranks[module] = rank
        ranks[f"layer:{layer}"] = rank
    return ranks


def layer_names() -> dict[int, str]:
    return {rank: name.removeprefix("layer:") for name, rank in layers().items() if name.startswith("layer:")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top(module: str) -> str:
    """The first component under rollout: rollout.checks.metadata.schema -> checks."""
    return module.split(".")[1] if module.count(".") else ""


def imports(path: Path, me: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every import of ours in the file, at any depth (lazy and TYPE_CHECKING too)."""
    me = me or module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] if target == "rollout" else [target]
            found.extend((node.lineno, n) for n in names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
    return [(line, name) for line, name in found if name == "rollout" or name.startswith("rollout.")]


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_module_has_a_layer() -> None:
    ranks = layers()
    missing = sorted({top(module_name(p)) for p in sources()} - ranks.keys())
    assert not missing, f"modules in no layer of rollout/__init__.py's table: {missing}"


def test_no_import_runs_upward() -> None:
    ranks, names = layers(), layer_names()
    upward = []
    for path in sources():
        mine = ranks[top(module_name(path))]
        for line, target in imports(path):
            name = top(target)
            if name in ("", "__version__"):
                continue  # the package root: only the version lives there
            theirs = ranks[name]
            if theirs > mine:
                upward.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {names[mine]} imports {target} ({names[theirs]})"
                )
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_the_command_line_reaches_the_rest_only_through_the_api() -> None:
    ranks, names = layers(), layer_names()
    reaching = []
    for path in sorted((PACKAGE / "cli").rglob("*.py")):
        for line, target in imports(path):
            name = top(target)
            if name not in ("", "__version__") and names[ranks[name]] not in CLI_MAY_USE:
                reaching.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {target}")
    assert not reaching, "the CLI must use rollout.api:\n" + "\n".join(reaching)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The test above would pass vacuously if `imports` found nothing: it must find lazy imports too."""
    found = imports(PACKAGE / "cli" / "run_cmds.py")
    assert any(name.startswith("rollout.api") for _, name in found)
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..cli.app import app\n    if app:\n        import rollout.api\n")
    assert imports(probe, "rollout.engine.probe") == [(2, "rollout.cli.app"), (4, "rollout.api")]


def test_the_table_is_what_the_architecture_says() -> None:
    order = [names for _, names in sorted(layer_names().items())]
    assert order == [
        "foundation",
        "model",
        "planfile",
        "checks",
        "executors",
        "engine",
        "journal",
        "report",
        "api",
        "cli",
    ]
    assert re.search(r"errors\b", (rollout.__doc__ or "").split("foundation", 1)[1].splitlines()[0])
