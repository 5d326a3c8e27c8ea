"""One readable line per event, shared by the live plain output and `rollout timeline`.

Each event kind has its own small renderer in one table; a kind without one (a newer
event read by an older tool) falls back to its name and outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from rollout.event import EventKind


class Described(Protocol):
    """What a line is made of: an Event, or a journal Record (the same fields, no Event built for each line)."""

    @property
    def kind(self) -> str: ...
    @property
    def wave(self) -> int | None: ...
    @property
    def host(self) -> str | None: ...
    @property
    def step(self) -> str | None: ...
    @property
    def outcome(self) -> str | None: ...
    @property
    def data(self) -> Mapping[str, Any]: ...


# (the event, its data, "wave N host step: " or "") -> the line
Renderer = Callable[[Described, Mapping[str, Any], str], str]


def _short(text: Any, limit: int = 160) -> str:
    value = " ".join(str(text or "").split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _run_start(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    return (
        f"run {d.get('run_id')} started: plan {d.get('plan')} ({str(d.get('plan_digest'))[:12]}) "
        f"on {d.get('environment')}, {len(d.get('hosts', []))} hosts, {len(d.get('waves', []))} waves, "
        f"operator {d.get('operator')}"
    )


def _precheck(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    return f"{prefix}pre-check '{d.get('check')}' {event.outcome}: {_short(d.get('summary'))}"


def _prechecks_failed(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    failed = d.get("failed", [])
    return f"pre-checks FAILED on {len(failed)} check(s); nothing was changed"


def parity_fact_summary(fact: Mapping[str, Any]) -> str:
    """One parity fact of a `parity.facts` event: its distinct values (with their hosts when they disagree), errors."""
    values = fact.get("values") or {}
    errors = fact.get("errors") or {}
    by_value: dict[str, list[str]] = {}
    for host, value in values.items():
        by_value.setdefault(str(value), []).append(str(host))
    if len(by_value) == 1:
        shown = repr(next(iter(by_value)))
    else:
        shown = "; ".join(f"{v!r} ({', '.join(hosts)})" for v, hosts in by_value.items()) or "no value"
    if errors:
        shown += f"; not gathered on {', '.join(str(h) for h in errors)}: {_short(next(iter(errors.values())), 120)}"
    mode = fact.get("expect")
    return f"{shown} (expect {mode})" if mode and mode != "equal" else shown


def _parity_facts(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    facts = d.get("facts") or {}
    shown = "; ".join(f"{name} = {parity_fact_summary(fact)}" for name, fact in facts.items())
    return f"parity facts gathered ({len(facts)}): {_short(shown, 400)}"


def _guard_state(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    return f"{prefix}guard '{d.get('guard')}' {str(event.outcome).upper()} ({d.get('consecutive_failures')}/{d.get('fail_after')}): {_short(d.get('summary'))}"


def _guard_lagging(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    return (
        f"{prefix}guard '{d.get('guard')}' LAGGING: probes start {d.get('late_ms')} ms late"
        f" (every {d.get('every')}s; {d.get('reason')}, {d.get('skipped')} skipped)"
    )


def _guards_stop(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    return (
        f"guards stopped: {d.get('probes')} probes of {d.get('due')} due, {d.get('started_late')} started late,"
        f" start delay p99 {d.get('p99_start_delay_ms')} ms max {d.get('max_start_delay_ms')} ms,"
        f" {d.get('inconclusive')} inconclusive"
    )


def _step_intent(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    attempt = f" (attempt {d.get('attempt')})" if d.get("attempt", 1) != 1 else ""
    return f"{prefix}run{attempt}: {_short(d.get('command'))}"


def _result(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    verb = "rollback" if event.kind == EventKind.ROLLBACK_RESULT else "step"
    if event.outcome == "skipped":
        return f"{prefix}{verb} skipped: {d.get('summary')}"
    detail = f"exit {d.get('exit_code')} in {d.get('duration')}s"
    if event.outcome != "ok":
        tail = _short(d.get("stderr") or d.get("stdout"), 120)
        detail += f": {tail}" if tail else ""
    return f"{prefix}{verb} {event.outcome}, {detail}"


def _bake_extended(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    waiting = d.get("waiting_for", [])
    names = ", ".join(f"{w.get('host')} '{w.get('guard')}' ({w.get('state')})" for w in waiting[:5])
    more = f" (+{d.get('guards', 0) - 5} more)" if d.get("guards", 0) > 5 else ""
    where = f"wave {event.wave}: bake" if event.wave else "final verdict"
    return f"{where} held for up to {d.get('at_most')}: waiting for {names}{more} to be green"


def _rollback_start(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    plan = d.get("plan", {})
    return f"rollback started on {len(plan)} host(s): " + "; ".join(f"{h}: {', '.join(s)}" for h, s in plan.items())


def _rollback_end(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    return f"rollback {event.outcome}: {len(d.get('undone', []))} step(s) undone" + (
        f", {len(d.get('failed', []))} FAILED" if d.get("failed") else ""
    )


def _run_end(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    cause = d.get("cause") or {}
    why = f": {_short(cause.get('summary'), 200)}" if cause else ""
    return f"run ended: {str(event.outcome).upper()}{why}"


def _rehearsal_phase_end(event: Described, d: Mapping[str, Any], prefix: str) -> str:
    return f"REHEARSAL {d.get('phase')} phase {str(d.get('outcome')).upper()} in {d.get('seconds')}s"


RENDERERS: dict[str, Renderer] = {
    EventKind.RUN_START: _run_start,
    EventKind.PRECHECK: _precheck,
    EventKind.PRECHECKS_PASSED: lambda e, d, p: "pre-checks passed on every host",
    EventKind.PRECHECKS_FAILED: _prechecks_failed,
    EventKind.REHEARSAL_PHASE: lambda e, d, p: f"REHEARSAL {d.get('phase')} phase started",
    EventKind.REHEARSAL_PHASE_END: _rehearsal_phase_end,
    EventKind.PARITY_FACTS: _parity_facts,
    EventKind.GUARDS_START: lambda e, d, p: f"guards started: {', '.join(d.get('guards', []))}",
    EventKind.GUARD_STATE: _guard_state,
    EventKind.GUARD_LAGGING: _guard_lagging,
    EventKind.GUARD_CAUGHT_UP: lambda e, d, p: f"{p}guard '{d.get('guard')}' caught up ({d.get('late_ms')} ms late)",
    EventKind.GUARDS_STOP: _guards_stop,
    EventKind.WAVE_START: lambda e, d, p: f"wave {e.wave} ({d.get('size')}) started: {', '.join(d.get('hosts', []))}",
    EventKind.WAVE_END: lambda e, d, p: f"wave {e.wave} done",
    EventKind.STEP_INTENT: _step_intent,
    EventKind.PROCESS: lambda e, d, p: f"{p}{d.get('role')} command started as process group {d.get('pgid')}",
    EventKind.PROCESSES_ENDED: lambda e, d, p: f"{p}dead run's processes: {e.outcome}: {_short(d.get('summary'), 200)}",
    EventKind.STEP_RESULT: _result,
    EventKind.ROLLBACK_RESULT: _result,
    EventKind.VERIFY: lambda e, d, p: f"{p}verify '{d.get('check')}' {e.outcome}: {_short(d.get('summary'))}",
    EventKind.HOST_FAILED: lambda e, d, p: (
        f"{p}host failed ({e.outcome}, {d.get('failed_hosts')} of budget {d.get('budget')})"
    ),
    EventKind.BAKE_START: lambda e, d, p: f"wave {e.wave}: baking {d.get('bake')} with guards watching",
    EventKind.BAKE_EXTENDED: _bake_extended,
    EventKind.BAKE_END: lambda e, d, p: f"wave {e.wave}: bake {e.outcome}",
    EventKind.ABORT: lambda e, d, p: f"ABORT: {_short(d.get('cause', {}).get('summary'), 300)}",
    EventKind.ROLLBACK_START: _rollback_start,
    EventKind.ROLLBACK_INTENT: lambda e, d, p: f"{p}rollback: {_short(d.get('command'))}",
    EventKind.ROLLBACK_END: _rollback_end,
    EventKind.RECOVERY: lambda e, d, p: f"guards after rollback: {e.outcome}",
    EventKind.RECOVER_START: lambda e, d, p: f"recovery of run {d.get('run_id')} started by {d.get('operator')}",
    EventKind.IN_DOUBT: lambda e, d, p: f"{p}in doubt ({e.outcome}): {_short(d.get('summary'))}",
    EventKind.NOTIFY: lambda e, d, p: f"notification to {d.get('sink')}: {e.outcome} ({d.get('status')})",
    EventKind.RUN_END: _run_end,
}


def describe_event(event: Described) -> str:
    """What happened, in one line, without the timestamp (of an Event, or of the Record that holds one)."""
    # wave, host and step, those there are (a journal of thousands of lines asks for each)
    where = [f"wave {event.wave}"] if event.wave else []
    if event.host:
        where.append(event.host)
    if event.step:
        where.append(event.step)
    prefix = " ".join(where) + ": " if where else ""
    renderer = RENDERERS.get(event.kind)
    if renderer is None:
        return f"{prefix}{event.kind} {event.outcome or ''}".strip()
    return renderer(event, event.data, prefix)
