"""Whether the last run under an environment lock has settled, and refusing to start until it has."""

from __future__ import annotations

from pathlib import Path

from rollout.api.sinks import Warn
from rollout.errors import JournalError, Refused
from rollout.event import Outcome
from rollout.journal import final_run_end, read_journal
from rollout.lock import EnvironmentLock, LastRun


def unsettled(run_dir: Path) -> str | None:
    """Why the run in run_dir has not settled (died unrecovered, or rollback failed), or None if it has."""
    from rollout.runstore import JOURNAL

    if not run_dir.is_dir():
        return f"its run directory {run_dir} is missing"
    try:
        reading = read_journal(run_dir / JOURNAL)
    except JournalError as exc:
        return f"its journal cannot be read ({exc})"
    end = final_run_end(reading.records)
    if end is None:
        return "its journal has no final run.end: it died before it ended"
    if end.outcome == Outcome.ROLLBACK_FAILED:
        return "it ended rollback_failed: steps are still applied"
    return None


def refuse_unsettled(lock: EnvironmentLock) -> None:
    """Refuse (exit 3) while the last run under this lock has not settled, from any directory."""
    last: LastRun | None = lock.last_run()
    if last is None:
        return
    why = unsettled(last.run_dir)
    if why is None:
        return  # it settled but died before clearing its record; this run replaces the record
    hint = (
        f"; if that directory was removed on purpose, delete {lock.record_path} to go on"
        if not last.run_dir.is_dir()
        else ""
    )
    raise Refused(
        f"the previous run of plan {lock.plan!r} on {lock.env!r}, run {last.run_id} (directory {last.run_dir}), "
        f"has not settled: {why}. Nothing was changed. Settle it first: "
        f"rollout recover {last.run_id} --state-dir {last.run_dir.parent.parent}{hint}"
    )


def clear_if_settled(lock: EnvironmentLock, run_dir: Path, run_id: str, warn: Warn) -> None:
    """Drop the lock's record of this run once its journal says it settled."""
    if unsettled(run_dir) is not None:
        return
    try:
        lock.clear_run(run_id)
    except JournalError as exc:
        warn(f"warning: {exc}; the next run may ask for a recover it does not need")
