"""`rollout validate`, `rollout plan` and `rollout schema`: nothing here changes a target.

The plan model, loader and scheduler are imported inside the commands that use them:
building the pydantic models is most of start-up, and `rollout --help` needs none of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rollout.cli.app import VarOption, app, fail, parse_vars, terminal
from rollout.cli.junit import Case, write_junit
from rollout.errors import ExitStatus, PlanError, RolloutError

if TYPE_CHECKING:
    from rollout.engine.prepare import Schedule
    from rollout.model import Check


def _problems(exc: PlanError) -> list[PlanError]:
    from rollout.planfile import PlanInvalid

    return list(exc.problems) if isinstance(exc, PlanInvalid) else [exc]


def _as_dict(exc: PlanError) -> dict[str, Any]:
    return {
        "file": exc.file,
        "line": exc.line,
        "column": exc.column,
        "path": exc.path,
        "message": exc.message,
    }


@app.command(
    epilog="Examples:\n\n  rollout validate plans/*.yaml\n\n  rollout validate plan.yaml --json\n\n"
    "  rollout validate plan.yaml --junit validate.xml"
)
def validate(
    plans: Annotated[list[Path], typer.Argument(help="Plan files to check.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write JUnit XML to this file.")] = None,
    var: VarOption = None,
) -> None:
    """Lint and type-check plans: every environment of every plan (exit 0 valid, 2 not)."""
    from rollout.engine.prepare import validate_environments
    from rollout.planfile import load_plan

    overrides = parse_vars(var)
    results: list[dict[str, Any]] = []
    cases: list[Case] = []
    for path in plans:
        entry: dict[str, Any] = {"file": str(path), "valid": False, "errors": []}
        try:
            loaded = load_plan(path)
        except PlanError as exc:
            entry["errors"] = [_as_dict(p) for p in _problems(exc)]
            cases.append(Case(name="load", classname=str(path), failure=exc.render()))
            results.append(entry)
            continue
        problems = validate_environments(loaded, overrides)
        entry.update(
            name=loaded.plan.name,
            digest=loaded.digest,
            environments=list(loaded.plan.environments),
            steps=len(loaded.plan.steps),
            valid=not problems,
            errors=[_as_dict(p) for exc in problems for p in _problems(exc)],
        )
        failing = {p.message for p in problems}
        for env_name in loaded.plan.environments:
            bad = next((p for p in problems if f"'{env_name}'" in p.message), None)
            cases.append(
                Case(
                    name=f"environment {env_name}",
                    classname=str(path),
                    failure=bad.render() if bad else None,
                )
            )
        if problems and not any(c.failure for c in cases if c.classname == str(path)):
            cases.append(Case(name="templates", classname=str(path), failure="\n".join(sorted(failing))))
        results.append(entry)
    if junit is not None:
        write_junit(junit, "rollout validate", cases)
    if as_json:
        terminal.print(json.dumps({"valid": all(r["valid"] for r in results), "plans": results}, indent=2))
    else:
        for r in results:
            if r["valid"]:
                envs = ", ".join(r["environments"])
                terminal.print(
                    f"ok     {r['file']}: plan '{r['name']}', {r['steps']} steps, environments {envs}; "
                    f"digest {r['digest'][:12]}"
                )
            else:
                terminal.print(f"error  {r['file']}")
                for e in r["errors"]:
                    terminal.print(
                        "  "
                        + PlanError(
                            e["message"],
                            file=e["file"],
                            line=e["line"],
                            column=e["column"],
                            path=e["path"],
                        ).render()
                    )
        invalid = sum(1 for r in results if not r["valid"])
        if len(results) > 1 or invalid:
            terminal.print(f"{len(results) - invalid} valid, {invalid} invalid")
    raise typer.Exit(int(ExitStatus.SUCCESS if all(r["valid"] for r in results) else ExitStatus.USAGE))


def describe_check(check: Check) -> str:
    """One line saying what a check asks and what passes."""
    if check.command is not None:
        c = check.command
        extra = f", stdout ~ /{c.stdout}/" if c.stdout else ""
        return f"command `{c.run}` exits {c.exit_code}{extra}"
    if check.http is not None:
        h = check.http
        expect = [f"status {h.status}"] + [f"{k} == {json.dumps(v)}" for k, v in h.json_equals.items()]
        if h.body:
            expect.append(f"body ~ /{h.body}/")
        return f"http {h.method} {h.url} -> {', '.join(expect)}"
    if check.tcp is not None:
        return f"tcp connect {check.tcp.host}:{check.tcp.port}"
    m = check.metadata
    assert m is not None
    src = m.source
    where = src.file or src.host_file or src.command or src.url
    parts = [f"metadata {where}"]
    if m.schema_file:
        parts.append(f"schema {m.schema_file}")
    if m.unique:
        parts.append("unique " + ", ".join(m.unique))
    if m.references:
        parts.append("references " + ", ".join(f"{r.source} -> {r.target}" for r in m.references))
    if m.baseline is not None:
        base = m.baseline.file or m.baseline.host_file or m.baseline.command or m.baseline.url
        parts.append(
            f"budget vs {base} by {m.key}: max_changed {m.max_changed}, removals {'allowed' if m.allow_removed else 'refused'}"
        )
    if m.equals is not None:
        parts.append(f"read-back equals {m.equals.file or m.equals.host_file or m.equals.url or m.equals.command}")
    return "; ".join(parts)


def schedule_as_dict(schedule: Schedule) -> dict[str, Any]:
    """The schedule as data (for --json and for the run directory)."""
    from rollout.units import format_duration

    plan = schedule.loaded.plan
    strategy = plan.strategy
    return {
        "plan": plan.name,
        "digest": schedule.digest,
        "environment": schedule.env_name,
        "rehearsal": plan.environments[schedule.env_name].rehearsal,
        "strategy": {
            "waves": [str(w) for w in strategy.waves],
            "bake": format_duration(strategy.bake),
            "failure_budget": schedule.budget(),
            "concurrency": strategy.concurrency,
        },
        "skipped_waves": list(schedule.skipped_waves),
        "waves": [{"wave": w.index, "size": w.size, "hosts": list(w.hosts)} for w in schedule.waves],
        "hosts": {
            name: {
                "target": {
                    "connection": h.target.connection,
                    "address": h.target.address,
                    "port": h.target.port,
                    "user": h.target.user,
                },
                "prechecks": [{"name": c.label, "check": describe_check(c)} for c in h.prechecks],
                "guards": [
                    {
                        "name": g.label,
                        "check": describe_check(g),
                        "every": format_duration(g.every),
                        "fail_after": g.fail_after,
                    }
                    for g in h.guards
                ],
                "steps": [
                    {
                        "name": s.name,
                        "run": s.run,
                        "rollback": None if s.irreversible else s.rollback,
                        "irreversible": s.irreversible,
                        "timeout": format_duration(s.timeout),
                        "retries": s.retries,
                        "verify": [{"name": c.name, "check": describe_check(c)} for c in s.verify],
                    }
                    for s in h.steps
                ],
            }
            for name, h in schedule.hosts.items()
        },
    }


def _redact(text: str, secrets: frozenset[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


@app.command(
    "plan",
    epilog="Examples:\n\n  rollout plan plans/order-gateway-metadata.yaml --env demo\n\n"
    "  rollout plan plan.yaml --env production --var release=v3 --json",
)
def plan_command(
    plan: Annotated[Path, typer.Argument(help="The plan file.", show_default=False)],
    env: Annotated[str, typer.Option("--env", "-e", help="The environment to schedule.", show_default=False)],
    var: VarOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the schedule as JSON.")] = False,
    prechecks: Annotated[
        bool,
        typer.Option(
            "--prechecks", help="Also run the read-only pre-checks on every host, for real (exit 3 if any fails)."
        ),
    ] = False,
) -> None:
    """Dry run: the exact schedule a run would execute, rendered per host; changes nothing."""
    from rollout.engine.prepare import prepare_schedule
    from rollout.planfile import load_plan

    try:
        loaded = load_plan(plan)
        # secrets need not be set for a dry run: they are shown as *** anyway
        schedule = prepare_schedule(loaded, env, overrides=parse_vars(var), for_validation=True)
    except RolloutError as exc:
        fail(exc)
    data = schedule_as_dict(schedule)
    secrets = schedule.secret_values
    if as_json:
        terminal.print(_redact(json.dumps(data, indent=2), secrets))
        raise typer.Exit(0)
    p = loaded.plan
    envspec = p.environments[env]
    s = data["strategy"]
    lines = [
        f"plan {p.name}  digest {schedule.digest}",
        f"environment {env} ({envspec.connection}{', rehearsal' if envspec.rehearsal else ''}), {len(schedule.hosts)} hosts",
        f"strategy: waves {', '.join(s['waves'])}; bake {s['bake']}; failure budget {s['failure_budget']} "
        f"host(s); concurrency {s['concurrency'] or 'all hosts of a wave'}",
    ]
    if schedule.skipped_waves:
        lines.append(f"note: waves {', '.join(schedule.skipped_waves)} add no hosts here and are skipped")
    first = next(iter(data["hosts"].values()))
    lines.append("")
    lines.append("pre-checks (on every host; all must pass before anything changes):")
    lines += [f"  - {c['name']}: {c['check']}" for c in first["prechecks"]] or ["  (none)"]
    lines.append("guards (every host, from the first change until the last bake ends):")
    lines += [
        f"  - {g['name']}: {g['check']} every {g['every']}, trips after {g['fail_after']} failures"
        for g in first["guards"]
    ] or ["  (none)"]
    for wave in data["waves"]:
        lines.append("")
        lines.append(f"wave {wave['wave']} ({wave['size']}): {', '.join(wave['hosts'])}")
        for host in wave["hosts"]:
            h = data["hosts"][host]
            t = h["target"]
            where = (
                "local"
                if t["connection"] == "local"
                else f"ssh {t['user'] + '@' if t['user'] else ''}{t['address']}:{t['port']}"
            )
            lines.append(f"  {host} [{where}]")
            for i, step in enumerate(h["steps"], 1):
                lines.append(
                    f"    {i}. {step['name']} (timeout {step['timeout']}{', retries ' + str(step['retries']) if step['retries'] else ''})"
                )
                lines.append(f"       run:      {step['run']}")
                for v in step["verify"]:
                    lines.append(f"       verify:   {v['name'] + ': ' if v['name'] else ''}{v['check']}")
                lines.append(f"       rollback: {step['rollback'] if step['rollback'] else 'NONE (irreversible)'}")
        if p.strategy.bake:
            lines.append(f"  then bake {s['bake']} with guards green")
    irreversible = [st.name for st in p.steps if st.irreversible]
    lines.append("")
    lines.append(
        "irreversible steps: " + (", ".join(irreversible) if irreversible else "none (every step has a rollback)")
    )
    lines.append(f"not simulated: the {len(p.steps)} steps themselves (they change things); nothing was changed")
    terminal.print(_redact("\n".join(lines), secrets))
    if not prechecks:
        raise typer.Exit(0)
    raise typer.Exit(_run_prechecks(plan, env, parse_vars(var)))


def _run_prechecks(plan: Path, env: str, overrides: dict[str, str]) -> int:
    """Run the pre-checks for real (with real secrets), print each verdict; 0 all pass, 3 otherwise."""
    from rollout.cli.display import PlainDisplay
    from rollout.engine.apply import Engine
    from rollout.engine.events import Bus, Redactor
    from rollout.engine.prepare import prepare_schedule
    from rollout.planfile import load_plan

    try:
        schedule = prepare_schedule(load_plan(plan), env, overrides=overrides)
    except RolloutError as exc:
        fail(exc)
    terminal.print("")
    terminal.print("pre-checks, run for real (read-only):")
    engine = Engine(schedule, Bus(None, [PlainDisplay(terminal.out)], Redactor(schedule.secret_values)))
    failed = engine.run_prechecks()
    if failed:
        terminal.print(f"{len(failed)} pre-check(s) failed: a run would be refused (exit 3) and change nothing")
        return int(ExitStatus.REFUSED)
    terminal.print("every pre-check passed on every host")
    return int(ExitStatus.SUCCESS)


@app.command(epilog="Example:\n\n  rollout schema > plan.schema.json")
def schema() -> None:
    """Print the plan JSON Schema (for editors with yaml-language-server, and CI)."""
    from rollout.planfile import plan_json_schema

    terminal.print(json.dumps(plan_json_schema(), indent=2))
