"""HTTP and TCP guards probed from a process of their own: punctual, and never a blind spot.

Invariants, each with real processes and a real HTTP server on 127.0.0.1:
- the prober's verdicts reach the monitor, its counts reach `guards.stop`, and it is gone
  once the monitor stops;
- a prober that dies unasked is reported (every guard it ran says `guard.lagging`) and
  its guards keep guarding from the orchestrator: a host that stops answering still trips;
- the prober dies with the run: SIGKILL the orchestrator and it exits on its own;
- Ctrl-C reaches the whole process group, but the prober keeps probing through the
  rollback until the run stops it (no "prober exited" lag).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.engine.events import Bus
from rollout.engine.guards import GREEN, PROCESS_MIN_SLOTS, GuardMonitor
from rollout.engine.probe import CheckRunner
from rollout.engine.prober import ProcessProber
from rollout.event import Event, EventKind
from rollout.model import Guard
from tests.helpers import ROLLOUT, cli_env, events, is_event, pid_alive, start_rollout, wait_for_event
from tests.test_guard_scheduler import Collect, FleetServer, _fleet_plan, _no_executor

#: Enough HTTP guard slots for the prober process (PROCESS_MIN_SLOTS), few enough to be cheap under load.
PROBER_FLEET = [f"h{i:03d}" for i in range(PROCESS_MIN_SLOTS + 8)]


@pytest.fixture
def server() -> Iterator[FleetServer]:
    srv = FleetServer()
    yield srv
    srv.close()


def _guard(port: int, host: str) -> Guard:
    return Guard.model_validate(
        {
            "name": "health",
            "http": {"url": f"http://127.0.0.1:{port}/health/{host}"},
            "every": "100ms",
            "timeout": "300ms",
            "fail_after": 2,
        }
    )


def _monitor(server: FleetServer, tmp_path: Path, sink: Collect, trips: list[str]) -> tuple[GuardMonitor, CheckRunner]:
    hosts = ["h1", "h2", "h3"]
    runner = CheckRunner(tmp_path)
    monitor = GuardMonitor(
        {h: (_guard(server.port, h),) for h in hosts},
        _no_executor,
        runner,
        Bus(None, [sink]),
        on_trip=lambda h, *_: trips.append(h),
        on_fatal=lambda e: None,
        own_process=True,
    )
    return monitor, runner


def _prober(monitor: GuardMonitor) -> subprocess.Popen[bytes]:
    (prober,) = monitor._schedulers
    assert isinstance(prober, ProcessProber)
    assert prober._proc is not None
    return prober._proc


def test_probes_from_their_own_process_reach_the_monitor_and_the_process_ends_with_it(
    server: FleetServer, tmp_path: Path
) -> None:
    sink, trips = Collect(), []
    monitor, runner = _monitor(server, tmp_path, sink, trips)
    monitor.start()
    try:
        assert monitor.wait_all_green(20)
        child = _prober(monitor)
        assert child.poll() is None
    finally:
        monitor.stop()
        runner.close()
    assert child.poll() is not None, "the prober ended with the monitor"
    summary = monitor.stats.summary()
    assert summary["probes"] >= 3, summary
    assert summary["due"] >= summary["probes"], summary
    assert not trips
    assert not sink.kinds(EventKind.GUARD_LAGGING)


def test_a_prober_that_dies_is_reported_and_its_guards_keep_guarding(server: FleetServer, tmp_path: Path) -> None:
    sink, trips = Collect(), []
    monitor, runner = _monitor(server, tmp_path, sink, trips)
    monitor.start()
    try:
        assert monitor.wait_all_green(20)
        # Under load a guard may lag before the kill too ("prober starved"): only what the
        # death of the prober causes is asked about.
        before = len(sink.kinds(EventKind.GUARD_LAGGING))
        _prober(monitor).kill()
        deadline = time.monotonic() + 20

        def exited() -> list[Event]:
            return [
                e for e in sink.kinds(EventKind.GUARD_LAGGING)[before:] if "prober process exited" in e.data["reason"]
            ]

        while {e.host for e in exited()} != {"h1", "h2", "h3"} and time.monotonic() < deadline:
            time.sleep(0.02)
        assert {e.host for e in exited()} == {"h1", "h2", "h3"}, sink.kinds(EventKind.GUARD_LAGGING)
        server.hanging.add("h2")  # now only the in-process fallback can see it
        while not trips and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        monitor.stop()
        runner.close()
    assert trips == ["h2"], trips
    assert monitor.states[("h1", 0)].state == GREEN


def _prober_pids(parent: int) -> list[int]:
    """The prober processes among `parent`'s children (read from /proc)."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if b"rollout.engine.prober" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except FileNotFoundError:
                continue
    return found


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_prober_dies_with_the_run(server: FleetServer, tmp_path: Path) -> None:
    plan = _fleet_plan(
        tmp_path, server.port, every="500ms", timeout="1s", waves=["100%"], bake="120s", hosts=PROBER_FLEET
    )
    state = tmp_path / "state"
    proc = start_rollout("run", plan, "--env", "demo", "--state-dir", state)
    try:
        wait_for_event(state, is_event("bake.start"), timeout=60, proc=proc)
        (child,) = _prober_pids(proc.pid)
        proc.kill()
        proc.communicate()
        assert _wait_gone(child, 20), "the prober outlived the orchestrator"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_to_the_process_group_leaves_the_prober_guarding_the_rollback(
    server: FleetServer, tmp_path: Path
) -> None:
    plan = _fleet_plan(
        tmp_path, server.port, every="500ms", timeout="1s", waves=["100%"], bake="120s", hosts=PROBER_FLEET
    )
    state = tmp_path / "state"
    args = [str(ROLLOUT), "run", str(plan), "--env", "demo", "--state-dir", str(state)]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
        start_new_session=True,
    )
    try:
        wait_for_event(state, is_event("bake.start"), timeout=60, proc=proc)
        (child,) = _prober_pids(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert not pid_alive(child)
    evts = events(state)
    assert not [e for e in evts if e["kind"] == "guard.lagging"], "the prober kept probing through the rollback"
    assert "rollback.end" in [e["kind"] for e in evts], "it rolled back"


def test_a_guard_round_trips_to_the_prober_unchanged() -> None:
    guard = Guard.model_validate(
        {
            "name": "api",
            "http": {"url": "http://127.0.0.1:1/x", "headers": {"X-Token": "s3cr3t"}, "status": [200, 204]},
            "every": "250ms",
            "timeout": "1s",
            "fail_after": 4,
        }
    )
    assert Guard.model_validate(guard.model_dump(mode="json")) == guard


def test_a_prober_that_cannot_start_leaves_its_guards_guarding_in_process(
    server: FleetServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: no process to spare (EMFILE, ENOMEM) never means an unguarded run."""
    import rollout.engine.prober as prober_module

    def no_process(*_args: object, **_kwargs: object) -> subprocess.Popen[bytes]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(prober_module.subprocess, "Popen", no_process)
    sink, trips = Collect(), []
    monitor, runner = _monitor(server, tmp_path, sink, trips)
    monitor.start()
    try:
        lagging = sink.kinds(EventKind.GUARD_LAGGING)
        assert {e.host for e in lagging} == {"h1", "h2", "h3"}, lagging
        assert all("cannot start the prober process (Too many open files)" in e.data["reason"] for e in lagging)
        assert monitor.wait_all_green(20)
        server.hanging.add("h3")
        deadline = time.monotonic() + 20
        while not trips and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        monitor.stop()
        runner.close()
    assert trips == ["h3"], trips
