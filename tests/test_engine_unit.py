"""Fast engine tests with an in-memory executor: waves, budget, rollback order, interrupts."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from rollout.engine.apply import Engine
from rollout.engine.events import Bus, ListSink
from rollout.engine.outcomes import RunResult
from rollout.engine.prepare import compute_waves, prepare_schedule
from rollout.errors import ConnectError, ExitStatus
from rollout.event import EventKind, Outcome
from rollout.executors.base import CommandResult, Executor, OnStart, Target
from rollout.planfile import load_plan
from rollout.units import Percent


class FakeHost:
    """Shared state of the fake fleet: every command any host ran, in order."""

    def __init__(self, failing: set[tuple[str, str]] | None = None) -> None:
        self.failing = failing or set()  # (host, command) pairs that exit 1
        self.unreachable: set[tuple[str, str]] = set()  # (host, command) pairs that cannot connect
        self.sequence: dict[tuple[str, str], list[str]] = {}  # per call: "fail" or "unreachable", then ok
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.blocking = threading.Event()  # set once a `block` command is running
        self.cancels = 0
        self.next_pgid = 1000  # the fake process group each started command reports
        self.envs: list[tuple[str, str, dict[str, str]]] = []  # (host, command, env) of every run


class FakeExecutor:
    """The Executor protocol in memory: `block` waits until cancel(); anything else returns at once."""

    def __init__(self, target: Target, fleet: FakeHost) -> None:
        self.target = target
        self.fleet = fleet
        self._cancelled = threading.Event()

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_start: OnStart | None = None,
    ) -> CommandResult:
        with self.fleet.lock:
            self.fleet.log.append((self.target.name, command))
            self.fleet.envs.append((self.target.name, command, dict(env or {})))
        planned = self.fleet.sequence.get((self.target.name, command))
        unreachable = (planned and planned[0] == "unreachable") or (self.target.name, command) in self.fleet.unreachable
        if on_start is not None and not unreachable:
            with self.fleet.lock:
                self.fleet.next_pgid += 1
                pgid = self.fleet.next_pgid
            on_start(pgid)  # a real executor reports the group once the command exists
        if command == "block":
            self._cancelled.clear()
            self.fleet.blocking.set()
            cancelled = self._cancelled.wait(timeout or 30)
            return CommandResult(self.target.name, command, None, "", "", 0.0, cancelled=cancelled)
        if planned:
            outcome = planned.pop(0)
            if outcome == "unreachable":
                raise ConnectError("connection refused", host=self.target.name)
            return CommandResult(self.target.name, command, 1, "", "boom", 0.0)
        if (self.target.name, command) in self.fleet.unreachable:
            raise ConnectError("connection refused", host=self.target.name)
        code = 1 if (self.target.name, command) in self.fleet.failing else 0
        return CommandResult(self.target.name, command, code, "", "boom" if code else "", 0.0)

    def read_file(self, path: str, *, max_bytes: int = 0) -> bytes:
        raise NotImplementedError

    def put_file(self, data: bytes, path: str, *, mode: int = 0o644) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        self.fleet.cancels += 1
        self._cancelled.set()

    def close(self) -> None:
        pass


def _engine(
    tmp_path: Path,
    steps: str,
    *,
    hosts: int = 3,
    waves: str = "['100%']",
    budget: int = 0,
    fleet: FakeHost | None = None,
    grace: float = 10.0,
) -> tuple[Engine, FakeHost, ListSink]:
    plan = tmp_path / "plan.yaml"
    host_map = ", ".join(f"h{i}: {{}}" for i in range(1, hosts + 1))
    plan.write_text(
        "name: unit\n"
        f"environments: {{lab: {{hosts: {{{host_map}}}}}}}\n"
        f"strategy: {{waves: {waves}, failure_budget: {budget}, concurrency: 1}}\n"
        f"steps:\n{steps}"
    )
    schedule = prepare_schedule(load_plan(plan), "lab", run_id="unit")
    fleet = fleet or FakeHost()
    sink = ListSink()

    def factory(target: Target) -> Executor:
        return FakeExecutor(target, fleet)

    return Engine(schedule, Bus(sink), executor_factory=factory, grace=grace), fleet, sink


THREE_STEPS = (
    "  - {name: a, run: do-a, rollback: undo-a}\n"
    "  - {name: b, run: do-b, rollback: undo-b}\n"
    "  - {name: c, run: do-c, rollback: undo-c}\n"
)


# --- waves and budget ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([1, 2, 4], [["h1"], ["h2"], ["h3", "h4"]]),
        ([Percent(25), Percent(50), Percent(100)], [["h1"], ["h2"], ["h3", "h4"]]),
        ([1], [["h1", "h2", "h3", "h4"]]),  # leftovers join the last wave
        ([Percent(10)], [["h1", "h2", "h3", "h4"]]),  # 10% of 4 rounds up to one host, the rest join it
        ([2, 2, 4], [["h1", "h2"], ["h3", "h4"]]),  # a wave that adds nobody is skipped
        (["canary", Percent(100)], [["h3"], ["h1", "h2", "h4"]]),
        (["canary", "missing", 4], [["h3"], ["h1", "h2", "h4"]]),
        ([10], [["h1", "h2", "h3", "h4"]]),  # more than there are hosts
    ],
)
def test_waves_are_cumulative_targets(sizes: list[int | Percent | str], expected: list[list[str]]) -> None:
    waves, _ = compute_waves(["h1", "h2", "h3", "h4"], {"canary": ["h3"]}, sizes)
    assert [list(w.hosts) for w in waves] == expected
    assert [w.index for w in waves] == list(range(1, len(expected) + 1))


def test_waves_that_add_no_host_are_reported_as_skipped() -> None:
    _, skipped = compute_waves(["h1", "h2"], {}, [2, 2, "missing"])
    assert skipped == ["2", "missing"]


@pytest.mark.parametrize(
    ("total", "share", "hosts"), [(4, 25, 1), (4, 30, 2), (3, 50, 2), (1, 1, 1), (100, 1, 1), (7, 100, 7)]
)
def test_a_percentage_of_hosts_rounds_up_and_is_at_least_one(total: int, share: float, hosts: int) -> None:
    assert Percent(share).of(total) == hosts


@pytest.mark.parametrize(
    ("budget", "hosts", "expected"), [("0", 4, 0), ("1", 4, 1), ("'25%'", 4, 1), ("'50%'", 3, 1), ("'10%'", 4, 0)]
)
def test_a_percentage_budget_rounds_down(tmp_path: Path, budget: str, hosts: int, expected: int) -> None:
    plan = tmp_path / "plan.yaml"
    host_map = ", ".join(f"h{i}: {{}}" for i in range(hosts))
    plan.write_text(
        f"name: b\nenvironments: {{lab: {{hosts: {{{host_map}}}}}}}\n"
        f"strategy: {{failure_budget: {budget}}}\nsteps: [{{name: a, run: 'true', rollback: 'true'}}]\n"
    )
    assert prepare_schedule(load_plan(plan), "lab").budget() == expected


def test_failures_within_budget_are_rolled_back_and_the_next_one_aborts(tmp_path: Path) -> None:
    fleet = FakeHost(failing={("h1", "do-b"), ("h2", "do-b")})
    engine, fleet, sink = _engine(tmp_path, THREE_STEPS, budget=1, fleet=fleet)
    result = engine.run()
    assert result.outcome == Outcome.ROLLED_BACK
    assert result.cause is not None
    assert result.cause.kind == "budget"
    outcomes = [(e.host, e.outcome) for e in sink.events if e.kind == EventKind.HOST_FAILED]
    assert outcomes == [("h1", "within_budget"), ("h2", "budget_exceeded")]
    assert ("h3", "do-a") not in fleet.log  # the run stopped before the third host


def test_one_failure_within_budget_lets_the_run_succeed(tmp_path: Path) -> None:
    engine, fleet, _ = _engine(tmp_path, THREE_STEPS, budget=1, fleet=FakeHost(failing={("h2", "do-c")}))
    result = engine.run()
    assert result.outcome == Outcome.SUCCEEDED
    assert result.exit_status == ExitStatus.SUCCESS
    assert result.failed_hosts == ("h2",)
    assert [c for h, c in fleet.log if h == "h2"] == ["do-a", "do-b", "do-c", "undo-c", "undo-b", "undo-a"]
    assert ("h3", "do-c") in fleet.log


# --- rollback -----------------------------------------------------------------------


def _rollbacks(log: list[tuple[str, str]], host: str) -> list[str]:
    return [c for h, c in log if h == host and c.startswith("undo")]


def test_every_host_reached_is_rolled_back_newest_first(tmp_path: Path) -> None:
    engine, fleet, sink = _engine(tmp_path, THREE_STEPS, fleet=FakeHost(failing={("h3", "do-b")}))
    result = engine.run()
    assert result.outcome == Outcome.ROLLED_BACK
    assert _rollbacks(fleet.log, "h1") == ["undo-c", "undo-b", "undo-a"]
    assert _rollbacks(fleet.log, "h2") == ["undo-c", "undo-b", "undo-a"]
    assert _rollbacks(fleet.log, "h3") == ["undo-b", "undo-a"]  # the failed step too: it may be half done
    intents = [(e.host, e.step) for e in sink.events if e.kind == EventKind.ROLLBACK_INTENT]
    for host in ("h1", "h2"):
        assert [s for h, s in intents if h == host] == ["c", "b", "a"]


def test_a_failed_rollback_leaves_that_hosts_older_steps_alone_and_says_so(tmp_path: Path) -> None:
    fleet = FakeHost(failing={("h1", "do-c"), ("h1", "undo-b")})
    engine, fleet, _ = _engine(tmp_path, THREE_STEPS, hosts=1, fleet=fleet)
    result = engine.run()
    assert result.outcome == Outcome.ROLLBACK_FAILED
    assert result.exit_status == ExitStatus.ROLLBACK_FAILED
    assert _rollbacks(fleet.log, "h1") == ["undo-c", "undo-b"]  # never undo-a
    assert result.remaining == {"h1": ("b", "a")}
    assert [(f.host, f.step) for f in result.rollback_failures] == [("h1", "b")]


def test_irreversible_steps_are_skipped_and_reported(tmp_path: Path) -> None:
    steps = (
        "  - {name: a, run: do-a, rollback: undo-a}\n"
        "  - {name: migrate, run: do-migrate, rollback: none}\n"
        "  - {name: c, run: do-c, rollback: undo-c}\n"
    )
    engine, fleet, sink = _engine(tmp_path, steps, hosts=1, fleet=FakeHost(failing={("h1", "do-c")}))
    result = engine.run()
    assert result.outcome == Outcome.ROLLED_BACK
    assert _rollbacks(fleet.log, "h1") == ["undo-c", "undo-a"]
    assert result.irreversible_left == {"h1": ("migrate",)}
    skipped = [e for e in sink.events if e.kind == EventKind.ROLLBACK_RESULT and e.outcome == "skipped"]
    assert [(e.host, e.step) for e in skipped] == [("h1", "migrate")]


# --- interrupts ---------------------------------------------------------------------


def _run_in_thread(engine: Engine) -> tuple[threading.Thread, list[RunResult]]:
    results: list[RunResult] = []
    thread = threading.Thread(target=lambda: results.append(engine.run()), daemon=True)
    thread.start()
    return thread, results


def test_a_first_interrupt_stops_new_work_and_a_second_kills_in_flight_commands(tmp_path: Path) -> None:
    steps = "  - {name: a, run: do-a, rollback: undo-a}\n  - {name: slow, run: block, rollback: undo-slow}\n"
    steps += "  - {name: never, run: do-never, rollback: undo-never}\n"
    engine, fleet, sink = _engine(tmp_path, steps, hosts=1, grace=30.0)
    thread, results = _run_in_thread(engine)
    assert fleet.blocking.wait(5)
    engine.interrupt("SIGINT")
    time.sleep(0.2)
    assert thread.is_alive(), "the first interrupt must let the in-flight command run on"
    assert fleet.cancels == 0
    engine.interrupt("SIGINT")
    thread.join(5)
    assert not thread.is_alive()
    (result,) = results
    assert result.outcome == Outcome.INTERRUPTED
    assert result.exit_status == ExitStatus.INTERRUPTED
    assert fleet.cancels >= 1
    slow = next(e for e in sink.events if e.kind == EventKind.STEP_RESULT and e.step == "slow")
    assert slow.outcome == "aborted"
    assert ("h1", "do-never") not in fleet.log
    assert _rollbacks(fleet.log, "h1") == ["undo-slow", "undo-a"]
    assert result.failed_hosts == ()  # a command the operator killed is not a host failure


def test_a_step_that_could_not_reach_its_host_is_not_rolled_back(tmp_path: Path) -> None:
    fleet = FakeHost()
    fleet.unreachable.add(("h2", "do-b"))
    engine, fleet, sink = _engine(tmp_path, THREE_STEPS, hosts=2, fleet=fleet)
    result = engine.run()
    assert result.outcome == Outcome.ROLLED_BACK
    assert result.cause is not None
    assert result.cause.kind == "connect"
    rollbacks = [cmd for host, cmd in fleet.log if host == "h2" and cmd.startswith("undo")]
    assert rollbacks == ["undo-a"]  # b never started on h2, so only a is undone there
    not_started = [e for e in sink.events if e.kind == EventKind.STEP_RESULT and e.outcome == "not_started"]
    assert [(e.host, e.step) for e in not_started] == [("h2", "b")]


def test_a_retry_that_cannot_connect_keeps_the_step_that_already_ran_in_the_rollback(tmp_path: Path) -> None:
    fleet = FakeHost()
    fleet.sequence[("h1", "do-a")] = ["fail", "unreachable"]
    steps = "  - {name: a, run: do-a, rollback: undo-a, retries: 1, retry_delay: 10ms}\n"
    engine, fleet, _ = _engine(tmp_path, steps, hosts=1, fleet=fleet)
    result = engine.run()
    assert result.outcome == Outcome.ROLLED_BACK
    assert ("h1", "undo-a") in fleet.log  # the first attempt ran, so it is undone


# --- processes ----------------------------------------------------------------------


def test_every_step_and_rollback_command_is_marked_and_its_process_group_journaled(tmp_path: Path) -> None:
    fleet = FakeHost(failing={("h1", "do-b")})
    engine, fleet, sink = _engine(tmp_path, THREE_STEPS, hosts=1, fleet=fleet)
    assert engine.run().outcome == Outcome.ROLLED_BACK
    intents = [e for e in sink.events if e.kind in (EventKind.STEP_INTENT, EventKind.ROLLBACK_INTENT)]
    started = [e for e in sink.events if e.kind == EventKind.PROCESS]
    # One process.start per command, right after its intent, naming the same attempt.
    assert [(e.step, e.data["attempt_id"]) for e in started] == [(e.step, e.data["attempt_id"]) for e in intents]
    assert [e.data["role"] for e in started] == ["step", "step", "rollback", "rollback"]
    assert len({e.data["attempt_id"] for e in intents}) == len(intents)
    for event in started:
        assert sink.events[sink.events.index(event) - 1].data["attempt_id"] == event.data["attempt_id"]
    envs = {command: env for _host, command, env in fleet.envs}
    for intent in intents:
        command = intent.data["command"]
        assert envs[command] == {"ROLLOUT_RUN": "unit", "ROLLOUT_ATTEMPT_ID": intent.data["attempt_id"]}
