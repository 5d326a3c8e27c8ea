"""`rollout parity`: gather the plan's parity facts on two or more environments and show where they drift.

Read-only: it asks hosts questions and never changes anything. Exit 0 when every fact
matches, 3 on drift or a fact that could not be gathered, 2 on usage or an invalid plan,
130 when interrupted.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rollout.cli.app import VarOption, abort_on_interrupt, app, fail, parse_vars, terminal
from rollout.errors import ExitStatus, RolloutError

if TYPE_CHECKING:
    from rich.table import Table

    from rollout.api import ParityReport

MAX_CELL = 80


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _cell(env: str, fact: dict[str, Any]) -> str:
    """One environment's distinct values (hosts named when they disagree), then its errors."""
    shown = fact["environments"].get(env, {"values": {}, "errors": {}})
    values: dict[str, list[str]] = shown["values"]
    if len(values) == 1:
        lines = [_clip(next(iter(values)))]
    else:
        lines = [f"{_clip(v)} ({', '.join(hosts)})" for v, hosts in values.items()]
    lines += [f"✗ {host}: {_clip(why)}" for host, why in shown["errors"].items()]
    return "\n".join(lines) or "-"


def _table(data: dict[str, Any]) -> Table:
    from rich.table import Table
    from rich.text import Text

    envs: list[str] = data["environments"]
    table = Table(header_style="bold", show_lines=True)
    table.add_column("fact")
    table.add_column("expect")
    for env in envs:
        table.add_column(env)
    table.add_column("verdict")
    for fact in data["facts"]:
        style = "bold red" if fact["drift"] else None
        expect = fact["expect"] if fact["expect"] != "template" else f"template {fact['template']}"
        if fact["drift"]:
            verdict = Text("DRIFT", style="bold red")
        else:
            verdict = Text("shown" if fact["expect"] == "differ" else "match", style="green")
        table.add_row(
            Text(fact["name"], style=style or ""),
            expect,
            *(Text(_cell(env, fact), style=style or "") for env in envs),
            verdict,
        )
    return table


def _print_report(report: ParityReport) -> None:
    data = report.to_dict()
    terminal.print(
        f"parity of {data['plan']['name']} ({data['plan']['digest'][:12]}): {', '.join(data['environments'])}"
    )
    if not data["facts"]:
        terminal.print("the plan declares no parity facts: nothing to compare")
        return
    terminal.out.print(_table(data))
    drifting = [f for f in data["facts"] if f["drift"]]
    if not drifting:
        terminal.print(f"every fact matches ({len(data['facts'])})")
        return
    terminal.print(f"{len(drifting)} of {len(data['facts'])} fact(s) drift:")
    for fact in drifting:
        for reason in fact["reasons"]:
            terminal.print(f"  {fact['name']}: {reason}")


@app.command(
    epilog="Examples:\n\n  rollout parity plan.yaml --env demo --env production\n\n"
    "  rollout parity plan.yaml --env demo --env production --json"
)
def parity(
    plan: Annotated[Path, typer.Argument(help="The plan file.", show_default=False)],
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="An environment to compare (at least two; repeatable).", show_default=False),
    ] = None,
    var: VarOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Gather parity facts on each environment (read-only) and compare (exit 0 match, 3 drift, 2 usage)."""
    from rollout import api

    abort = threading.Event()
    try:
        with abort_on_interrupt(abort):
            report = api.check_parity(plan, list(env or []), overrides=parse_vars(var), abort=abort)
    except RolloutError as exc:
        fail(exc)
    if as_json:
        terminal.print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
    if abort.is_set():
        terminal.error("interrupted: what was not gathered by then is listed as an error")
        raise typer.Exit(int(ExitStatus.INTERRUPTED))
    raise typer.Exit(int(ExitStatus.REFUSED) if report.drift else int(ExitStatus.SUCCESS))
