"""The incident report: one data model built from the journal, rendered as Markdown or JSON.

Shaped like a postmortem so that it can be pasted into one: summary, impact window,
timeline, what failed first, rollback, evidence, follow-ups. `build_report` is a pure
function of the journal records: every time comes from the journal, never from the clock,
so the same journal always gives the same report. Secrets were redacted before the events
reached the journal; this module must never read anything but the journal.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rollout.atomic import write_atomic
from rollout.errors import JournalError
from rollout.event import EventKind, Outcome
from rollout.journal import Record, final_run_end, read_journal
from rollout.report.timeline import describe_event
from rollout.runstore import RunDir

NO_IMPACT = "no customer-visible impact detected by guards"
OUTPUT_TAIL_LINES = 10
FOLLOW_UP_ROWS = 3
_BAD_GUARD_STATES = ("failing", "tripped")


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

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


# --- building -------------------------------------------------------------------------


def _parse_ts(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _clock(ts: str) -> str:
    """`2026-11-23T22:47:56.308Z` -> `22:47:56.308`."""
    return ts[11:23]


def _seconds(a: str | None, b: str | None) -> float | None:
    if a is None or b is None:
        return None
    return round((_parse_ts(b) - _parse_ts(a)).total_seconds(), 3)


def _tail(text: Any, lines: int = OUTPUT_TAIL_LINES) -> list[str]:
    return [line.rstrip() for line in str(text or "").strip("\n").splitlines()[-lines:]]


def _first(records: Sequence[Record], kind: str, outcome: str | None = None) -> Record | None:
    return next((r for r in records if r.kind == kind and (outcome is None or r.outcome == outcome)), None)


def _last(records: Sequence[Record], kind: str) -> Record | None:
    return next((r for r in reversed(records) if r.kind == kind), None)


def _summary(records: Sequence[Record], run_id: str) -> Summary:
    start = records[0]
    d: Mapping[str, Any] = start.data if start.kind == EventKind.RUN_START else {}
    end = final_run_end(records)  # a recover after rollback_failed ends the run a second time
    reached = list(dict.fromkeys(r.host for r in records if r.kind == EventKind.STEP_INTENT and r.host))
    return Summary(
        run_id=str(d.get("run_id") or run_id),
        plan=str(d.get("plan", "?")),
        plan_file=str(d.get("plan_file", "?")),
        plan_digest=str(d.get("plan_digest", "?")),
        environment=str(d.get("environment", "?")),
        rehearsal=bool(d.get("rehearsal", False)),
        operator=str(d.get("operator", "?")),
        start=start.ts,
        end=end.ts if end else None,
        duration_seconds=_seconds(start.ts, end.ts) if end else None,
        outcome=str(end.outcome) if end else "unfinished (no run.end: in progress or died; see `rollout recover`)",
        hosts=[str(h) for h in d.get("hosts", [])],
        hosts_reached=reached,
    )


def _impact(records: Sequence[Record]) -> tuple[Impact | None, dict[int, str]]:
    bad: set[tuple[str, str]] = set()
    begins: Record | None = None
    emptied: Record | None = None
    hosts: dict[str, None] = {}
    checks: dict[str, None] = {}
    for r in records:
        if r.kind != EventKind.GUARD_STATE or r.host is None:
            continue
        key = (r.host, str(r.data.get("guard")))
        if r.outcome in _BAD_GUARD_STATES:
            if begins is None:
                begins = r
            bad.add(key)
            hosts[key[0]] = None
            checks[key[1]] = None
            emptied = None
        elif r.outcome == "green" and key in bad:
            bad.discard(key)
            if not bad:
                emptied = r
    if begins is None:
        return None, {}
    after = [r for r in records if r.seq > begins.seq]
    tripped = _first(after, EventKind.GUARD_STATE, "tripped") if begins.outcome != "tripped" else begins
    detected = tripped or _first(after, EventKind.ABORT)
    rb_start = _first(after, EventKind.ROLLBACK_START)
    rb_end = _last(after, EventKind.ROLLBACK_END)
    recovery = _first(after, EventKind.RECOVERY, "green")
    ends = emptied or recovery
    markers = {begins.seq: "OUTAGE BEGINS: first failing guard probe"}
    if rb_end is not None:
        markers[rb_end.seq] = "MITIGATED: rollback finished"
    if ends is not None:
        markers[ends.seq] = "ENDS: guards green again"
    impact = Impact(
        begins=begins.ts,
        detected=detected.ts if detected else None,
        rollback_started=rb_start.ts if rb_start else None,
        mitigated=rb_end.ts if rb_end else None,
        ends=ends.ts if ends else None,
        detection_seconds=_seconds(begins.ts, detected.ts if detected else None),
        to_rollback_seconds=_seconds(begins.ts, rb_start.ts if rb_start else None),
        to_recovery_seconds=_seconds(begins.ts, ends.ts if ends else None),
        duration_seconds=_seconds(begins.ts, ends.ts if ends else None),
        hosts=list(hosts),
        checks=list(checks),
    )
    return impact, markers


def _significant(record: Record) -> bool:
    if record.kind == EventKind.PRECHECK:
        return record.outcome != "ok"  # passing pre-checks are summed up by prechecks.passed
    if record.kind == EventKind.NOTIFY:
        return record.outcome != "delivered"
    return True


def _timeline(records: Sequence[Record], markers: Mapping[int, str]) -> list[TimelineEntry]:
    t0 = _parse_ts(records[0].ts)
    phase = "pre-checks"
    entries: list[TimelineEntry] = []
    for r in records:
        if r.kind in (EventKind.WAVE_START, EventKind.GUARDS_START):
            phase = "waves"
        elif r.kind == EventKind.BAKE_START:
            phase = "bake"
        elif r.kind == EventKind.ABORT:
            phase = "abort"
        elif r.kind in (EventKind.ROLLBACK_START, EventKind.RECOVER_START):
            phase = "rollback"
        elif r.kind == EventKind.RECOVERY:
            phase = "recovery"
        offset = round((_parse_ts(r.ts) - t0).total_seconds(), 3)
        if _significant(r):
            entries.append(TimelineEntry(r.ts, offset, phase, describe_event(r.event)))
        if r.seq in markers:
            entries.append(TimelineEntry(r.ts, offset, phase, markers[r.seq], marker=True))
        if r.kind == EventKind.ROLLBACK_END:
            phase = "recovery"
        elif r.kind == EventKind.BAKE_END and phase == "bake":
            phase = "waves"
    return entries


def _first_failure(records: Sequence[Record]) -> FirstFailure | None:
    source = _first(records, EventKind.ABORT) or _first(records, EventKind.HOST_FAILED)
    if source is None:
        end = _first(records, EventKind.RUN_END)
        if end is None or end.outcome == Outcome.SUCCEEDED or not end.data.get("cause"):
            return None
        source = end
    cause: Mapping[str, Any] = source.data.get("cause") or {}
    detail: Mapping[str, Any] = cause.get("detail") or {}
    if cause.get("kind") == "budget" and isinstance(detail.get("last"), Mapping):
        cause = {**detail["last"], "summary": cause.get("summary")}
        detail = cause.get("detail") or {}
    host, step, check = cause.get("host"), cause.get("step"), cause.get("check")
    before = [r for r in records if r.seq < source.seq]
    result = next(
        (r for r in reversed(before) if r.kind == EventKind.STEP_RESULT and r.host == host and r.step == step), None
    )
    intent = next(
        (r for r in reversed(before) if r.kind == EventKind.STEP_INTENT and r.host == host and r.step == step), None
    )
    command = detail.get("command") or (intent.data.get("command") if intent else None)
    exit_code = detail.get("exit_code", result.data.get("exit_code") if result else None)
    output: Any = detail.get("stderr") or detail.get("stdout")
    if cause.get("kind") == "verify":
        verify = next(
            (
                r
                for r in reversed(before)
                if r.kind == EventKind.VERIFY and r.host == host and r.step == step and r.data.get("check") == check
            ),
            None,
        )
        vd: Mapping[str, Any] = verify.data if verify else detail
        output = vd.get("diff") or vd.get("body") or vd.get("stderr") or vd.get("stdout") or vd.get("summary")
    elif cause.get("kind") == "guard":
        command = None
        exit_code = None
        output = detail.get("body") or detail.get("error") or detail.get("stderr") or detail.get("stdout")
    elif not output and result is not None:
        output = result.data.get("stderr") or result.data.get("stdout")
    if isinstance(output, list | dict):
        output = json.dumps(output, indent=2, sort_keys=True)
    return FirstFailure(
        kind=str(cause.get("kind", "unknown")),
        summary=str(cause.get("summary", "")),
        host=host,
        step=step,
        check=check,
        command=str(command) if command else None,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        output_tail=_tail(output),
    )


def _rollback(records: Sequence[Record]) -> Rollback | None:
    results = [r for r in records if r.kind == EventKind.ROLLBACK_RESULT]
    start = _first(records, EventKind.ROLLBACK_START)
    if start is None and not results:
        return None
    # the last rollback (a recover's retry after a failed one) says what remains
    end = _last(records, EventKind.ROLLBACK_END)
    recovery = _last(records, EventKind.RECOVERY)
    actions = [
        RollbackAction(
            time=r.ts,
            host=str(r.host),
            step=str(r.step),
            outcome=str(r.outcome),
            exit_code=r.data.get("exit_code"),
            duration_seconds=r.data.get("duration"),
            summary=describe_event(r.event),
        )
        for r in results
    ]
    if recovery is None:
        verification = "guards were not checked after the rollback (the plan has no guards, or the run died)"
    elif recovery.outcome == "green":
        verification = f"every guard on every host passed a fresh probe at {_clock(recovery.ts)} UTC"
    else:
        failing = recovery.data.get("failing") or []
        names = ", ".join(f"{f.get('host')} '{f.get('guard')}'" for f in failing) or "some guards"
        verification = f"guards still FAILING {recovery.data.get('timeout')} after the rollback ({_clock(recovery.ts)} UTC): {names}"
    ed: Mapping[str, Any] = end.data if end else {}
    return Rollback(
        started=start.ts if start else None,
        finished=end.ts if end else None,
        outcome=end.outcome if end else None,
        actions=actions,
        verification=verification,
        remaining={str(k): list(v) for k, v in (ed.get("remaining") or {}).items()},
        irreversible_left={str(k): list(v) for k, v in (ed.get("irreversible_left") or {}).items()},
        failed=[dict(f) for f in ed.get("failed") or []],
    )


def _picture(records: Sequence[Record]) -> tuple[list[Bar], list[GuardSegment], float]:
    t0 = _parse_ts(records[0].ts)

    def off(r: Record) -> float:
        return round((_parse_ts(r.ts) - t0).total_seconds(), 3)

    span = off(records[-1])
    bars: list[Bar] = []
    open_steps: dict[tuple[str, str, str], tuple[float, str]] = {}
    for r in records:
        if r.host is None or r.step is None:
            continue
        if r.kind in (EventKind.STEP_INTENT, EventKind.ROLLBACK_INTENT):
            kind = "step" if r.kind == EventKind.STEP_INTENT else "rollback"
            open_steps[(r.host, r.step, kind)] = (off(r), "in_doubt")
        elif r.kind in (EventKind.STEP_RESULT, EventKind.ROLLBACK_RESULT):
            kind = "step" if r.kind == EventKind.STEP_RESULT else "rollback"
            start, _ = open_steps.pop((r.host, r.step, kind), (off(r), ""))
            bars.append(Bar(r.host, r.step, kind, start, off(r), str(r.outcome)))
        elif r.kind == EventKind.VERIFY:
            # verification time belongs to the step's bar; a failed check colours it
            for i in range(len(bars) - 1, -1, -1):
                b = bars[i]
                if b.host == r.host and b.step == r.step and b.kind == "step":
                    outcome = b.outcome if r.outcome == "ok" else "verify_failed"
                    bars[i] = Bar(b.host, b.step, b.kind, b.start, off(r), outcome)
                    break
    for (host, step, kind), (start, outcome) in open_steps.items():
        bars.append(Bar(host, step, kind, start, span, outcome))
    segments: list[GuardSegment] = []
    guards_start = _first(records, EventKind.GUARDS_START)
    if guards_start is not None:
        states: dict[str, dict[str, str]] = {}
        current: dict[str, tuple[str, float]] = {}
        hosts = [str(h) for h in records[0].data.get("hosts", [])]
        for h in hosts:
            states[h] = {}
            current[h] = ("green", off(guards_start))
        stop = final_run_end(records) or records[-1]
        for r in records:
            if r.kind != EventKind.GUARD_STATE or r.host is None:
                continue
            states.setdefault(r.host, {})[str(r.data.get("guard"))] = str(r.outcome)
            worst = _worst(states[r.host].values())
            state, since = current.get(r.host, ("green", off(guards_start)))
            if worst != state:
                segments.append(GuardSegment(r.host, state, since, off(r)))
                current[r.host] = (worst, off(r))
        for h, (state, since) in current.items():
            segments.append(GuardSegment(h, state, since, off(stop)))
        segments.sort(key=lambda s: (s.host, s.start))
    return bars, segments, span


def _worst(states: Any) -> str:
    values = set(states)
    for state in ("tripped", "failing"):
        if state in values:
            return state
    return "green"


def build_report(records: Sequence[Record], *, run_id: str) -> IncidentReport:
    """The incident report of a run, from its journal records alone (deterministic)."""
    if not records:
        raise JournalError(f"run {run_id}: the journal is empty; there is nothing to report")
    summary = _summary(records, run_id)
    impact, markers = _impact(records)
    start = records[0].data.get("version") if records[0].kind == EventKind.RUN_START else None
    bars, segments, span = _picture(records)
    window: tuple[float, float] | None = None
    if impact is not None:
        t0 = _parse_ts(records[0].ts)
        begin = round((_parse_ts(impact.begins) - t0).total_seconds(), 3)
        window = (begin, round((_parse_ts(impact.ends) - t0).total_seconds(), 3) if impact.ends else span)
    return IncidentReport(
        summary=summary,
        impact=impact,
        timeline=_timeline(records, markers),
        first_failure=_first_failure(records),
        rollback=_rollback(records),
        evidence=Evidence(
            plan_digest=summary.plan_digest,
            journal_head=records[-1].hash,
            journal_records=len(records),
            tool_version=str(start or "?"),
            verify_command=f"rollout verify {summary.run_id} --head {len(records)}:{records[-1].hash}",
        ),
        bars=bars,
        guard_segments=segments,
        impact_window=window,
        span_seconds=span,
    )


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
    )


# --- rendering ------------------------------------------------------------------------


def _utc(ts: str | None) -> str:
    if ts is None:
        return "-"
    return ts.replace("T", " ").replace("Z", " UTC")


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_json(report: IncidentReport) -> str:
    """The report as a JSON document (for dashboards and tickets)."""
    return json.dumps(report.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_markdown(report: IncidentReport) -> str:
    """The report as Markdown, ready to paste into a postmortem."""
    s = report.summary
    out: list[str] = []
    add = out.append
    add(f"# Incident report: {s.plan} on {s.environment} ({s.outcome})")
    add("")
    add("## Summary")
    add("")
    add("| | |")
    add("|---|---|")
    add(f"| Run | `{s.run_id}` |")
    add(f"| Plan | {_cell(s.plan)} (`{_cell(s.plan_file)}`) |")
    add(f"| Plan digest | `{s.plan_digest}` |")
    add(f"| Environment | {_cell(s.environment)}{' (rehearsal)' if s.rehearsal else ''} |")
    add(f"| Operator | {_cell(s.operator)} |")
    add(f"| Start | {_utc(s.start)} |")
    add(f"| End | {_utc(s.end)} |")
    add(f"| Duration | {_secs(s.duration_seconds)} |")
    add(f"| Outcome | **{s.outcome}** |")
    reached = ", ".join(s.hosts_reached) or "none"
    add(f"| Hosts reached | {len(s.hosts_reached)} of {len(s.hosts)}: {_cell(reached)} |")
    add("")
    add("## Impact")
    add("")
    impact = report.impact
    if impact is None:
        add(f"{NO_IMPACT.capitalize()}.")
    else:
        add(f"- OUTAGE BEGINS: {_utc(impact.begins)} (first failing guard probe)")
        add(f"- Detected (guard tripped): {_utc(impact.detected)}")
        add(f"- Rollback started: {_utc(impact.rollback_started)}")
        add(f"- MITIGATED (rollback finished): {_utc(impact.mitigated)}")
        add(f"- ENDS (guards green again): {_utc(impact.ends) if impact.ends else 'NOT RECOVERED'}")
        add("")
        add("| measure | time |")
        add("|---|---|")
        add(f"| impact window | {_secs(impact.duration_seconds)} |")
        add(f"| detection (first failing probe to trip) | {_secs(impact.detection_seconds)} |")
        add(f"| time to rollback start | {_secs(impact.to_rollback_seconds)} |")
        add(f"| time to recovery | {_secs(impact.to_recovery_seconds)} |")
        add("")
        add(f"- Affected hosts: {', '.join(impact.hosts)}")
        add(f"- Affected checks: {', '.join(repr(c) for c in impact.checks)}")
    add("")
    add("## Timeline")
    add("")
    add("All times UTC" + (f", {report.summary.start[:10]}" if report.summary.start else "") + ".")
    phase: str | None = None
    for entry in report.timeline:
        if entry.phase != phase:
            phase = entry.phase
            add("")
            add(f"### {phase}")
            add("")
        text = f"**{entry.text}**" if entry.marker else entry.text
        add(f"- {_clock(entry.time)} (UTC): {text}")
    add("")
    add("## What failed first")
    add("")
    ff = report.first_failure
    if ff is None:
        add("Nothing failed.")
    else:
        add(f"{ff.summary}")
        add("")
        add(f"- Kind: {ff.kind}")
        add(f"- Host: {ff.host or '-'}")
        add(f"- Step: {ff.step or '-'}")
        add(f"- Check: {ff.check or '-'}")
        add(f"- Command: {f'`{ff.command}`' if ff.command else '-'}")
        add(f"- Exit code: {'-' if ff.exit_code is None else ff.exit_code}")
        if ff.output_tail:
            add("")
            add(f"Last {len(ff.output_tail)} line(s) of output:")
            add("")
            add("```text")
            out.extend(ff.output_tail)
            add("```")
    add("")
    add("## Rollback")
    add("")
    rb = report.rollback
    if rb is None:
        add("Nothing was rolled back.")
    else:
        add(f"Started {_utc(rb.started)}, finished {_utc(rb.finished)}: {rb.outcome or 'unfinished'}.")
        add("")
        if rb.actions:
            add("| # | time (UTC) | host | step undone | outcome | exit | duration |")
            add("|---|---|---|---|---|---|---|")
            for i, a in enumerate(rb.actions, 1):
                exit_code = "-" if a.exit_code is None else a.exit_code
                add(
                    f"| {i} | {_clock(a.time)} | {_cell(a.host)} | {_cell(a.step)} | {a.outcome} | {exit_code} | "
                    f"{_secs(a.duration_seconds)} |"
                )
            add("")
        add(f"Verified: {rb.verification}.")
        add("")
        if rb.remaining or rb.irreversible_left or rb.failed:
            for f in rb.failed:
                add(f"- Rollback FAILED on {f.get('host')}, step {f.get('step')}: {f.get('summary')}")
            for host, steps in rb.remaining.items():
                add(f"- Still applied on {host} (undo by hand, newest first): {', '.join(steps)}")
            for host, steps in rb.irreversible_left.items():
                add(f"- Irreversible steps left applied on {host}: {', '.join(steps)}")
        else:
            add("Nothing remains applied.")
    add("")
    add("## Evidence")
    add("")
    e = report.evidence
    add(f"- Plan digest: `{e.plan_digest}`")
    add(f"- Journal head hash: `{e.journal_head}` ({e.journal_records} events)")
    add(f"- Tool version: rollout {e.tool_version}")
    add(f"- Verify the journal: `{e.verify_command}`")
    add("")
    add("## Follow-ups")
    add("")
    add("| # | action item | owner | due | status |")
    add("|---|---|---|---|---|")
    for i in range(1, FOLLOW_UP_ROWS + 1):
        add(f"| {i} | | | | |")
    add("")
    return "\n".join(out)


def load_report(run: RunDir) -> IncidentReport:
    """Read a run's journal and build its report."""
    reading = read_journal(run.journal)
    return build_report(reading.records, run_id=run.run_id)


def write_markdown_report(run: RunDir) -> Path:
    """Write report.md into the run directory (owner-only) and return its path."""
    text = render_markdown(load_report(run))
    target = run.report
    try:
        write_atomic(target, text, mode=0o600)
    except OSError as exc:
        raise JournalError(f"cannot write the report {target}: {exc.strerror or exc}") from exc
    return target
