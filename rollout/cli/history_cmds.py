"""`rollout runs`, `rollout timeline` and `rollout verify`: what has run, and whether its evidence holds."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rollout.cli.app import StateDirOption, app, fail, gc_running, terminal
from rollout.errors import ExitStatus, RolloutError

if TYPE_CHECKING:
    from rollout.api import Verification


@app.command(epilog="Examples:\n\n  rollout runs\n\n  rollout runs --json")
def runs(
    as_json: Annotated[bool, typer.Option("--json", help="Print the history as JSON.")] = False,
    state_dir_opt: StateDirOption = None,
) -> None:
    """History of runs: id, plan, environment, start, duration, outcome."""
    from rollout import api
    from rollout.units import format_duration

    entries = api.runs(state_dir=state_dir_opt)
    if as_json:
        terminal.print(json.dumps(entries, indent=2))
        return
    if not entries:
        terminal.print("no runs yet")
        return
    terminal.print(f"{'RUN':<26} {'PLAN':<28} {'ENV':<12} {'START (UTC)':<24} {'DURATION':>9}  OUTCOME")
    for e in entries:
        duration = format_duration(e["duration"]) if isinstance(e["duration"], int | float) else "-"
        terminal.print(
            f"{e['run']:<26} {e['plan']!s:<28} {e['env']!s:<12} {e['start']!s:<24} {duration:>9}  {e['outcome']}"
        )


TIMELINE_BLOCK = 500  # timeline lines per console write


def _flush(block: list[str]) -> None:
    if block:
        terminal.print("\n".join(block))
        block.clear()


def _timeline_line(record: Any) -> str:
    from rollout.api import describe_event

    ts = str(record.ts).replace("T", " ").replace("Z", "")
    return f"{ts}  {describe_event(record)}"


@app.command(epilog="Examples:\n\n  rollout timeline last\n\n  rollout timeline 20261123T223012Z --follow")
def timeline(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN", help="The run id (or a unique prefix, or 'last').", show_default=False)
    ],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing events as the run goes on, until it ends.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
    state_dir_opt: StateDirOption = None,
) -> None:
    """The journal as a readable timeline in UTC with milliseconds."""
    from rollout import api

    # Lines go out in blocks: one console write per line was most of the time a long
    # journal took. Following a live run, each line goes out as it comes.
    block: list[str] = []
    size = 1 if follow else TIMELINE_BLOCK
    try:
        # Following lasts as long as the run: the collector runs, as in any long command.
        with gc_running() if follow else nullcontext():
            records = api.timeline(run_id, state_dir=state_dir_opt, follow=follow)
            for record in records:
                block.append(json.dumps(record.to_dict()) if as_json else _timeline_line(record))
                if len(block) >= size:
                    terminal.print("\n".join(block))
                    block.clear()
    except RolloutError as exc:
        _flush(block)  # the lines read before the damage, as they always were
        fail(exc)
    _flush(block)
    if records.torn:
        terminal.error(
            f"warning: the last line of {records.run.journal} is torn (the writer died mid-line); it was not shown"
        )


def _print_verification(v: Verification, as_json: bool) -> None:
    if as_json:
        terminal.print(json.dumps(v.to_dict(), indent=2))
    elif v.ok:
        terminal.print(f"intact: {v.records} events, head {v.head}")
        terminal.print(
            f"  plan digest {v.plan_digest}" + ("" if v.plan_copy_matches is None else ", plan copy matches")
        )
        for source in v.anchors_checked:
            terminal.print(f"  agrees with the {source}")
        if v.signed_by is not None:
            terminal.print(f"  head signed by {v.signed_by} (an allowed signer)")
        if not v.complete:
            terminal.print("  note: the journal has no run.end: the run is in progress or died (see `rollout recover`)")
    else:
        where = f"line {v.first_bad_line}: " if v.first_bad_line else ""
        terminal.print(f"DAMAGED: {where}{v.reason or 'the stored plan no longer matches its digest'}")


@app.command(
    epilog="Examples:\n\n  rollout verify last\n\n  rollout verify 20261123T223012Z-3f9a2c --json\n\n"
    "  rollout verify 20261123T223012Z-3f9a2c --head 42:9f2c...e1 --allowed-signers ops.allowed_signers",
)
def verify(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN", help="The run id (or a unique prefix, or 'last').", show_default=False)
    ],
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            metavar="SEQ:HASH",
            help="A head printed at the end of the run (CI log, status update): the journal must contain it.",
            show_default=False,
        ),
    ] = None,
    allowed_signers: Annotated[
        Path | None,
        typer.Option(
            "--allowed-signers",
            help="Check the signed head (head.sig) against this OpenSSH allowed-signers file.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verification as JSON.")] = False,
    state_dir_opt: StateDirOption = None,
) -> None:
    """Check the journal's hash chain against every head kept outside it, and the plan digest (0 intact, 5 damaged)."""
    from rollout import api

    try:
        verification = api.verify(run_id, state_dir=state_dir_opt, head=head, allowed_signers=allowed_signers)
    except RolloutError as exc:
        fail(exc)
    _print_verification(verification, as_json)
    raise typer.Exit(int(ExitStatus.SUCCESS if verification.ok else ExitStatus.JOURNAL))
