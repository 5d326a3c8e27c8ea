"""`rollout trust ENV --plan PLAN`: show the host keys an environment's ssh hosts offer, record the confirmed new ones.

Keys are fetched without logging in. New keys are appended to the known_hosts file the plan
uses only after confirmation (a prompt on a terminal, or --yes); a changed key is never
replaced. Exit 0 when every key is known (or every new one was added), 3 when a key
changed, a host was unreachable or new keys were not confirmed, 2 on usage or an invalid
plan, 130 when interrupted (nothing written).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rollout.cli.app import VarOption, abort_on_interrupt, app, fail, parse_vars, terminal
from rollout.errors import ExitStatus, RolloutError

if TYPE_CHECKING:
    from rollout.api.trust import TrustRow, TrustScan

SHOWN_STATE = {"known": "known", "new": "NEW", "changed": "CHANGED", "unreachable": "unreachable", "local": "local"}


def _state_cell(row: TrustRow) -> str:
    shown = SHOWN_STATE[row.state]
    return f"{shown} ({row.reason})" if row.reason else shown


def _print_table(result: TrustScan) -> None:
    """Plain aligned columns: a fingerprint is never wrapped, so it can be compared and copied."""
    header = ("host", "endpoint", "key type", "fingerprint", "state")
    cells = [
        (row.host, row.endpoint or "-", row.key_type or "-", row.fingerprint or "-", _state_cell(row))
        for row in result.rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header) - 1)]
    for line in [header, *cells]:
        terminal.print("  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]).rstrip())


def _print_changed(result: TrustScan, plan: Path) -> None:
    for row in result.having("changed"):
        terminal.error(
            f"CHANGED host key of {row.host} ({row.endpoint}): {row.known_hosts} has {row.known_key_type} "
            f"{row.known_fingerprint}, the server offers {row.key_type} {row.fingerprint}. This may be an attack; "
            f"the recorded key was kept. If the change is expected, verify the new key out of band, then: "
            f"{row.remove_command} && rollout trust {result.environment} --plan {plan}"
        )


def _confirmed(result: TrustScan, yes: bool, as_json: bool) -> bool:
    """Whether the operator agreed to record the new keys: --yes, or a yes at the prompt on a terminal."""
    to_load = result.to_load()
    count = sum(len(lines) for lines in to_load.values())
    if yes:
        return True
    if as_json or not sys.stdin.isatty():
        terminal.error(
            f"refusing to add {count} new host key(s) without confirmation: "
            "verify the fingerprints out of band, then pass --yes"
        )
        return False
    files = ", ".join(to_load)
    if typer.confirm(f"Add {count} new host key(s) to {files}?", default=False):
        return True
    terminal.error("not confirmed: no key was added")
    return False


def _exit_status(result: TrustScan, confirmed: bool) -> ExitStatus:
    if result.having("changed") or result.having("unreachable"):
        return ExitStatus.REFUSED
    if result.having("new") and not confirmed:
        return ExitStatus.REFUSED
    return ExitStatus.SUCCESS


def _summary(result: TrustScan, added: dict[str, list[str]], as_json: bool) -> None:
    """What was done, on stdout (stderr under --json, whose stdout is the document); problems on stderr."""
    say = terminal.error if as_json else terminal.print
    for path, lines in added.items():
        say(f"added {len(lines)} host key(s) to {path}")
    if not result.having("new") and not result.having("changed") and not result.having("unreachable"):
        ssh = [row for row in result.rows if row.state != "local"]
        say("nothing to add: every host key is known" if ssh else "no ssh hosts: nothing to add")
    for row in result.having("unreachable"):
        terminal.error(f"{row.host} ({row.endpoint}) unreachable: {row.reason}")


@app.command(
    epilog="Examples:\n\n  rollout trust production --plan plan.yaml\n\n"
    "  rollout trust production --plan plan.yaml --yes   (after checking the fingerprints out of band)\n\n"
    "  rollout trust production --plan plan.yaml --json"
)
def trust(
    env: Annotated[str, typer.Argument(help="The environment whose ssh hosts to check.", show_default=False)],
    plan: Annotated[Path, typer.Option("--plan", "-p", help="The plan file.", show_default=False)],
    var: VarOption = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Add new keys without asking (required off a terminal and with --json).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hosts and their keys as JSON.")] = False,
    timeout: Annotated[str, typer.Option("--timeout", help="Overall deadline for fetching every host's key.")] = "60s",
) -> None:
    """Show each ssh host's key fingerprint; record new keys after confirmation (exit 0 all known, 3 not)."""
    from rollout.api import trust as api_trust
    from rollout.units import parse_duration

    try:
        deadline = parse_duration(timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--timeout") from None
    abort = threading.Event()
    try:
        with abort_on_interrupt(abort):
            result = api_trust.scan(plan, env, overrides=parse_vars(var), abort=abort, deadline=deadline)
    except RolloutError as exc:
        fail(exc)
    if result.interrupted:
        terminal.error("interrupted: nothing was written")
        raise typer.Exit(int(ExitStatus.INTERRUPTED))
    if not as_json:
        _print_table(result)
    _print_changed(result, plan)
    confirmed = bool(result.having("new")) and _confirmed(result, yes, as_json)
    added: dict[str, list[str]] = {}
    if confirmed:
        try:
            added = api_trust.record(result)
        except RolloutError as exc:
            fail(exc)
    _summary(result, added, as_json)
    status = _exit_status(result, confirmed)
    if as_json:
        document = {
            "plan": result.plan,
            "environment": result.environment,
            "hosts": [row.to_dict() for row in result.rows],
            "added": added,
            "exit_status": int(status),
        }
        terminal.print(json.dumps(document, indent=2))
    raise typer.Exit(int(status))
