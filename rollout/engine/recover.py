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
    replay = _Replay(schedule)
    for event in events:
        replay.feed(event)
    live = {h: [a for a in stack if a.state != "rolled_back"] for h, stack in replay.stacks.items()}
    return JournalState(applied={h: v for h, v in live.items() if v}, finished=replay.finished, changed=replay.changed)


class _Replay:
    """The journal read line by line: each host's started steps, oldest first, and their states."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.stacks: dict[str, list[AppliedStep]] = {h: [] for h in schedule.hosts}
        self.index: dict[tuple[str, str], AppliedStep] = {}
        self.finished: str | None = None
        self.changed = False

    def feed(self, event: Event) -> None:
        """Apply one journal line."""
        if event.kind == EventKind.RUN_END:
            self.finished = event.outcome  # the last one wins: a recover after rollback_failed ends again
            return
        if event.kind == EventKind.RECOVER_START:
            self.finished = None
            return
        if event.host is None or event.step is None or event.host not in self.schedule.hosts:
            return
        key = (event.host, event.step)
        if event.kind == EventKind.STEP_INTENT:
            self._intent(event, key)
        elif key in self.index:
            self._outcome(event, key)

    def _intent(self, event: Event, key: tuple[str, str]) -> None:
        """A step's intent: it is in doubt until its result line says otherwise."""
        assert event.host is not None
        self.changed = True
        item = self.index.get(key)
        if item is None or item.state == "rolled_back":
            steps = self.schedule.hosts[event.host].steps
            step = next((s for s in steps if s.name == event.step), None)
            if step is None:
                return
            item = AppliedStep(event.host, event.wave, steps.index(step), step)
            self.index[key] = item
            if item not in self.stacks[event.host]:
                self.stacks[event.host].append(item)
        item.state = "in_doubt"

    def _outcome(self, event: Event, key: tuple[str, str]) -> None:
        """A step's result, or its rollback's intent or result."""
        assert event.host is not None
        if event.kind == EventKind.STEP_RESULT:
            if event.outcome == "not_started":  # the host was never reached
                self.stacks[event.host].remove(self.index.pop(key))
            else:
                self.index[key].state = "applied" if event.outcome == "ok" else "failed"
        elif event.kind == EventKind.ROLLBACK_INTENT:
            self.index[key].state = "rollback_in_doubt"
        elif event.kind == EventKind.ROLLBACK_RESULT:
            if event.outcome == "ok":
                self.index[key].state = "rolled_back"
            elif event.outcome != "skipped":
                self.index[key].state = "applied"


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
            if item.state in ("in_doubt", "rollback_in_doubt"):
                _settle_in_doubt(engine, host, item)
    if state.finished == Outcome.ROLLBACK_FAILED:
        cause = Cause("recover", "the run's rollback failed; retrying the rollbacks that remain")
    else:
        cause = Cause("recover", "the orchestrator died before the run ended; rolling back what it applied")
    result = engine.roll_back(cause, interrupted=False, applied=state.applied)
    if result.outcome == Outcome.ROLLED_BACK and not state.applied:
        return RunResult(Outcome.ROLLED_BACK, cause=cause, guards_green=result.guards_green)
    return result


def _settle_in_doubt(engine: Engine, host: str, item: AppliedStep) -> None:
    """Journal what a step in doubt did (its verify decides); from here on it counts as applied."""
    summary, outcome = _judge_in_doubt(engine, host, item)
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


def _judge_in_doubt(engine: Engine, host: str, item: AppliedStep) -> tuple[str, str]:
    """(summary, outcome) for a step whose command, or whose rollback, started but never finished."""
    if item.state == "rollback_in_doubt":
        return "its rollback started but never finished: running the rollback again", "rollback_in_doubt"
    if not item.step.verify:
        return "started but never finished, and it has no verify: treated as applied", "assumed_applied"
    verdicts = [engine.runner.run(check, engine.executor(host)) for check in item.step.verify]
    if all(v.ok for v in verdicts):
        return "started but never finished; its verify passes: it applied", "applied"
    failed = next(v for v in verdicts if not v.ok)
    return (
        f"started but never finished; verify fails ({failed.summary}): it may be partly applied",
        "partly_applied",
    )
