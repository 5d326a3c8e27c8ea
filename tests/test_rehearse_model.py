"""The engine model (tests/test_engine_model.py) with `--rehearse-rollback`: random plans and failures.

The same in-memory fleet and the same injected failures (steps, verifications, rollbacks,
rollout's own bugs, guards going red, a journal that fails, Ctrl-C at any event), run as a
rehearsal. After every run, what an operator is promised still holds, and for a rehearsal:

- the phases appear in order (forward, rollback, reapply), each closed before the next
  opens, and none after one that failed;
- `succeeded` means all three phases ended ok and every step is applied on every in-scope host;
- a failed rollback phase ends the run `rollback_failed`, naming exactly what is still applied;
- replaying the journal (what `recover` does) gives the applied set the fleet really has:
  a step rolled back in the rollback phase and applied again in reapply is applied.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from rollout.engine.apply import Engine
from rollout.engine.events import Bus, ListSink
from rollout.engine.guards import GREEN
from rollout.engine.prepare import prepare_schedule
from rollout.engine.recover import state_from_events
from rollout.event import Event, EventKind, Outcome
from rollout.exits import FOR_OUTCOME
from rollout.journal import Journal, read_journal, verify_journal
from rollout.planfile import load_plan
from tests.test_engine_model import (
    EXAMPLES,
    SCRATCH,
    InjectingJournal,
    Interrupter,
    ModelExecutor,
    Scenario,
    Truth,
    _write_plan,
    scenarios,
)

PHASES = ("forward", "rollback", "reapply")


def _reversible(sc: Scenario) -> Scenario:
    """A rehearsal refuses plans with irreversible steps: every step gets its rollback."""
    return dataclasses.replace(sc, steps=tuple(dataclasses.replace(s, irreversible=False) for s in sc.steps))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize="ROLLOUT_MODEL_EXAMPLES" not in os.environ,
)
@given(scenarios().map(_reversible))
def test_every_rehearsal_ends_with_an_outcome_that_tells_the_truth(sc: Scenario) -> None:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        _check_one_rehearsal(Path(tmp), sc)


def _phase_lines(events: list[Event]) -> list[tuple[str, str, str | None]]:
    return [
        (e.kind, str(e.data.get("phase")), e.outcome)
        for e in events
        if e.kind in (EventKind.REHEARSAL_PHASE, EventKind.REHEARSAL_PHASE_END)
    ]


def _check_phases(lines: list[tuple[str, str, str | None]], outcome: str) -> None:
    """Phases open in order, each closes before the next, none follows a failed one."""
    opened = [phase for kind, phase, _ in lines if kind == EventKind.REHEARSAL_PHASE]
    assert tuple(opened) == PHASES[: len(opened)], lines
    for i, (kind, phase, result) in enumerate(lines):
        if kind == EventKind.REHEARSAL_PHASE_END:
            assert lines[i - 1][:2] == (EventKind.REHEARSAL_PHASE, phase), lines
            if result == "failed":
                assert i == len(lines) - 1, "a phase started after one that failed"
            if phase == "rollback" and result == "failed":
                assert outcome in (Outcome.ROLLBACK_FAILED, Outcome.INTERNAL_ERROR), outcome
    if outcome == Outcome.SUCCEEDED:
        assert [(p, r) for k, p, r in lines if k == EventKind.REHEARSAL_PHASE_END] == [(p, "ok") for p in PHASES]


def _check_one_rehearsal(tmp: Path, sc: Scenario) -> None:
    loaded = load_plan(_write_plan(tmp, sc))
    schedule = prepare_schedule(loaded, "lab", run_id="model")
    truth = Truth(sc)
    path = tmp / "journal.jsonl"
    journal = Journal.create(path, run_id="model", plan_digest=loaded.digest)
    interrupter = Interrupter(sc.interrupt_at)
    side = ListSink()
    bus = Bus(InjectingJournal(journal, truth, sc.journal_fails_at), [interrupter], fallback=side)
    engine = Engine(
        schedule,
        bus,
        executor_factory=lambda target: ModelExecutor(target, truth),
        grace=0.05,
        recovery_timeout=0.3,
    )
    interrupter.engine = engine
    try:
        result = engine.run(rehearse_rollback=True)
    finally:
        journal.close()

    steps = sorted(s.name for s in sc.steps)
    applied = {h: sorted(v) for h, v in truth.applied.items() if v}
    assert result.exit_status == FOR_OUTCOME[result.outcome]
    # A run.end the journal refused reaches only the side record, marked so; the one that
    # follows it (if any) is the last word.
    kept = [e.outcome for e in interrupter.events if e.kind == EventKind.RUN_END]
    refused = [e.outcome for e in side.events if e.kind == EventKind.RUN_END and "not_journaled" in e.data]
    assert kept == [result.outcome] if kept else refused == [result.outcome], (kept, refused, result.outcome)
    _check_phases(_phase_lines(interrupter.events), result.outcome)

    if result.outcome == Outcome.SUCCEEDED:
        for host in schedule.hosts:
            expected = [] if host in result.failed_hosts else steps
            assert applied.get(host, []) == expected, (host, applied)
        assert all(s.state == GREEN for s in engine.guards.states.values()), "success with a guard not green"
    elif result.outcome == Outcome.ROLLBACK_FAILED:
        assert {h: sorted(v) for h, v in result.remaining.items()} == applied or result.guards_green is False
    elif result.outcome != Outcome.REFUSED:
        assert applied == {}, f"{applied} still applied after {result.outcome}"
    else:
        assert applied == {}

    if sc.journal_fails_at is None:
        verification = verify_journal(path, plan_digest=loaded.digest)
        assert verification.ok, verification.reason
        events = [r.event for r in read_journal(path).records]
        replayed = state_from_events(events, schedule).applied
        assert {h: sorted(a.step.name for a in v) for h, v in replayed.items()} == applied

    kinds = [e.kind for e in interrupter.events]
    if EventKind.ABORT in kinds:
        assert EventKind.STEP_INTENT not in kinds[kinds.index(EventKind.ABORT) :]
