"""When the journal cannot be written: no step starts again, what was applied is rolled back, exit 5.

The targets matter more than the evidence: the rollback goes on without the journal, and
the bus keeps a side record of it.
"""

from __future__ import annotations

from pathlib import Path

from rollout.engine.apply import Engine
from rollout.engine.events import Bus, ListSink
from rollout.engine.prepare import prepare_schedule
from rollout.errors import ExitStatus, JournalError
from rollout.event import Event, EventKind, Outcome
from rollout.planfile import load_plan


class FailingJournal:
    """A journal sink whose disk fills up after `ok_events` events."""

    def __init__(self, ok_events: int) -> None:
        self.ok_events = ok_events
        self.events: list[Event] = []

    def emit(self, event: Event, *, sync: bool) -> None:
        if len(self.events) >= self.ok_events:
            raise JournalError("cannot write the journal: No space left on device")
        self.events.append(event)


def _plan(tmp_path: Path) -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""
name: journal-failure
environments:
  lab:
    hosts: {{ h1: {{}} }}
steps:
  - name: one
    run: touch {tmp_path}/one
    rollback: rm -f {tmp_path}/one
  - name: two
    run: touch {tmp_path}/two
    rollback: rm -f {tmp_path}/two
  - name: three
    run: touch {tmp_path}/three
    rollback: rm -f {tmp_path}/three
"""
    )
    return plan


def test_a_journal_write_error_stops_forward_work_and_rolls_back_what_was_applied(tmp_path: Path) -> None:
    schedule = prepare_schedule(load_plan(_plan(tmp_path)), "lab", run_id="r1")
    # run.start, prechecks.passed, wave.start, intent(one), process.start(one), result(one):
    # the next intent cannot be written
    journal = FailingJournal(ok_events=6)
    side = ListSink()
    result = Engine(schedule, Bus(journal, fallback=side)).run()
    assert result.outcome == Outcome.JOURNAL_FAILED
    assert result.exit_status == ExitStatus.JOURNAL
    assert "No space left" in (result.journal_error or "")
    # the change whose intent could not be recorded never ran, nor anything after it ...
    assert not (tmp_path / "two").exists()
    assert not (tmp_path / "three").exists()
    assert [e.kind for e in journal.events][-1] == EventKind.STEP_RESULT
    # ... and the one that did run was rolled back, with a side record of the rollback
    assert not (tmp_path / "one").exists()
    assert result.rolled_back == (("h1", "one"),)
    assert result.remaining == {}
    kinds = [e.kind for e in side.events]
    # the side record starts with the intent the journal refused; that step never ran
    assert [(e.kind, e.step) for e in side.events[:1]] == [(EventKind.STEP_INTENT, "two")]
    assert EventKind.STEP_RESULT not in kinds
    assert kinds[-1] == EventKind.RUN_END
    assert [(e.step, e.outcome) for e in side.events if e.kind == EventKind.ROLLBACK_RESULT] == [("one", "ok")]


def test_an_intent_that_cannot_be_journaled_is_never_executed(tmp_path: Path) -> None:
    schedule = prepare_schedule(load_plan(_plan(tmp_path)), "lab", run_id="r2")
    journal = FailingJournal(ok_events=3)  # fails on the first step intent
    result = Engine(schedule, Bus(journal)).run()
    assert result.exit_status == ExitStatus.JOURNAL
    assert not (tmp_path / "one").exists()
