"""The rehearsal record: what a run on a rehearsal environment proved, derived from its journal alone.

`rehearsal_record(records)` is a pure function of the journal's records, so whoever
verified a journal (the gate, on evidence from another machine) recomputes the record
and never has to trust `runs/RUN/rehearsal.json`, which is only its convenient copy.

- `forward`: the waves (for a plain run, the whole run: ok only when it succeeded);
- `rollback`: exercised only by `--rehearse-rollback`'s rollback phase; an abort's
  rollback after a failure is the run's outcome, not a rehearsed way back;
- `reapply`: null unless the reapply phase began;
- a phase that began and never closed (the run died in it) did not pass: "failed".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rollout.atomic import write_atomic
from rollout.errors import JournalError
from rollout.event import EventKind, Outcome
from rollout.journal import Record, final_run_end, read_journal
from rollout.report.clock import seconds_between

FORMAT = 1
RECORD_FILE = "rehearsal.json"


def rehearsal_record(records: Sequence[Record]) -> dict[str, Any]:
    """The rehearsal record of a run, from its journal records (deterministic)."""
    if not records:
        raise JournalError("the journal is empty: there is no rehearsal to record")
    start: Mapping[str, Any] = records[0].data if records[0].kind == EventKind.RUN_START else {}
    end = final_run_end(records)
    opened: dict[str, Record] = {}
    closed: dict[str, Record] = {}
    parity: Any = None
    for r in records:
        if r.kind == EventKind.REHEARSAL_PHASE:
            opened[str(r.data.get("phase"))] = r
        elif r.kind == EventKind.REHEARSAL_PHASE_END:
            closed[str(r.data.get("phase"))] = r
        elif r.kind == EventKind.PARITY_FACTS and parity is None:  # copied as journaled
            parity = dict(r.data)
    outcome = str(end.outcome) if end is not None else None
    if opened:
        forward = _phase("forward", opened, closed) or {"outcome": "failed", "seconds": None}
    else:  # a plain run: its forward phase is the whole run
        begun = next((r for r in records if r.kind == EventKind.PRECHECKS_PASSED), records[0])
        forward = {
            "outcome": "ok" if outcome == Outcome.SUCCEEDED else "failed",
            "seconds": _round(seconds_between(begun.ts, end.ts)) if end is not None else None,
        }
    rollback = _phase("rollback", opened, closed)
    return {
        "format": FORMAT,
        "run_id": start.get("run_id"),
        "plan": {"name": start.get("plan"), "digest": start.get("plan_digest")},
        "environment": start.get("environment"),
        "rehearsal": bool(start.get("rehearsal", False)),
        "tool_version": start.get("version"),
        "started": records[0].ts,
        "ended": end.ts if end is not None else None,
        "outcome": outcome,
        "forward": forward,
        "rollback": {"exercised": True, **rollback}
        if rollback
        else {"exercised": False, "outcome": None, "seconds": None},
        "reapply": _phase("reapply", opened, closed),
        "parity": parity,
        "journal_head": records[-1].hash,
    }


def rehearsal_phases(records: Sequence[Record]) -> list[dict[str, Any]]:
    """A --rehearse-rollback run's phases in the order they began: phase, outcome, seconds (none for a plain run)."""
    opened: dict[str, Record] = {}
    closed: dict[str, Record] = {}
    for r in records:
        if r.kind == EventKind.REHEARSAL_PHASE:
            opened[str(r.data.get("phase"))] = r
        elif r.kind == EventKind.REHEARSAL_PHASE_END:
            closed[str(r.data.get("phase"))] = r
    return [{"phase": name, **(_phase(name, opened, closed) or {})} for name in opened]


def _phase(name: str, opened: Mapping[str, Record], closed: Mapping[str, Record]) -> dict[str, Any] | None:
    """A rehearsal phase's outcome and seconds; None when it never began."""
    if name not in opened:
        return None
    end = closed.get(name)
    if end is None:
        return {"outcome": "failed", "seconds": None}
    seconds = end.data.get("seconds")
    return {
        "outcome": "ok" if end.data.get("outcome") == "ok" else "failed",
        "seconds": float(seconds) if isinstance(seconds, int | float) else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def write_rehearsal_record(run_dir: Path) -> Path | None:
    """Write runs/RUN/rehearsal.json (atomically) when the run was on a rehearsal environment."""
    reading = read_journal(run_dir / "journal.jsonl")
    if not reading.records:
        return None
    record = rehearsal_record(reading.records)
    if not record["rehearsal"]:
        return None
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    target = run_dir / RECORD_FILE
    try:
        write_atomic(target, text, mode=0o600)
    except OSError as exc:
        raise JournalError(f"cannot write the rehearsal record {target}: {exc.strerror or exc}") from exc
    return target
