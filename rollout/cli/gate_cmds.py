"""`rollout gate` and `rollout export`: the CI gate before production, and evidence bundles to carry to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rollout.cli.app import LockDirOption, StateDirOption, VarOption, app, fail, parse_vars, terminal
from rollout.errors import RolloutError

if TYPE_CHECKING:
    from rollout.api.gate import GateResult


@app.command(
    epilog="Examples:\n\n  rollout export last -o evidence.tar.gz\n\n"
    "  rollout export 20261123T223012Z-3f9a2c -o artefacts/rehearsal.tar.gz",
)
def export(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN", help="The run id (or a unique prefix, or 'last').", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The bundle to write (tar.gz).", show_default=False)],
    state_dir_opt: StateDirOption = None,
) -> None:
    """Pack a run's evidence into a bundle: journal, plan copy, run.json, rehearsal record, report, manifest (5 if its journal does not verify)."""
    from rollout.api.export import export as export_run

    try:
        done = export_run(run_id, out, state_dir=state_dir_opt)
    except RolloutError as exc:
        fail(exc)
    head = done.manifest["journal_head"]
    terminal.print(f"exported run {done.run_id} to {done.path}: {len(done.manifest['members'])} files")
    terminal.print(f"  plan digest {done.manifest['plan_digest']}, journal head {head['seq']}:{head['hash']}")


def _fact_line(fact: dict[str, Any]) -> str:
    """One parity fact: each environment's values (hosts named when several), and the drift."""
    shown = []
    for env, seen in fact["environments"].items():
        values = seen["values"]
        text = ", ".join(repr(v) if len(values) == 1 else f"{v!r} ({', '.join(h)})" for v, h in values.items())
        errors = "".join(f"; {host}: {why}" for host, why in seen["errors"].items())
        shown.append(f"{env} {text or 'no value'}{errors}")
    mark = f"DRIFT: {'; '.join(fact['reasons'])}" if fact["drift"] else "holds"
    return f"    fact {fact['name']} ({fact['expect']}): {' | '.join(shown)}: {mark}"


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def _evidence_lines(evidence: dict[str, Any]) -> list[str]:
    """A condition's evidence: one line of `key: value`s, then one line per parity fact."""
    facts = evidence.get("facts")
    plain = [f"{key}: {_shown(value)}" for key, value in evidence.items() if key != "facts" and value is not None]
    lines = [f"    {'; '.join(plain)}"] if plain else []
    if isinstance(facts, list):
        lines.extend(_fact_line(fact) for fact in facts)
    return lines


def _print_result(result: GateResult) -> None:
    terminal.print(f"gate for plan {result.plan} on {result.environment} (digest {result.digest})")
    for condition in result.conditions:
        terminal.print(f"  {'PASS' if condition.passed else 'FAIL'}  {condition.name:<19} {condition.summary}")
        for line in _evidence_lines(condition.evidence):
            terminal.print(line)
    terminal.print(f"  evidence: {len(result.believed)} runs believed, {len(result.refused)} refused")
    for refused in result.refused:
        terminal.print(f"    refused {refused.run_id or '-'} from {refused.source}: {refused.reason}")
    failed = [c.name for c in result.conditions if not c.passed]
    terminal.print("gate OPEN" if result.open else f"gate CLOSED: {', '.join(failed)}")


def _write_junit(path: Path, result: GateResult) -> None:
    from rollout.cli.junit import Case, write_junit

    cases = [Case(c.name, f"gate.{result.environment}", None if c.passed else c.summary) for c in result.conditions]
    write_junit(path, f"rollout gate {result.plan} on {result.environment}", cases)


@app.command(
    epilog="Examples:\n\n  rollout gate plans/upgrade.yaml --env production\n\n"
    "  rollout gate plans/upgrade.yaml --env production --evidence artefacts/ --max-age 3d "
    "--require-rollback-rehearsal --junit gate.xml\n\n"
    "Exit codes: 0 open, 3 closed, 2 usage or invalid plan.",
)
def gate(
    plan: Annotated[Path, typer.Argument(metavar="PLAN", help="The plan file.", show_default=False)],
    env: Annotated[str, typer.Option("--env", help="The environment to gate (production).", show_default=False)],
    var: VarOption = None,
    evidence: Annotated[
        list[Path] | None,
        typer.Option(
            "--evidence",
            help="A bundle (rollout export) or a directory searched for bundles and run directories (repeatable).",
            show_default=False,
        ),
    ] = None,
    max_age: Annotated[str, typer.Option("--max-age", help="How old the rehearsal may be: 7d, 12h, 30m, 1s.")] = "7d",
    require_rollback: Annotated[
        bool,
        typer.Option("--require-rollback-rehearsal", help="Also require a rehearsal that rolled back and re-applied."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as one JSON document.")] = False,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Write a JUnit XML file: one test case per condition.")
    ] = None,
    state_dir_opt: StateDirOption = None,
    lock_dir_opt: LockDirOption = None,
) -> None:
    """CI gate: open (0) only when the plan is valid, not frozen, rehearsed recently with this digest, and parity, lock and history allow it (3 closed)."""
    from rollout.api.gate import gate as judge
    from rollout.api.gate import parse_age

    try:
        result = judge(
            plan,
            env,
            overrides=parse_vars(var),
            evidence=evidence or (),
            max_age=parse_age(max_age),
            require_rollback=require_rollback,
            state_dir=state_dir_opt,
            lock_dir=lock_dir_opt,
        )
        if junit is not None:
            _write_junit(junit, result)
    except RolloutError as exc:
        fail(exc)
    if as_json:
        terminal.print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_result(result)
    raise typer.Exit(int(result.exit_status))
