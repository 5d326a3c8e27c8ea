"""The typer app, global options and the terminal; exit codes come from `rollout.exits`."""

from __future__ import annotations

import gc
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from rollout import __version__
from rollout.errors import ExitStatus, PlanError, RolloutError
from rollout.exits import exit_status_for

HELP = """rollout: upgrade-safety rollout orchestrator.

Declarative upgrade plans with pre-checks, metadata validation, continuous guards,
canary waves and automatic rollback, recorded in a hash-chained journal.

\b
Exit codes: 0 success, 1 rolled back, 2 usage/invalid plan, 3 refused before any
change, 4 rollback failed (manual action needed), 5 journal/internal error,
130 interrupted (rolled back).
"""

app = typer.Typer(
    name="rollout",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


#: Control characters removed from what the CLI prints (all of C0 but tab and newline, DEL, C1):
#: messages quote commands' output, whose colour codes or cursor moves must not reach a log
#: or drive the terminal showing it.
SHOWN_TEXT = dict.fromkeys([*(c for c in range(0x20) if c not in (0x09, 0x0A)), 0x7F, *range(0x80, 0xA0)])


@dataclass
class Terminal:
    """All terminal I/O goes through here, so tests can replace it."""

    out: Console
    err: Console

    @classmethod
    def create(cls) -> Terminal:
        """Consoles for stdout and stderr (NO_COLOR respected by rich)."""
        return cls(
            out=Console(highlight=False, soft_wrap=True),
            err=Console(stderr=True, highlight=False, soft_wrap=True),
        )

    def print(self, text: str = "", **kwargs: object) -> None:
        """Print to stdout as written: no markup, no emoji codes, no control characters."""
        self.out.print(text.translate(SHOWN_TEXT), markup=False, emoji=False, **kwargs)  # type: ignore[arg-type]

    def error(self, text: str) -> None:
        """Print to stderr as written: no markup, no emoji codes, no control characters."""
        self.err.print(text.translate(SHOWN_TEXT), markup=False, emoji=False)


terminal = Terminal.create()


LockDirOption = Annotated[
    Path | None,
    typer.Option(
        "--lock-dir",
        help="Lock directory, shared by every working directory "
        "(default: $ROLLOUT_LOCK_DIR or $XDG_STATE_HOME/rollout/locks, i.e. ~/.local/state/rollout/locks).",
    ),
]


StateDirOption = Annotated[
    Path | None,
    typer.Option("--state-dir", help="State directory (default: $ROLLOUT_STATE_DIR or ./.rollout)."),
]


def parse_vars(items: list[str] | None) -> dict[str, str]:
    """`--var k=v` pairs -> a dict; a missing '=' is a usage error."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"--var takes name=value, got {item!r}")
        out[name.strip()] = value
    return out


VarOption = Annotated[
    list[str] | None,
    typer.Option(
        "--var",
        help="Override a variable: --var name=value (repeatable; wins over plan, env and host vars).",
    ),
]


def fail(exc: RolloutError) -> NoReturn:
    """Report a rollout error on stderr and exit with its status."""
    text = exc.render() if isinstance(exc, PlanError) else str(exc)
    terminal.error(text)
    raise typer.Exit(int(exit_status_for(exc)))


def _version(value: bool) -> None:
    if value:
        terminal.print(f"rollout {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """rollout: upgrade-safety rollout orchestrator."""


@contextmanager
def abort_on_interrupt(abort: threading.Event) -> Iterator[None]:
    """While the block runs, Ctrl-C and SIGTERM set `abort` (the work ends at once, and says what it did not do)."""

    def handler(signum: int, frame: object) -> None:
        abort.set()  # an Event is safe to set from a signal handler

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a while, as the command that owns the process may.

    Reading a whole plan, journal or document allocates hundreds of thousands of container
    objects that all live until the command ends, and each collection re-scans them for
    nothing: half of loading a 5,000-step plan, a fifth of verifying its journal, and a big
    metadata check takes 1.7x the CPU with it on (bench/README.md). Libraries never touch
    the collector; a command that runs as long as a rollout never pauses it.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def gc_running() -> Iterator[None]:
    """The collector on for a while inside a paused command that turned long (`timeline --follow`)."""
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        if not was_enabled:
            gc.disable()


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (only __main__ calls sys.exit)."""
    from rollout.cli.registry import BOUNDED_COMMANDS, command_named, register_commands

    args = sys.argv[1:] if argv is None else argv
    # A bounded command reads, answers and exits: from start-up to the end, no collection
    # finds anything to free (the collector is switched back as it was before returning).
    with gc_paused() if command_named(args) in BOUNDED_COMMANDS else nullcontext():
        register_commands(args)
        return _dispatch(argv)


def _dispatch(argv: list[str] | None) -> int:
    """Run the app; every outcome and exception as an exit code."""
    try:
        # standalone mode lets typer report usage errors itself (exit 2) and turns
        # typer.Exit into SystemExit; everything of ours arrives as a RolloutError.
        app(args=argv, prog_name="rollout", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else int(ExitStatus.USAGE))
    except RolloutError as exc:
        terminal.error(exc.render() if isinstance(exc, PlanError) else str(exc))
        return int(exit_status_for(exc))
    except KeyboardInterrupt:
        terminal.error("interrupted")
        return int(ExitStatus.INTERRUPTED)
    except Exception as exc:  # a bug in rollout: never let it exit 1, which means "rolled back cleanly"
        import traceback

        terminal.error("".join(traceback.format_exception(exc)).rstrip())
        terminal.error(f"internal error: {type(exc).__name__}: {exc} (exit 5: evidence may be incomplete)")
        return int(exit_status_for(exc))
    return 0
