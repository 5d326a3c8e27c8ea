"""Start-up stays lean: help and validate never import the SSH, HTTP or JSON Schema libraries."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rollout.cli import registry

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("paramiko", "httpx", "jsonschema")


def _imported_modules(*args: str) -> set[str]:
    """Top-level packages a real `python -m rollout ARGS` process imports.

    HOME is an empty directory: with a ~/.ssh/config to parse, validating a plan with ssh
    hosts rightly loads paramiko (its SSHConfig places the hosts); without one it must not.
    """
    with tempfile.TemporaryDirectory() as home:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "rollout", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={**os.environ, "HOME": home},
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "rollout" in names  # the report was read, not empty
    return names


@pytest.mark.parametrize(
    "args",
    [("--help",), ("validate", "plans/order-gateway-metadata.yaml")],
    ids=["help", "validate"],
)
def test_start_up_does_not_import_ssh_http_or_json_schema_libraries(args: tuple[str, ...]) -> None:
    imported = _imported_modules(*args)

    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


# --- one command, one module -------------------------------------------------------------

PLAN = """\
name: lean
environments:
  lab:
    rehearsal: true
    hosts: { h1: {} }
steps:
  - { name: one, run: 'true', rollback: 'true' }
"""
COMMAND_MODULES = {f"rollout.cli.{m}" for m in registry.COMMAND_MODULES.values()}


# Every module in sys.modules when the process exits (-X importtime misses those that
# importlib.import_module loads, as the command registry does).
_PRINT_MODULES_AT_EXIT = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('\\n'.join(sorted(sys.modules)), file=sys.stderr))\n"
    "sys.argv[0] = 'rollout'\n"
    "runpy.run_module('rollout', run_name='__main__', alter_sys=True)\n"
)


def _all_imported(*args: str) -> set[str]:
    """Every module (full dotted name) a real `python -m rollout ARGS` process imported; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-c", _PRINT_MODULES_AT_EXIT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return set(done.stderr.split())


def test_the_command_table_says_which_module_registers_every_command() -> None:
    from rollout.cli import commands  # noqa: F401  (registers every command)
    from rollout.cli.app import app

    registered = {(c.name or c.callback.__name__): c.callback.__module__ for c in app.registered_commands if c.callback}
    for group in app.registered_groups:
        home = next(m for m in COMMAND_MODULES if group.typer_instance in vars(importlib.import_module(m)).values())
        registered[str(group.name)] = home

    assert {name: f"rollout.cli.{m}" for name, m in registry.COMMAND_MODULES.items()} == registered


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(plan, state dir) of one finished run of a one-step plan."""
    tmp = tmp_path_factory.mktemp("lean")
    plan = tmp / "plan.yaml"
    plan.write_text(PLAN)
    state = tmp / "state"
    done = subprocess.run(
        [sys.executable, "-m", "rollout", "run", str(plan), "--env", "lab", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return plan, state


@pytest.mark.parametrize(
    ("args", "module", "never"),
    [
        (("validate", "{plan}"), "rollout.cli.plan_cmds", ("rollout.engine.apply", "rollout.journal")),
        (("verify", "last", "--state-dir", "{state}"), "rollout.cli.history_cmds", ("rollout.model",)),
        (("timeline", "last", "--state-dir", "{state}"), "rollout.cli.history_cmds", ("rollout.planfile",)),
        (
            ("report", "last", "--format", "html", "--state-dir", "{state}"),
            "rollout.cli.report_cmds",
            ("rollout.planfile",),
        ),
    ],
    ids=["validate", "verify", "timeline", "report"],
)
def test_a_command_imports_its_own_module_and_not_the_others(
    finished_run: tuple[Path, Path], args: tuple[str, ...], module: str, never: tuple[str, ...]
) -> None:
    plan, state = finished_run

    imported = _all_imported(*(a.format(plan=plan, state=state) for a in args))

    assert module in imported
    assert not (COMMAND_MODULES - {module}) & imported, sorted((COMMAND_MODULES - {module}) & imported)
    unwanted = (*HEAVY, "rich.live", *never)
    assert not {m for m in imported if m.startswith(unwanted)}, sorted(m for m in imported if m.startswith(unwanted))


def test_help_in_a_fresh_process_still_lists_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rollout", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )

    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ") and line.split()}
    assert set(registry.COMMAND_MODULES) <= listed, sorted(set(registry.COMMAND_MODULES) - listed)


def test_a_mistyped_command_is_refused_with_the_usual_suggestion() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rollout", "valdate", "x.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )

    assert done.returncode == 2
    assert "No such command 'valdate'" in done.stderr
    assert "validate" in done.stderr
