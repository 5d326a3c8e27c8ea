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
    from rollout.api import PlanCheck, Schedule


def _as_dict(exc: PlanError) -> dict[str, Any]:
    return {
        "file": exc.file,
        "line": exc.line,
        "column": exc.column,
        "path": exc.path,
        "message": exc.message,
    }


def _validation_entry(checked: PlanCheck) -> dict[str, Any]:
    """One plan's verdict as data (for --json and the text listing)."""
    entry: dict[str, Any] = {
        "file": str(checked.file),
        "valid": checked.valid,
        "errors": [_as_dict(p) for p in checked.problems],
    }
    loaded = checked.loaded
    if loaded is not None:
        entry.update(
            name=loaded.plan.name,
            digest=loaded.digest,
            environments=list(loaded.plan.environments),
            steps=len(loaded.plan.steps),
        )
    return entry


def _validation_cases(checked: PlanCheck) -> list[Case]:
    """JUnit cases: loading, then one per environment (and the templates, for a problem tied to none)."""
    name = str(checked.file)
    if checked.loaded is None:
        assert checked.load_error is not None
        return [Case(name="load", classname=name, failure=checked.load_error.render())]
    cases = []
    for env_name in checked.loaded.plan.environments:
        bad = checked.problem_in(env_name)
        cases.append(Case(name=f"environment {env_name}", classname=name, failure=bad.render() if bad else None))
    if checked.environment_problems and not any(c.failure for c in cases):
        failing = sorted({p.message for p in checked.environment_problems})
        cases.append(Case(name="templates", classname=name, failure="\n".join(failing)))
    return cases


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
    from rollout import api

    overrides = parse_vars(var)
    results: list[dict[str, Any]] = []
    cases: list[Case] = []
    for path in plans:
        checked = api.validate(path, overrides=overrides)
        results.append(_validation_entry(checked))
        cases.extend(_validation_cases(checked))
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


def _redact(text: str, secrets: frozenset[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


@app.command(
    "plan",
    epilog="Examples:\n\n  rollout plan plans/order-gateway-metadata.yaml --env demo\n\n"
    "  rollout plan plan.yaml --env production --var release=v3 --json\n\n"
    "  rollout plan plan.yaml --env production --out plan.lock   (then: rollout run plan.lock)",
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
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Also write a lock file pinning this schedule; `rollout run LOCK` runs it only if it still renders the same.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Dry run: the exact schedule a run would execute, rendered per host, and its pin; changes nothing."""
    from rollout import api

    try:
        loaded = api.load(plan)
        # secrets need not be set for a dry run: they are shown as *** anyway
        schedule = api.schedule(loaded, env, overrides=parse_vars(var))
    except RolloutError as exc:
        fail(exc)
    pin = _pin_and_lock(schedule, parse_vars(var), out)
    data = api.schedule_as_dict(schedule)
    secrets = schedule.secret_values
    if as_json:
        terminal.print(_redact(json.dumps({**data, "pin": pin}, indent=2), secrets))
        raise typer.Exit(0)
    p = loaded.plan
    envspec = p.environments[env]
    s = data["strategy"]
    lines = [
        f"plan {p.name}  digest {schedule.digest}",
        f"environment {env} ({envspec.connection}{', rehearsal' if envspec.rehearsal else ''}), {len(schedule.hosts)} hosts",
        f"strategy: waves {', '.join(s['waves'])}; bake {s['bake']}; failure budget {s['failure_budget']} "
        f"host(s); concurrency {s['concurrency'] or f'all hosts of a wave, up to {api.DEFAULT_CONCURRENCY} at once'}",
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
            lines.append(f"  {host} [{_where(h['target'])}]")
            for i, step in enumerate(h["steps"], 1):
                sudo = f", sudo as {step['become_user']}" if step.get("become_user") else ""
                lines.append(
                    f"    {i}. {step['name']} (timeout {step['timeout']}{', retries ' + str(step['retries']) if step['retries'] else ''}{sudo})"
                )
                lines.append(_step_action(step))
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
    lines.append(f"pin: {pin}")
    if out is not None:
        lines.append(f"lock written to {out}: `rollout run {out}` runs exactly this, or refuses (exit 3)")
    terminal.print(_redact("\n".join(lines), secrets))
    if not prechecks:
        raise typer.Exit(0)
    raise typer.Exit(_run_prechecks(plan, env, parse_vars(var)))


def _where(t: dict[str, Any]) -> str:
    """Where a host really connects: `ssh user@hostname:port, key ..., known_hosts ...`, and via what."""
    if t["connection"] == "local":
        return "local"
    where = f"ssh {_login(t)}, {_credentials(t)}"
    if t.get("jumps"):
        hops = ", ".join(f"{j['name']} {_login(j)} ({_credentials(j)})" for j in t["jumps"])
        where += f"; via {hops}"
    elif t.get("proxy_command"):
        where += f"; via proxy command `{t['proxy_command']}`"
    return where


def _login(t: dict[str, Any]) -> str:
    address = f"[{t['address']}]" if ":" in t["address"] else t["address"]
    return f"{t['login']}@{address}:{t['port']}"


def _credentials(t: dict[str, Any]) -> str:
    keys = ", ".join(t["identity_files"]) or "agent or ~/.ssh keys"
    if t["identities_only"] and t["identity_files"]:
        keys += " only"
    return f"key {keys}, known_hosts {t['known_hosts']}"


def _pin_and_lock(schedule: Schedule, overrides: dict[str, str], out: Path | None) -> str:
    """The schedule's pin; with `out`, the lock file pinning it is written first (atomically)."""
    from rollout.api.pin import pin_of, write_lock

    if out is None:
        return pin_of(schedule, overrides)
    try:
        return str(write_lock(out, schedule, overrides)["pin"])
    except RolloutError as exc:
        fail(exc)


def _step_action(step: dict[str, Any]) -> str:
    """The `run:` line of a step, or its `upload:` line: src -> dest, mode, owner, template."""
    up = step.get("upload")
    if not up:
        return f"       run:      {step['run']}"
    extra = "".join(
        [f", owner {up['owner']}" if up["owner"] else "", ", rendered with the host's vars" if up["template"] else ""]
    )
    return f"       upload:   {up['src']} -> {up['dest']} (mode {up['mode']}{extra})"


def _run_prechecks(plan: Path, env: str, overrides: dict[str, str]) -> int:
    """Run the pre-checks for real (with real secrets), print each verdict; 0 all pass, 3 otherwise."""
    from rollout import api
    from rollout.cli.display import PlainDisplay

    try:
        prepared = api.prepare(plan, env, overrides=overrides)
    except RolloutError as exc:
        fail(exc)
    terminal.print("")
    terminal.print("pre-checks, run for real (read-only):")
    failed = api.prechecks(prepared, sinks=[PlainDisplay(terminal.out)])
    if failed:
        terminal.print(f"{len(failed)} pre-check(s) failed: a run would be refused (exit 3) and change nothing")
        return int(ExitStatus.REFUSED)
    terminal.print("every pre-check passed on every host")
    return int(ExitStatus.SUCCESS)


@app.command(epilog="Example:\n\n  rollout schema > plan.schema.json")
def schema() -> None:
    """Print the plan JSON Schema (for editors with yaml-language-server, and CI)."""
    from rollout import api

    terminal.print(json.dumps(api.json_schema(), indent=2))
