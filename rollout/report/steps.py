"""Each step on each host, as the journal tells it: what CI test reports are made of.

A pure function of the journal records. A step's failure sticks: a step that failed (its
command, its verification, or its rollback) is reported failed even after a rollback put
its host back; a step never started on a host is "not_started"; a guard trip is a case
of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollout.event import EventKind
from rollout.journal import Record
from rollout.report.timeline import describe_event

# the state of a step on a host after the last line about it
NOT_STARTED = "not_started"
APPLIED = "applied"
ROLLED_BACK = "rolled_back"
FAILED = "failed"
IN_DOUBT = "in_doubt"


@dataclass(frozen=True)
class StepOnHost:
    """One step on one host: its last state, the failure that sticks to it (if any), its command time."""

    host: str
    step: str
    state: str
    failure: str | None
    seconds: float


@dataclass(frozen=True)
class GuardTrip:
    """A guard that tripped on a host, with its verdict's summary."""

    host: str
    guard: str
    summary: str


def steps_on_hosts(records: Sequence[Record], hosts: Sequence[str], steps: Sequence[str]) -> list[StepOnHost]:
    """Per host (in order) and step (in plan order), what the journal says happened."""
    state: dict[tuple[str, str], str] = {}
    failure: dict[tuple[str, str], str] = {}
    seconds: dict[tuple[str, str], float] = {}
    causes = _causes(records)
    for r in records:
        if r.host is None or r.step is None:
            continue
        key = (r.host, r.step)
        if r.kind == EventKind.STEP_INTENT:
            state[key] = IN_DOUBT
        elif r.kind == EventKind.STEP_RESULT:
            seconds[key] = seconds.get(key, 0.0) + float(r.data.get("duration") or 0.0)
            state[key] = _after_result(r)
            if r.outcome not in ("ok", "aborted", "not_started"):
                failure.setdefault(key, causes.get(key) or describe_event(r))
            elif r.outcome == "not_started":
                failure.setdefault(key, causes.get(key) or str(r.data.get("error") or "host not reached"))
        elif r.kind == EventKind.VERIFY and r.outcome != "ok":
            state[key] = FAILED
            failure.setdefault(key, causes.get(key) or describe_event(r))
        elif r.kind == EventKind.ROLLBACK_RESULT:
            if r.outcome == "ok":
                state[key] = ROLLED_BACK
            elif r.outcome != "skipped":
                failure.setdefault(key, f"rollback {r.outcome}: {describe_event(r)}")
    return [
        StepOnHost(
            host, step, state.get((host, step), NOT_STARTED), failure.get((host, step)), seconds.get((host, step), 0.0)
        )
        for host in hosts
        for step in steps
    ]


def _after_result(r: Record) -> str:
    if r.outcome == "ok":
        return APPLIED
    if r.outcome == "not_started":
        return NOT_STARTED
    return FAILED


def _causes(records: Sequence[Record]) -> dict[tuple[str, str], str]:
    """The summary of each cause naming a host and step (a failed host, the abort, a run's end)."""
    out: dict[tuple[str, str], str] = {}
    for r in records:
        if r.kind not in (EventKind.HOST_FAILED, EventKind.ABORT, EventKind.RUN_END):
            continue
        cause: Mapping[str, Any] = r.data.get("cause") or {}
        detail: Mapping[str, Any] = cause.get("detail") or {}
        if cause.get("kind") == "budget" and isinstance(detail.get("last"), Mapping):
            cause = detail["last"]
        host, step = cause.get("host"), cause.get("step")
        if host and step and cause.get("kind") in ("step", "verify", "connect"):
            out.setdefault((str(host), str(step)), str(cause.get("summary", "")))
    return out


def guard_trips(records: Sequence[Record]) -> list[GuardTrip]:
    """Every guard trip in the journal, in order."""
    return [
        GuardTrip(str(r.host), str(r.data.get("guard")), str(r.data.get("summary", "")))
        for r in records
        if r.kind == EventKind.GUARD_STATE and r.outcome == "tripped" and r.host
    ]
