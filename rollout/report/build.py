"""Building the incident report from a run's journal records.

`build_report` is a pure function of the journal records: every time comes from the
journal, never from the clock, so the same journal always gives the same report. Secrets
were redacted before the events reached the journal; this module must never read
anything but the journal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rollout.errors import JournalError
from rollout.event import EventKind, Outcome
from rollout.journal import Record, final_run_end
from rollout.report.clock import clock as _clock
from rollout.report.clock import offsets_from
from rollout.report.clock import seconds_between as _seconds
from rollout.report.records import (
    Evidence,
    FirstFailure,
    Impact,
    IncidentReport,
    Rollback,
    RollbackAction,
    Summary,
    TimelineEntry,
)
from rollout.report.rehearsal import rehearsal_phases
from rollout.report.swimlanes import impact_window, swimlanes
from rollout.report.timeline import describe_event

OUTPUT_TAIL_LINES = 10
_BAD_GUARD_STATES = ("failing", "tripped")


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


# The phase a record of these kinds opens (the timeline's "phase" column)...
_PHASE_FROM = {
    EventKind.WAVE_START: "waves",
    EventKind.GUARDS_START: "waves",
    EventKind.BAKE_START: "bake",
    EventKind.ABORT: "abort",
    EventKind.ROLLBACK_START: "rollback",
    EventKind.RECOVER_START: "rollback",
    EventKind.RECOVERY: "recovery",
}


def _timeline(
    records: Sequence[Record], markers: Mapping[int, str], offset: Callable[[str], float]
) -> list[TimelineEntry]:
    phase = "pre-checks"
    rehearsal = ""  # a --rehearse-rollback run names its phase beside each part of it
    entries: list[TimelineEntry] = []
    for r in records:
        kind = r.kind
        phase = _PHASE_FROM.get(kind, phase)
        if kind == EventKind.REHEARSAL_PHASE:
            rehearsal = f" (rehearsal: {r.data.get('phase')})"
            phase = "rollback" if r.data.get("phase") == "rollback" else "waves"
        at = offset(r.ts)
        if _significant(r):
            entries.append(TimelineEntry(r.ts, at, phase + rehearsal, describe_event(r)))
        if r.seq in markers:
            entries.append(TimelineEntry(r.ts, at, phase + rehearsal, markers[r.seq], marker=True))
        # ... and the phase that follows these
        if kind == EventKind.ROLLBACK_END:
            phase = "recovery"
        elif kind == EventKind.BAKE_END and phase == "bake":
            phase = "waves"
    return entries


def _failure_source(records: Sequence[Record]) -> Record | None:
    """The record that names the first failure: the abort, a failed host, or a failed run's end."""
    source = _first(records, EventKind.ABORT) or _first(records, EventKind.HOST_FAILED)
    if source is None:
        end = _first(records, EventKind.RUN_END)
        if end is None or end.outcome == Outcome.SUCCEEDED or not end.data.get("cause"):
            return None
        source = end
    return source


def _cause_of(source: Record) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The cause and its detail; a spent failure budget is reported by the failure that spent it."""
    cause: Mapping[str, Any] = source.data.get("cause") or {}
    detail: Mapping[str, Any] = cause.get("detail") or {}
    if cause.get("kind") == "budget" and isinstance(detail.get("last"), Mapping):
        cause = {**detail["last"], "summary": cause.get("summary")}
        detail = cause.get("detail") or {}
    return cause, detail


def _latest(before: Sequence[Record], kind: str, host: Any, step: Any) -> Record | None:
    return next((r for r in reversed(before) if r.kind == kind and r.host == host and r.step == step), None)


def _verify_output(before: Sequence[Record], cause: Mapping[str, Any], detail: Mapping[str, Any]) -> Any:
    host, step, check = cause.get("host"), cause.get("step"), cause.get("check")
    verify = next(
        (
            r
            for r in reversed(before)
            if r.kind == EventKind.VERIFY and r.host == host and r.step == step and r.data.get("check") == check
        ),
        None,
    )
    vd: Mapping[str, Any] = verify.data if verify else detail
    return vd.get("diff") or vd.get("body") or vd.get("stderr") or vd.get("stdout") or vd.get("summary")


def _first_failure(records: Sequence[Record]) -> FirstFailure | None:
    source = _failure_source(records)
    if source is None:
        return None
    cause, detail = _cause_of(source)
    host, step, check = cause.get("host"), cause.get("step"), cause.get("check")
    before = [r for r in records if r.seq < source.seq]
    result = _latest(before, EventKind.STEP_RESULT, host, step)
    intent = _latest(before, EventKind.STEP_INTENT, host, step)
    command = detail.get("command") or (intent.data.get("command") if intent else None)
    exit_code = detail.get("exit_code", result.data.get("exit_code") if result else None)
    output: Any = detail.get("stderr") or detail.get("stdout")
    if cause.get("kind") == "verify":
        output = _verify_output(before, cause, detail)
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
            summary=describe_event(r),
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


def build_report(records: Sequence[Record], *, run_id: str) -> IncidentReport:
    """The incident report of a run, from its journal records alone (deterministic)."""
    if not records:
        raise JournalError(f"run {run_id}: the journal is empty; there is nothing to report")
    summary = _summary(records, run_id)
    impact, markers = _impact(records)
    start = records[0].data.get("version") if records[0].kind == EventKind.RUN_START else None
    offset = offsets_from(records[0].ts)
    bars, segments, span = swimlanes(records, offset)
    window: tuple[float, float] | None = None
    if impact is not None:
        window = impact_window(records, impact.begins, impact.ends, span)
    return IncidentReport(
        summary=summary,
        impact=impact,
        timeline=_timeline(records, markers, offset),
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
        parity=next((dict(r.data.get("facts") or {}) for r in records if r.kind == EventKind.PARITY_FACTS), None),
        span_seconds=span,
        rehearsal=rehearsal_phases(records),
    )
