"""The swimlane geometry of a run: step and rollback bars and guard-health stretches per host.

Only the HTML renderer (rollout.report.html) draws these. They are computed from the
journal records while the report is built, and kept in its JSON form, so that every
renderer reads the report's data and none reads the journal. Offsets are seconds since
the run's first record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from rollout.event import EventKind
from rollout.journal import Record, final_run_end
from rollout.report.clock import offsets_from, parse_ts
from rollout.report.records import Bar, GuardSegment

Offset = Callable[[Record], float]


def _offset_from(records: Sequence[Record], offset: Callable[[str], float] | None) -> Offset:
    of_ts = offset or offsets_from(records[0].ts)

    def off(r: Record) -> float:
        return of_ts(r.ts)

    return off


def _bars(records: Sequence[Record], off: Offset, span: float) -> list[Bar]:
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
            _extend_for_verify(bars, r, off(r))
    for (host, step, kind), (start, outcome) in open_steps.items():
        bars.append(Bar(host, step, kind, start, span, outcome))
    return bars


def _extend_for_verify(bars: list[Bar], r: Record, at: float) -> None:
    """Verification time belongs to the step's bar; a failed check colours it."""
    for i in range(len(bars) - 1, -1, -1):
        b = bars[i]
        if b.host == r.host and b.step == r.step and b.kind == "step":
            outcome = b.outcome if r.outcome == "ok" else "verify_failed"
            bars[i] = Bar(b.host, b.step, b.kind, b.start, at, outcome)
            break


def _guard_segments(records: Sequence[Record], off: Offset) -> list[GuardSegment]:
    segments: list[GuardSegment] = []
    guards_start = next((r for r in records if r.kind == EventKind.GUARDS_START), None)
    if guards_start is None:
        return segments
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
    return segments


def _worst(states: Iterable[str]) -> str:
    values = set(states)
    for state in ("tripped", "failing"):
        if state in values:
            return state
    return "green"


def swimlanes(
    records: Sequence[Record], offset: Callable[[str], float] | None = None
) -> tuple[list[Bar], list[GuardSegment], float]:
    """The bars, the guard stretches and the span (seconds) of a run, from its journal records.

    `offset` maps a timestamp to its seconds since the first record (`offsets_from`),
    when the caller already has one.
    """
    off = _offset_from(records, offset)
    span = off(records[-1])
    return _bars(records, off, span), _guard_segments(records, off), span


def impact_window(records: Sequence[Record], begins: str, ends: str | None, span: float) -> tuple[float, float]:
    """The impact window as offsets; an impact that never ended runs to the end of the picture."""
    t0 = parse_ts(records[0].ts)
    begin = round((parse_ts(begins) - t0).total_seconds(), 3)
    return (begin, round((parse_ts(ends) - t0).total_seconds(), 3) if ends else span)
