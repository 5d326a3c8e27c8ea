"""Plans before they run: load, validate, the dry run's schedule as data, the real pre-checks, the schema.

Nothing here changes a target: `prechecks` runs only the plan's read-only pre-checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.errors import PlanError, UsageError
from rollout.event import Event

if TYPE_CHECKING:
    from rollout.api.running import Prepared
    from rollout.engine.events import Sink
    from rollout.engine.prepare import Schedule
    from rollout.model import Check, Step
    from rollout.planfile import LoadedPlan


def load(plan: Path | str) -> LoadedPlan:
    """Load a plan file (with its includes) and validate its shape; PlanError names file:line:column."""
    from rollout.planfile import load_plan

    return load_plan(Path(plan))


def problems_of(exc: PlanError) -> list[PlanError]:
    """Every problem an error carries (a plan that fails validation has several)."""
    from rollout.planfile import PlanInvalid

    return list(exc.problems) if isinstance(exc, PlanInvalid) else [exc]


@dataclass(frozen=True)
class PlanCheck:
    """The verdict on one plan file: whether it loaded, and each environment's first problem."""

    file: Path
    loaded: LoadedPlan | None
    load_error: PlanError | None = None
    environment_problems: list[PlanError] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """No problem anywhere."""
        return self.load_error is None and not self.environment_problems

    @property
    def problems(self) -> list[PlanError]:
        """Every single problem found, each with its file:line:column."""
        if self.load_error is not None:
            return problems_of(self.load_error)
        return [p for exc in self.environment_problems for p in problems_of(exc)]

    def problem_in(self, env: str) -> PlanError | None:
        """The first problem found in environment `env`, if any."""
        return next((p for p in self.environment_problems if f"'{env}'" in p.message), None)


def validate(plan: Path | str, *, overrides: Mapping[str, str] | None = None) -> PlanCheck:
    """Load a plan and schedule every environment of it: every template renders, every reference resolves."""
    from rollout.engine.prepare import validate_environments
    from rollout.planfile import load_plan

    path = Path(plan)
    try:
        loaded = load_plan(path)
    except PlanError as exc:
        return PlanCheck(path, None, exc)
    return PlanCheck(path, loaded, None, validate_environments(loaded, overrides))


def schedule(
    plan: Path | str | LoadedPlan,
    env: str,
    *,
    overrides: Mapping[str, str] | None = None,
) -> Schedule:
    """What a run would execute on `env`, host by host, without secrets having to be set (dry run)."""
    from rollout.engine.prepare import prepare_schedule

    loaded = plan if not isinstance(plan, Path | str) else load(plan)
    return prepare_schedule(loaded, env, overrides=dict(overrides or {}), for_validation=True)


def describe_check(check: Check) -> str:
    """One line saying what a check asks and what passes (and as whom, through sudo)."""
    what = _describe_kind(check)
    return f"{what} (sudo as {check.become_user or 'root'})" if check.become else what


def _describe_kind(check: Check) -> str:
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
    return _describe_metadata(check)


def _describe_metadata(check: Check) -> str:
    """A metadata check: where the document comes from and what it must satisfy."""
    m = check.metadata
    assert m is not None
    src = m.source
    parts = [f"metadata {src.file or src.host_file or src.command or src.url}"]
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
        "hosts": {name: _host_as_dict(h) for name, h in schedule.hosts.items()},
    }


def _target_as_dict(target: Any) -> dict[str, Any]:
    """Where a host really is; for ssh, as resolved from the plan, the ssh config and defaults."""
    out: dict[str, Any] = {
        "connection": target.connection,
        "address": target.address,
        "port": target.port,
        "user": target.user,
    }
    if target.connection == "ssh":
        import getpass
        import os

        # the same defaults paramiko applies when connecting
        out.update(
            login=target.user or getpass.getuser(),
            identity_files=list(target.identity_files),
            identities_only=target.identities_only,
            known_hosts=target.known_hosts or os.path.expanduser("~/.ssh/known_hosts"),
            connect_timeout=target.connect_timeout,
            server_alive_interval=target.server_alive_interval,
            # how the connection gets there: jump hosts (first hop first), or a proxy command, or neither
            jumps=[_hop_as_dict(hop) for hop in target.jumps],
            proxy_command=target.proxy_command,
        )
    return out


def _hop_as_dict(hop: Any) -> dict[str, Any]:
    """One jump host: its name as the route lists it, and where it really is (the hops before it are listed already)."""
    out = {"name": hop.name, **_target_as_dict(hop)}
    del out["jumps"], out["proxy_command"]
    return out


def _host_as_dict(h: Any) -> dict[str, Any]:
    """One host of the schedule: where it is, and its pre-checks, guards and steps."""
    from rollout.units import format_duration

    return {
        "target": _target_as_dict(h.target),
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
                "upload": _upload_as_dict(s),
                "rollback": None if s.irreversible else s.rollback_command,
                "irreversible": s.irreversible,
                "timeout": format_duration(s.timeout),
                "retries": s.retries,
                "verify": [{"name": c.name, "check": describe_check(c)} for c in s.verify],
                # only when set: the pin of a plan without become stays what it was
                **({"become_user": s.become_user or "root"} if s.become else {}),
            }
            for s in h.steps
        ],
    }


def _upload_as_dict(step: Step) -> dict[str, Any] | None:
    """An upload step's file, as `rollout plan` shows it (the content is read when the step runs)."""
    if step.upload is None:
        return None
    return {
        "src": step.upload.src,
        "dest": step.upload.dest,
        "mode": f"{step.upload.mode:04o}",
        "owner": step.upload.owner,
        "template": step.upload.template,
    }


def prechecks(
    plan: Prepared | Path | str,
    env: str | None = None,
    *,
    overrides: Mapping[str, str] | None = None,
    on_event: Callable[[Event], None] | None = None,
    sinks: Sequence[Sink] = (),
) -> list[tuple[str, str, str]]:
    """Run the read-only pre-checks on every host for real (with real secrets): (host, check, why) per failure."""
    from rollout.api.running import Prepared, prepare
    from rollout.api.sinks import CallbackSink
    from rollout.engine.apply import Engine
    from rollout.engine.events import Bus, Redactor

    if not isinstance(plan, Prepared):
        if env is None:
            raise UsageError("prechecks: name the environment")
        plan = prepare(plan, env, overrides=overrides)
    schedule = plan.schedule
    every = list(sinks) + ([CallbackSink(on_event)] if on_event is not None else [])
    engine = Engine(schedule, Bus(None, every, Redactor(schedule.secret_values)))
    try:
        return engine.run_prechecks()
    finally:
        engine.close()


def json_schema() -> dict[str, Any]:
    """The plan JSON Schema (for editors with yaml-language-server, and CI)."""
    from rollout.planfile import plan_json_schema

    return plan_json_schema()
