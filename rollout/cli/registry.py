"""Which module registers each command, so a process imports only the command it runs.

`rollout validate plan.yaml` needs the validate command and nothing else: importing every
command module, and having typer build every command's parameters, was about 30 ms of its
start-up (a tenth). Help, a mistyped command, or no command at all import every module, so the
listing, the "No such command" error and its suggestions are the same as ever.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

# command (as typed after `rollout`) -> the module under rollout.cli that registers it.
# tests/test_startup.py checks this table against what the modules register.
COMMAND_MODULES = {
    "demo": "demo_cmd",
    "export": "gate_cmds",
    "gate": "gate_cmds",
    "runs": "history_cmds",
    "timeline": "history_cmds",
    "verify": "history_cmds",
    "unlock": "lock_cmds",
    "metadata": "metadata_cmds",
    "parity": "parity_cmds",
    "validate": "plan_cmds",
    "plan": "plan_cmds",
    "schema": "plan_cmds",
    "report": "report_cmds",
    "run": "run_cmds",
    "recover": "run_cmds",
    "trust": "trust_cmds",
}

# Commands that read their input, answer and exit, in a time bounded by that input: the
# process runs them with the garbage collector paused (rollout.cli.app.gc_paused). Never
# one that runs a rollout or waits on targets; `timeline --follow` switches it back on.
BOUNDED_COMMANDS = frozenset({"validate", "schema", "runs", "timeline", "verify", "report", "export"})


def command_named(argv: Sequence[str]) -> str | None:
    """The command an argument list runs, or None.

    The app's own options (--help, --version) take no value and end the process, so a
    command runs only when it is the first word.
    """
    return argv[0] if argv and not argv[0].startswith("-") else None


def register_commands(argv: Sequence[str] = ()) -> None:
    """Register the command `argv` runs (importing its module), or every command when it names none we know."""
    module = COMMAND_MODULES.get(command_named(argv) or "")
    if module is None:
        importlib.import_module("rollout.cli.commands")
    else:
        importlib.import_module(f"rollout.cli.{module}")
