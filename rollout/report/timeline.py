"""One readable line per event, shared by the live plain output and `rollout timeline`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollout.event import Event, EventKind


def _short(text: Any, limit: int = 160) -> str:
    value = " ".join(str(text or "").split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def describe_event(event: Event) -> str:
    """What happened, in one line, without the timestamp."""
    k = event.kind
    d: Mapping[str, Any] = event.data
    where = " ".join(x for x in (f"wave {event.wave}" if event.wave else "", event.host or "", event.step or "") if x)
    prefix = f"{where}: " if where else ""
    if k == EventKind.RUN_START:
        return (
            f"run {d.get('run_id')} started: plan {d.get('plan')} ({str(d.get('plan_digest'))[:12]}) "
            f"on {d.get('environment')}, {len(d.get('hosts', []))} hosts, {len(d.get('waves', []))} waves, "
            f"operator {d.get('operator')}"
        )
    if k == EventKind.PRECHECK:
        return f"{prefix}pre-check '{d.get('check')}' {event.outcome}: {_short(d.get('summary'))}"
    if k == EventKind.PRECHECKS_PASSED:
        return "pre-checks passed on every host"
    if k == EventKind.PRECHECKS_FAILED:
        failed = d.get("failed", [])
        return f"pre-checks FAILED on {len(failed)} check(s); nothing was changed"
    if k == EventKind.GUARDS_START:
        return f"guards started: {', '.join(d.get('guards', []))}"
    if k == EventKind.GUARD_STATE:
        return f"{prefix}guard '{d.get('guard')}' {str(event.outcome).upper()} ({d.get('consecutive_failures')}/{d.get('fail_after')}): {_short(d.get('summary'))}"
    if k == EventKind.WAVE_START:
        return f"wave {event.wave} ({d.get('size')}) started: {', '.join(d.get('hosts', []))}"
    if k == EventKind.WAVE_END:
        return f"wave {event.wave} done"
    if k == EventKind.STEP_INTENT:
        attempt = f" (attempt {d.get('attempt')})" if d.get("attempt", 1) != 1 else ""
        return f"{prefix}run{attempt}: {_short(d.get('command'))}"
    if k == EventKind.PROCESS:
        return f"{prefix}{d.get('role')} command started as process group {d.get('pgid')}"
    if k == EventKind.PROCESSES_ENDED:
        return f"{prefix}dead run's processes: {event.outcome}: {_short(d.get('summary'), 200)}"
    if k in (EventKind.STEP_RESULT, EventKind.ROLLBACK_RESULT):
        verb = "rollback" if k == EventKind.ROLLBACK_RESULT else "step"
        if event.outcome == "skipped":
            return f"{prefix}{verb} skipped: {d.get('summary')}"
        detail = f"exit {d.get('exit_code')} in {d.get('duration')}s"
        if event.outcome != "ok":
            tail = _short(d.get("stderr") or d.get("stdout"), 120)
            detail += f": {tail}" if tail else ""
        return f"{prefix}{verb} {event.outcome}, {detail}"
    if k == EventKind.VERIFY:
        return f"{prefix}verify '{d.get('check')}' {event.outcome}: {_short(d.get('summary'))}"
    if k == EventKind.HOST_FAILED:
        return f"{prefix}host failed ({event.outcome}, {d.get('failed_hosts')} of budget {d.get('budget')})"
    if k == EventKind.BAKE_START:
        return f"wave {event.wave}: baking {d.get('bake')} with guards watching"
    if k == EventKind.BAKE_EXTENDED:
        waiting = d.get("waiting_for", [])
        names = ", ".join(f"{w.get('host')} '{w.get('guard')}' ({w.get('state')})" for w in waiting[:5])
        more = f" (+{d.get('guards', 0) - 5} more)" if d.get("guards", 0) > 5 else ""
        where = f"wave {event.wave}: bake" if event.wave else "final verdict"
        return f"{where} held for up to {d.get('at_most')}: waiting for {names}{more} to be green"
    if k == EventKind.BAKE_END:
        return f"wave {event.wave}: bake {event.outcome}"
    if k == EventKind.ABORT:
        return f"ABORT: {_short(d.get('cause', {}).get('summary'), 300)}"
    if k == EventKind.ROLLBACK_START:
        plan = d.get("plan", {})
        return f"rollback started on {len(plan)} host(s): " + "; ".join(f"{h}: {', '.join(s)}" for h, s in plan.items())
    if k == EventKind.ROLLBACK_INTENT:
        return f"{prefix}rollback: {_short(d.get('command'))}"
    if k == EventKind.ROLLBACK_END:
        return f"rollback {event.outcome}: {len(d.get('undone', []))} step(s) undone" + (
            f", {len(d.get('failed', []))} FAILED" if d.get("failed") else ""
        )
    if k == EventKind.RECOVERY:
        return f"guards after rollback: {event.outcome}"
    if k == EventKind.RECOVER_START:
        return f"recovery of run {d.get('run_id')} started by {d.get('operator')}"
    if k == EventKind.IN_DOUBT:
        return f"{prefix}in doubt ({event.outcome}): {_short(d.get('summary'))}"
    if k == EventKind.NOTIFY:
        return f"notification to {d.get('sink')}: {event.outcome} ({d.get('status')})"
    if k == EventKind.RUN_END:
        cause = d.get("cause") or {}
        why = f": {_short(cause.get('summary'), 200)}" if cause else ""
        return f"run ended: {str(event.outcome).upper()}{why}"
    return f"{prefix}{k} {event.outcome or ''}".strip()
