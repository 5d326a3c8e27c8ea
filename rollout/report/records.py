"""The incident report as data: the records a report is made of, and its JSON form.

Shaped like a postmortem so that it can be pasted into one: summary, impact window,
timeline, what failed first, rollback, evidence, follow-ups. `build_report`
(rollout.report.build) fills these from the journal alone; the renderers read only these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

NO_IMPACT = "no customer-visible impact detected by guards"


@dataclass(frozen=True)
class Summary:
    """Who ran what, where and when, and how it ended."""

    run_id: str
    plan: str
    plan_file: str
    plan_digest: str
    environment: str
    rehearsal: bool
    operator: str
    start: str
    end: str | None
    duration_seconds: float | None
    outcome: str
    hosts: list[str]
    hosts_reached: list[str]


@dataclass(frozen=True)
class Impact:
    """The window in which guards saw customer-visible failure, and how fast it was handled."""

    begins: str
    detected: str | None
    rollback_started: str | None
    mitigated: str | None
    ends: str | None
    detection_seconds: float | None
    to_rollback_seconds: float | None
    to_recovery_seconds: float | None
    duration_seconds: float | None
    hosts: list[str]
    checks: list[str]


@dataclass(frozen=True)
class TimelineEntry:
    """One significant event, or an impact marker (OUTAGE BEGINS, MITIGATED, ENDS)."""

    time: str
    offset: float
    phase: str
    text: str
    marker: bool = False


@dataclass(frozen=True)
class FirstFailure:
    """What failed first: where, the command or check, its exit code and the last lines of output."""

    kind: str
    summary: str
    host: str | None
    step: str | None
    check: str | None
    command: str | None
    exit_code: int | None
    output_tail: list[str]


@dataclass(frozen=True)
class RollbackAction:
    """One rollback command on one host, in the order it ran."""

    time: str
    host: str
    step: str
    outcome: str
    exit_code: int | None
    duration_seconds: float | None
    summary: str


@dataclass(frozen=True)
class Rollback:
    """What was undone, how it was verified, and what remains applied."""

    started: str | None
    finished: str | None
    outcome: str | None
    actions: list[RollbackAction]
    verification: str
    remaining: dict[str, list[str]]
    irreversible_left: dict[str, list[str]]
    failed: list[dict[str, Any]]


@dataclass(frozen=True)
class Evidence:
    """What identifies the run and how to check that its journal is intact."""

    plan_digest: str
    journal_head: str | None
    journal_records: int
    tool_version: str
    verify_command: str


@dataclass(frozen=True)
class Bar:
    """A step (or a rollback) on one host along time, for the swimlane picture."""

    host: str
    step: str
    kind: str  # step | rollback
    start: float
    end: float
    outcome: str


@dataclass(frozen=True)
class GuardSegment:
    """The worst guard state on one host over a stretch of time."""

    host: str
    state: str
    start: float
    end: float


@dataclass(frozen=True)
class IncidentReport:
    """Everything the report says, as data; rendered as Markdown, JSON and HTML."""

    summary: Summary
    impact: Impact | None
    timeline: list[TimelineEntry]
    first_failure: FirstFailure | None
    rollback: Rollback | None
    evidence: Evidence
    bars: list[Bar] = field(default_factory=list)
    guard_segments: list[GuardSegment] = field(default_factory=list)
    impact_window: tuple[float, float] | None = None
    span_seconds: float = 0.0
    # a --rehearse-rollback run's phases, in order: {"phase", "outcome", "seconds"}
    rehearsal: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[str, Any] | None = None  # the `parity.facts` event's facts, as journaled

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


def report_from_dict(data: Mapping[str, Any]) -> IncidentReport:
    """The inverse of IncidentReport.to_dict (for tools reading the JSON report)."""
    impact = data.get("impact")
    ff = data.get("first_failure")
    rb = data.get("rollback")
    window = data.get("impact_window")
    return IncidentReport(
        summary=Summary(**data["summary"]),
        impact=Impact(**impact) if impact else None,
        timeline=[TimelineEntry(**e) for e in data["timeline"]],
        first_failure=FirstFailure(**ff) if ff else None,
        rollback=Rollback(**{**rb, "actions": [RollbackAction(**a) for a in rb["actions"]]}) if rb else None,
        evidence=Evidence(**data["evidence"]),
        bars=[Bar(**b) for b in data.get("bars", [])],
        guard_segments=[GuardSegment(**s) for s in data.get("guard_segments", [])],
        impact_window=(float(window[0]), float(window[1])) if window else None,
        span_seconds=float(data.get("span_seconds", 0.0)),
        rehearsal=[dict(p) for p in data.get("rehearsal", [])],
        parity=data.get("parity"),
    )


def render_json(report: IncidentReport) -> str:
    """The report as a JSON document (for dashboards and tickets)."""
    return json.dumps(report.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
