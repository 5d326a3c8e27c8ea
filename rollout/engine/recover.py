"""Recover: rebuild what a dead run left applied from its journal, then roll it back.

A step whose intent is journaled but whose outcome is not is *in doubt*: its verify
decides whether it applied, and the verdict is journaled. Either way it is rolled back,
as the live engine rolls back a step that failed after it started: rollback commands
must be safe to run on a step that did not complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rollout.engine.apply import Engine
from rollout.engine.outcomes import AppliedStep, Cause, RunResult
from rollout.engine.prepare import Schedule
from rollout.engine.processes import end_dead_run_processes
from rollout.event import Event, EventKind, Outcome


@dataclass(frozen=True)
class JournalState:
    """What the journal says is still applied, host by host, oldest first."""

    applied: dict[str, list[AppliedStep]]
    finished: str | None  # the last run.end outcome, if the run ended
    changed: bool = True  # whether any step ever started (False: nothing can have changed)


def state_from_events(events: Sequence[Event], schedule: Schedule) -> JournalState:
    """Replay the journal: which steps started and were not rolled back."""
    stacks: dict[str, list[AppliedStep]] = {h: [] for h in schedule.hosts}
    index: dict[tuple[str, str], AppliedStep] = {}
    finished: str | None = None
    changed = False
    for event in events:
        if event.kind == EventKind.RUN_END:
            finished = event.outcome  # the last one wins: a recover after rollback_failed ends again
            continue
        if event.kind == EventKind.RECOVER_START:
            finished = None
            continue
        if event.host is None or event.step is None or event.host not in schedule.hosts:
            continue
        key = (event.host, event.step)
        if event.kind == EventKind.STEP_INTENT:
            changed = True
            item = index.get(key)
            if item is None or item.state == "rolled_back":
                step = next((s for s in schedule.hosts[event.host].steps if s.name == event.step), None)
                if step is None:
                    continue
                item = AppliedStep(event.host, event.wave, schedule.hosts[event.host].steps.index(step), step)
                index[key] = item
                if item not in stacks[event.host]:
                    stacks[event.host].append(item)
            item.state = "in_doubt"
        elif event.kind == EventKind.STEP_RESULT and key in index:
            if event.outcome == "not_started":  # the host was never reached
                stacks[event.host].remove(index.pop(key))
            else:
                index[key].state = "applied" if event.outcome == "ok" else "failed"
        elif event.kind == EventKind.ROLLBACK_INTENT and key in index:
            index[key].state = "rollback_in_doubt"
        elif event.kind == EventKind.ROLLBACK_RESULT and key in index:
            if event.outcome == "ok":
                index[key].state = "rolled_back"
            elif event.outcome != "skipped":
                index[key].state = "applied"
    live = {h: [a for a in stack if a.state != "rolled_back"] for h, stack in stacks.items()}
    return JournalState(applied={h: v for h, v in live.items() if v}, finished=finished, changed=changed)


def recover_run(engine: Engine, events: Sequence[Event], *, operator: str) -> RunResult:
    """Settle in-doubt steps with their verify, then roll back everything still applied.

    Also after a run that ended rollback_failed: the rollbacks that remain are tried again
    (the operator has fixed their cause), in the same journal, which ends with a second
    run.end. A run that died before any step started ends "not_started": nothing applied.
    """
    schedule = engine.schedule
    if not any(e.kind == EventKind.RUN_START for e in events):
        # killed at or before its first line: begin the journal the run never began
        engine.journal_start()
    state = state_from_events(events, schedule)
    engine.emit(
        Event(
            EventKind.RECOVER_START,
            data={
                "run_id": schedule.run_id,
                "operator": operator,
                "applied": {h: [f"{a.step.name} ({a.state})" for a in v] for h, v in state.applied.items()},
                "after": state.finished,
            },
        ),
        sync=True,
    )
    # The dead run's step shells may still be running: end them before judging or undoing their work.
    end_dead_run_processes(engine, events)
    if not state.changed:
        cause = Cause("recover", "the run died before any step started: nothing was applied")
        return engine.end_unchanged(Outcome.NOT_STARTED, cause)
    for host, stack in state.applied.items():
        for item in stack:
            if item.state not in ("in_doubt", "rollback_in_doubt"):
                continue
            if item.state == "rollback_in_doubt":
                summary = "its rollback started but never finished: running the rollback again"
                outcome = "rollback_in_doubt"
            elif not item.step.verify:
                summary = "started but never finished, and it has no verify: treated as applied"
                outcome = "assumed_applied"
            else:
                verdicts = [engine.runner.run(check, engine.executor(host)) for check in item.step.verify]
                if all(v.ok for v in verdicts):
                    summary = "started but never finished; its verify passes: it applied"
                    outcome = "applied"
                else:
                    failed = next(v for v in verdicts if not v.ok)
                    summary = f"started but never finished; verify fails ({failed.summary}): it may be partly applied"
                    outcome = "partly_applied"
            engine.emit(
                Event(
                    EventKind.IN_DOUBT,
                    wave=item.wave,
                    host=host,
                    step=item.step.name,
                    outcome=outcome,
                    data={"summary": summary},
                ),
                sync=True,
            )
            item.state = "applied"
    if state.finished == Outcome.ROLLBACK_FAILED:
        cause = Cause("recover", "the run's rollback failed; retrying the rollbacks that remain")
    else:
        cause = Cause("recover", "the orchestrator died before the run ended; rolling back what it applied")
    result = engine.roll_back(cause, interrupted=False, applied=state.applied)
    if result.outcome == Outcome.ROLLED_BACK and not state.applied:
        return RunResult(Outcome.ROLLED_BACK, cause=cause, guards_green=result.guards_green)
    return result
