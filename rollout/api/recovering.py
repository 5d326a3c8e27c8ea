"""Recovering a dead run: find it, re-render its exact plan, and settle it under the environment lock.

The plan must be the one the run started with (same digest); its variables come from
the run directory, except secret ones, which must be given again. The answer to "is
there anything to recover?" that counts is taken under the lock: a recover that ran
while this one waited for the lock may already have ended the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.api.running import AlreadySettled, RunOutcome, drive
from rollout.api.settle import clear_if_settled
from rollout.errors import Refused, UsageError
from rollout.event import Outcome
from rollout.journal import Journal, JournalReading, final_run_end, read_journal
from rollout.lock import EnvironmentLock, LockHolder
from rollout.runstore import RunDir, check_run_dir, find_run

if TYPE_CHECKING:
    from rollout.api.running import Wiring
    from rollout.engine.prepare import Schedule


def read_if_begun(rundir: RunDir) -> JournalReading | None:
    """The run's journal, or None when the run died before creating it."""
    if not os.path.lexists(rundir.journal):
        return None
    return read_journal(rundir.journal)


def settled_outcome(reading: JournalReading) -> str | None:
    """The outcome of the journal's final run.end when it settled the run; None if there is more to do."""
    end = final_run_end(reading.records)
    if end is None or reading.torn is not None or end.outcome == Outcome.ROLLBACK_FAILED:
        return None
    return end.outcome


def _overrides(rundir: RunDir, meta: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """The run's variables, with the caller's on top; a secret the run directory does not keep must be given."""
    overrides = {**(meta.get("vars") or {}), **given}
    missing = [n for n in meta.get("redacted_vars", []) if overrides.get(n) == "***"]
    if missing:
        raise UsageError(
            f"run {rundir.run_id} was started with secret --var {', '.join(missing)}; its value is not stored: "
            f"pass it again (--var {missing[0]}=...)"
        )
    return overrides


def _schedule(rundir: RunDir, meta: dict[str, Any], digest: str, plan: Path | None, given: dict[str, str]) -> Schedule:
    """The dead run's schedule, re-rendered from the same plan (Refused if the plan changed)."""
    from rollout.engine.prepare import prepare_schedule
    from rollout.planfile import load_plan

    plan_path = plan or Path(meta["plan_file"])
    loaded = load_plan(plan_path)
    if loaded.digest != digest:
        raise Refused(
            f"{plan_path}: the plan's digest {loaded.digest[:12]} does not match the run's {digest[:12]}: "
            "the plan changed since the run started; pass --plan with the original plan file"
        )
    overrides = _overrides(rundir, meta, given)
    return prepare_schedule(loaded, str(meta["environment"]), overrides=overrides, run_id=rundir.run_id)


def recover_run_dir(
    run_id: str,
    *,
    plan: Path | None,
    overrides: dict[str, str],
    state: Path,
    locks: Path,
    lock_timeout: float,
    wiring: Wiring,
) -> RunOutcome | AlreadySettled:
    """Find the run, check its plan, take the lock, and settle the run (see `rollout.api.recover`)."""
    from rollout.engine.recover import recover_run

    rundir = find_run(state, run_id)
    check_run_dir(rundir)
    meta = rundir.meta()
    reading = read_if_begun(rundir)
    digest = (reading.plan_digest if reading else None) or str(meta.get("plan_digest", ""))
    # A quick answer that needs no plan; the answer that counts is given under the lock.
    ended = settled_outcome(reading) if reading is not None else None
    if ended is not None:
        return AlreadySettled(rundir, ended)
    schedule = _schedule(rundir, meta, digest, plan, overrides)
    lock = EnvironmentLock(locks, schedule.plan_name, schedule.env_name)
    lock.acquire(LockHolder.current(rundir.run_id), timeout=lock_timeout)
    try:
        reading = read_if_begun(rundir)
        ended = settled_outcome(reading) if reading is not None else None
        if ended is not None:
            clear_if_settled(lock, rundir.path, rundir.run_id, wiring.warn)
            return AlreadySettled(rundir, ended)
        if reading is None:
            journal = Journal.create(rundir.journal, run_id=rundir.run_id, plan_digest=digest)
        else:
            journal = Journal.reopen(rundir.journal, run_id=rundir.run_id, plan_digest=digest)
        if journal.recovered is not None and journal.recovered.torn is not None:
            wiring.warn(f"warning: the journal's last line was torn and was set aside in {rundir.journal}.broken")
        events = [r.event for r in journal.recovered.records] if journal.recovered else []
        outcome = drive(
            schedule,
            journal,
            rundir,
            wiring,
            action=lambda engine: recover_run(engine, events, operator=engine.operator),
        )
        clear_if_settled(lock, rundir.path, rundir.run_id, wiring.warn)
        return outcome
    finally:
        lock.release()
