"""Regression tests for the engine's safety invariants, on the in-memory executor.

Each test pins one way a run used to end "succeeded" or "rolled back" while that was
not true: an internal error, a trip at the very end, a rollback retried after a
within-budget failure, a journal failure during the rollback.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from rollout.engine.apply import Engine
from rollout.engine.events import Bus, ListSink
from rollout.engine.prepare import prepare_schedule
from rollout.errors import ExitStatus, JournalError
from rollout.event import Event, EventKind, Outcome
from rollout.executors.base import CommandResult, Executor, OnStart, Target
from rollout.planfile import load_plan
from tests.helpers import Cli
from tests.test_engine_unit import THREE_STEPS, FakeExecutor, FakeHost


class Fleet(FakeHost):
    """The fake fleet with what each host really has applied (do-X adds X, undo-X removes it)."""

    def __init__(self, failing: set[tuple[str, str]] | None = None) -> None:
        super().__init__(failing)
        self.state: dict[str, set[str]] = {}
        self.raising: dict[tuple[str, str], BaseException] = {}
        self.hooks: dict[tuple[str, str], threading.Event] = {}  # a command waits for its event


class StatefulExecutor(FakeExecutor):
    """FakeExecutor that keeps each host's applied set, raises or waits where told to."""

    fleet: Fleet

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_start: OnStart | None = None,
    ) -> CommandResult:
        key = (self.target.name, command)
        if key in self.fleet.hooks:
            self.fleet.hooks[key].wait(10)
        if key in self.fleet.raising:
            with self.fleet.lock:
                self.fleet.log.append(key)
            raise self.fleet.raising[key]
        result = super().run(command, timeout=timeout, env=env, stdin=stdin, on_start=on_start)
        with self.fleet.lock:
            applied = self.fleet.state.setdefault(self.target.name, set())
            if command.startswith("do-"):
                applied.add(command[3:])  # a failing step may be half done: it counts as applied
            elif command.startswith("undo-") and result.ok:
                applied.discard(command[5:])
        return result


def _engine(
    tmp_path: Path,
    steps: str,
    fleet: Fleet,
    *,
    hosts: int = 2,
    budget: int = 0,
    concurrency: int = 1,
    guards: str = "",
    bus: Bus | None = None,
    grace: float = 10.0,
) -> tuple[Engine, ListSink]:
    plan = tmp_path / "plan.yaml"
    host_map = ", ".join(f"h{i}: {{}}" for i in range(1, hosts + 1))
    plan.write_text(
        "name: invariants\n"
        f"environments: {{lab: {{hosts: {{{host_map}}}}}}}\n"
        f"strategy: {{waves: ['100%'], failure_budget: {budget}, concurrency: {concurrency}, bake: 0s}}\n"
        + (f"guards:\n{guards}" if guards else "")
        + f"steps:\n{steps}"
    )
    schedule = prepare_schedule(load_plan(plan), "lab", run_id="inv")
    sink = ListSink()

    def factory(target: Target) -> Executor:
        return StatefulExecutor(target, fleet)

    return Engine(schedule, bus or Bus(sink), executor_factory=factory, grace=grace), sink


def _applied(fleet: Fleet) -> dict[str, set[str]]:
    return {h: s for h, s in fleet.state.items() if s}


# --- item: an internal error aborts, rolls back everything and exits 5 ------------------


def test_an_unexpected_exception_in_a_host_worker_rolls_back_everything_and_exits_5(tmp_path: Path) -> None:
    fleet = Fleet()
    fleet.raising[("h1", "do-b")] = RuntimeError("bug in rollout")
    engine, sink = _engine(tmp_path, THREE_STEPS, fleet)
    result = engine.run()
    assert result.outcome == Outcome.INTERNAL_ERROR
    assert result.exit_status == ExitStatus.JOURNAL
    assert result.cause is not None
    assert result.cause.kind == "internal"
    assert "RuntimeError: bug in rollout" in result.cause.summary
    assert _applied(fleet) == {}, "every change rollout made was undone"
    assert ("h2", "do-a") not in fleet.log, "no host starts a step after the internal error"
    end = sink.events[-1]
    assert end.kind == EventKind.RUN_END
    assert end.outcome == Outcome.INTERNAL_ERROR


def test_an_exception_while_rolling_back_a_step_is_a_failed_rollback_and_exits_4(tmp_path: Path) -> None:
    fleet = Fleet(failing={("h1", "do-c")})
    fleet.raising[("h1", "undo-b")] = OverflowError("cannot convert float infinity to integer")
    engine, sink = _engine(tmp_path, THREE_STEPS, fleet, hosts=1)
    result = engine.run()
    assert result.outcome == Outcome.ROLLBACK_FAILED
    assert result.exit_status == ExitStatus.ROLLBACK_FAILED
    assert result.remaining == {"h1": ("b", "a")}
    assert _applied(fleet) == {"h1": {"a", "b"}}, "what the result names is exactly what is still applied"
    assert sink.events[-1].kind == EventKind.RUN_END
    assert "OverflowError" in result.rollback_failures[0].summary


# --- item: a trip at the very end is never lost -------------------------------------------


class GuardProbeAfterLastStep(StatefulExecutor):
    """The guard probe passes until the last step ran; the next probe waits, then fails."""

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_start: OnStart | None = None,
    ) -> CommandResult:
        if command == "probe":
            with self.fleet.lock:
                broken = "c" in self.fleet.state.get(self.target.name, set())
            if broken:
                self.fleet.hooks[("release", "probe")].wait(10)
                return CommandResult(self.target.name, command, 1, "", "503", 0.0)
            return CommandResult(self.target.name, command, 0, "", "", 0.0)
        return super().run(command, timeout=timeout, env=env, stdin=stdin, on_start=on_start)


class ReleaseOnWaveEnd(ListSink):
    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def emit(self, event: Event, *, sync: bool) -> None:
        super().emit(event, sync=sync)
        if event.kind == EventKind.WAVE_END:
            self.release.set()


def test_a_guard_failing_as_the_last_wave_ends_is_part_of_the_verdict(tmp_path: Path) -> None:
    fleet = Fleet()
    release = threading.Event()
    fleet.hooks[("release", "probe")] = release
    sink = ReleaseOnWaveEnd(release)
    guards = "  - {name: order flow, command: probe, every: 10ms, fail_after: 1, timeout: 5s}\n"
    engine, _ = _engine(tmp_path, THREE_STEPS, fleet, hosts=1, guards=guards, bus=Bus(sink))
    engine._factory = lambda target: GuardProbeAfterLastStep(target, fleet)
    result = engine.run()
    assert result.outcome == Outcome.ROLLED_BACK, "a guard that trips as the run ends must roll it back"
    assert _applied(fleet) == {}
    outcomes = [e.outcome for e in sink.events if e.kind == EventKind.RUN_END]
    assert outcomes == [Outcome.ROLLED_BACK]


# --- item: the outcome says what is still applied ----------------------------------------


def test_a_rollback_that_failed_within_budget_and_succeeded_on_retry_ends_rolled_back(tmp_path: Path) -> None:
    fleet = Fleet(failing={("h1", "do-b")})
    fleet.sequence[("h1", "undo-b")] = ["fail"]  # the first rollback fails, the retry works
    engine, sink = _engine(tmp_path, THREE_STEPS, fleet, budget=1)
    result = engine.run()
    assert result.outcome == Outcome.ROLLED_BACK
    assert result.exit_status == ExitStatus.ROLLED_BACK
    assert result.remaining == {}
    assert result.rollback_failures == ()
    assert _applied(fleet) == {}
    # the final rollback does not list what was already undone
    start = next(e for e in sink.events if e.kind == EventKind.ROLLBACK_START)
    assert start.data["plan"] == {"h1": ["b", "a"]}


def test_the_rollback_plan_lists_only_steps_still_applied(tmp_path: Path) -> None:
    # h1 fails within budget and is fully rolled back; h2 exceeds the budget
    fleet = Fleet(failing={("h1", "do-b"), ("h2", "do-c")})
    engine, sink = _engine(tmp_path, THREE_STEPS, fleet, budget=1)
    result = engine.run()
    assert result.outcome == Outcome.ROLLED_BACK
    start = next(e for e in sink.events if e.kind == EventKind.ROLLBACK_START)
    assert start.data["plan"] == {"h2": ["c", "b", "a"]}
    assert _applied(fleet) == {}


def test_the_grace_period_cancel_never_kills_a_within_budget_rollback(tmp_path: Path) -> None:
    fleet = Fleet(failing={("h1", "do-a"), ("h2", "do-a")})
    h1_rolling_back = threading.Event()
    fleet.hooks[("h2", "do-a")] = h1_rolling_back  # h2 fails only once h1 is rolling back

    class SlowRollback(StatefulExecutor):
        def run(
            self,
            command: str,
            *,
            timeout: float | None = None,
            env: Mapping[str, str] | None = None,
            stdin: bytes | None = None,
            on_start: OnStart | None = None,
        ) -> CommandResult:
            if command == "undo-a" and self.target.name == "h1":
                h1_rolling_back.set()
                # long enough for the grace (10 ms) to expire; a cancel ends it at once
                if self._cancelled.wait(1.0):
                    return CommandResult(self.target.name, command, None, "", "", 1.0, cancelled=True)
            return super().run(command, timeout=timeout, env=env, stdin=stdin, on_start=on_start)

    steps = "  - {name: a, run: do-a, rollback: undo-a}\n"
    engine, sink = _engine(tmp_path, steps, fleet, budget=1, concurrency=2, grace=0.01)
    engine._factory = lambda target: SlowRollback(target, fleet)
    result = engine.run()
    h1 = [e.outcome for e in sink.events if e.kind == EventKind.ROLLBACK_RESULT and e.host == "h1"]
    assert h1 == ["ok"], "the within-budget rollback ran to completion"
    assert result.outcome == Outcome.ROLLED_BACK
    assert _applied(fleet) == {}


# --- item: a journal failure during the rollback -------------------------------------------


class FailingAfter:
    """A journal sink whose disk fills up at the first event of `kind` after `skip` of them."""

    def __init__(self, kind: str, skip: int = 0) -> None:
        self.kind = kind
        self.skip = skip
        self.events: list[Event] = []
        self.failed = False

    def emit(self, event: Event, *, sync: bool) -> None:
        if self.failed or (event.kind == self.kind and self.skip == 0):
            self.failed = True
            raise JournalError("cannot write the journal: No space left on device")
        if event.kind == self.kind:
            self.skip -= 1
        self.events.append(event)


def test_a_journal_failure_during_the_rollback_does_not_stop_the_other_hosts_rollbacks(tmp_path: Path) -> None:
    fleet = Fleet(failing={("h3", "do-c")})
    journal = FailingAfter(EventKind.ROLLBACK_RESULT, skip=1)  # fails on the second rollback result
    side = ListSink()
    engine, _ = _engine(tmp_path, THREE_STEPS, fleet, hosts=3, concurrency=3, bus=Bus(journal, fallback=side))
    result = engine.run()
    assert _applied(fleet) == {}, "every host was rolled back, journal or not"
    assert result.outcome == Outcome.JOURNAL_FAILED
    assert result.exit_status == ExitStatus.JOURNAL
    assert result.remaining == {}
    # h3 fails its third step; how far h1 and h2 got by then is the scheduler's business, so
    # the count is of the steps that started, every one of which must be rolled back
    started = {key for key in fleet.log if key[1].startswith("do-")}
    assert {("h3", "do-a"), ("h3", "do-b"), ("h3", "do-c")} <= started
    assert len({host for host, _ in started}) > 1, "another host's rollbacks come after the failure"
    assert len(result.rolled_back) == len(started)
    assert "No space left" in (result.journal_error or "")
    # together, the journal and the side record hold every rollback result
    results = [e for e in journal.events + side.events if e.kind == EventKind.ROLLBACK_RESULT]
    assert len(results) == len(started)
    assert side.events[-1].kind == EventKind.RUN_END
    assert side.events[-1].outcome == Outcome.JOURNAL_FAILED


# --- the CLI: every exception becomes a documented exit code ---------------------------------


def test_an_unexpected_exception_in_a_command_exits_5_with_the_traceback(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rollout.runstore

    def broken(*_args: object, **_kwargs: object) -> object:
        raise ValueError("a bug")

    monkeypatch.setattr(rollout.runstore, "list_runs", broken)
    monkeypatch.setattr("rollout.api.history.list_runs", broken)
    result = cli("runs")
    assert result.code == ExitStatus.JOURNAL, "an internal error never exits 1 (rolled back cleanly)"
    assert "internal error: ValueError: a bug" in result.err
    assert "Traceback" in result.err


def test_the_cli_says_what_a_journal_failure_left_and_keeps_a_side_record(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real run whose disk fills up after the second step's intent: exit 5, the steps that ran
    are rolled back, the summary says so (never "no further changes were made"), and the side
    record holds what the journal could not."""
    from rollout.api import sinks as run_cmds

    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""
name: journal-full
environments:
  lab:
    rehearsal: true
    hosts: {{ h1: {{}} }}
steps:
  - {{name: one, run: touch {tmp_path}/one, rollback: rm -f {tmp_path}/one}}
  - {{name: two, run: touch {tmp_path}/two, rollback: rm -f {tmp_path}/two}}
  - {{name: three, run: touch {tmp_path}/three, rollback: rm -f {tmp_path}/three}}
"""
    )
    real_emit = run_cmds.JournalSink.emit
    intents: list[str] = []

    def filling_disk(self: run_cmds.JournalSink, event: Event, *, sync: bool) -> None:
        if event.kind == EventKind.STEP_INTENT:
            intents.append(str(event.step))
        if len(intents) > 2:  # the third step's intent finds the disk full
            raise JournalError("cannot write the journal: No space left on device")
        real_emit(self, event, sync=sync)

    monkeypatch.setattr(run_cmds.JournalSink, "emit", filling_disk)
    state = tmp_path / "state"
    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(state))
    assert result.code == ExitStatus.JOURNAL, result.out + result.err
    assert not (tmp_path / "one").exists()
    assert not (tmp_path / "two").exists()
    assert not (tmp_path / "three").exists(), "no step started after the journal failed"
    assert "no further changes were made" not in result.out
    assert "undone (newest first per host): h1/two, h1/one" in result.out
    assert "No space left on device" in result.out
    (run_dir,) = (state / "runs").iterdir()
    side = [json.loads(line) for line in (run_dir / "journal.fallback.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in side][-1] == "run.end"
    assert [(e["step"], e["outcome"]) for e in side if e["kind"] == "rollback.result"] == [("two", "ok"), ("one", "ok")]
    assert "journal-fallback:" in result.err


def test_a_success_the_journal_cannot_record_is_not_a_success(tmp_path: Path) -> None:
    """The journal refuses the run.end(succeeded) line: without it a later recover would undo
    the change anyway, so the run rolls back now, and no sink ever hears "succeeded"."""
    fleet = Fleet()
    journal = FailingAfter(EventKind.RUN_END)
    side, display = ListSink(), ListSink()
    engine, _ = _engine(tmp_path, THREE_STEPS, fleet, hosts=1, bus=Bus(journal, [display], fallback=side))
    result = engine.run()
    assert result.outcome == Outcome.JOURNAL_FAILED
    assert result.exit_status == ExitStatus.JOURNAL
    assert _applied(fleet) == {}
    assert [e.outcome for e in display.events if e.kind == EventKind.RUN_END] == [Outcome.JOURNAL_FAILED]
    refused = side.events[0]
    assert (refused.kind, refused.outcome) == (EventKind.RUN_END, Outcome.SUCCEEDED)
    assert "No space left" in refused.data["not_journaled"]
