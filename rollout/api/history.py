"""What has run: the history of runs, a run's timeline as it grows, and forcing a stuck lock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout.api import dirs
from rollout.api.evidence import found_anchors
from rollout.errors import RolloutError
from rollout.journal import Record, final_run_end, read_journal, verify_journal
from rollout.lock import LockHolder
from rollout.runstore import RunDir, find_run, list_runs

FOLLOW_SETTLE = 1.0
FOLLOW_POLL = 0.2


def runs(*, state_dir: Path | str | None = None) -> list[dict[str, Any]]:
    """Every run, oldest first: id, plan, environment, start, duration (s) and outcome.

    A journal that fails verification shows as "damaged (why)": an edit the anchors can
    show (a rewritten or cut tail) must not be believed.
    """
    return [run_summary(r) for r in list_runs(dirs.state_dir(state_dir))]


def run_summary(rundir: RunDir) -> dict[str, Any]:
    """One run's line in the history."""
    entry: dict[str, Any] = {
        "run": rundir.run_id,
        "plan": None,
        "env": None,
        "start": None,
        "duration": None,
        "outcome": "unknown",
    }
    try:
        reading = read_journal(rundir.journal)
        checked = verify_journal(rundir.journal, anchors=found_anchors(rundir, reading.records))
    except (RolloutError, OSError) as exc:
        entry["outcome"] = f"damaged ({exc})"
        return entry
    if not checked.ok:
        entry["outcome"] = f"damaged ({checked.reason})"
        return entry
    if not reading.records:
        return entry
    first, last = reading.records[0], reading.records[-1]
    entry.update(plan=first.data.get("plan"), env=first.data.get("environment"), start=first.ts)
    end = final_run_end(reading.records)
    # status deliveries may be journaled after run.end; they are not part of the run's duration
    entry["duration"] = round((end or last).mono - first.mono, 3)
    entry["outcome"] = end.outcome if end else "in progress or died (see `rollout recover`)"
    return entry


@dataclass
class Timeline:
    """A run's journal records, read once or followed while the run goes on."""

    run: RunDir
    follow: bool = False
    # set when the journal's last line is torn (the writer died mid-line); that line is not yielded
    torn: bool = False

    def __iter__(self) -> Iterator[Record]:
        """Each record once, in order; when following, until run.end and a quiet second after it."""
        shown = 0
        quiet_since = time.monotonic()
        while True:
            reading = read_journal(self.run.journal)
            yield from reading.records[shown:]
            if len(reading.records) > shown:
                quiet_since = time.monotonic()
            shown = len(reading.records)
            self.torn = reading.torn is not None
            ended = final_run_end(reading.records) is not None
            # after run.end, status deliveries still land for up to the notifier's flush bound
            if not self.follow or (ended and time.monotonic() - quiet_since > FOLLOW_SETTLE):
                return
            time.sleep(FOLLOW_POLL)  # Ctrl-C ends it at once


def timeline(run_id: str, *, state_dir: Path | str | None = None, follow: bool = False) -> Timeline:
    """The records of a run ("last", an id or a unique prefix); with `follow`, as they are written."""
    return Timeline(find_run(dirs.state_dir(state_dir), run_id), follow=follow)


def unlock(env: str, *, plan: str, lock_id: str, lock_dir: Path | str | None = None) -> LockHolder:
    """Force the lock of a plan on an environment whose holder is stuck; only with the holder's lock id."""
    from rollout.errors import UsageError
    from rollout.lock import force_unlock

    try:
        return force_unlock(dirs.lock_dir(lock_dir), plan, env, lock_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
