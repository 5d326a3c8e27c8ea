"""Guards at fleet scale: one probe scheduler, bounded threads, lag reported and never a failure.

Real parts: the rollout CLI in its own process, 300 local hosts, and one HTTP/1.1
keep-alive server on 127.0.0.1 (an asyncio server in one thread, so that 300 kept
connections cost the test no threads either). The invariants:

- guards on a 300-host fleet keep their pace and rollout's thread count stays bounded
  (it used to be a thread per guard per host, and starved probes reported false failures);
- a path that stops answering trips its host's guard, and only that one, within
  every x fail_after + timeout (plus a margin for a loaded machine);
- a probe whose deadline ran out while the prober itself was starved is inconclusive and
  reported as lag, never a failing state.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from rollout.engine.events import Bus
from rollout.engine.guards import GREEN, GuardMonitor
from rollout.engine.probe import CheckRunner
from rollout.engine.scheduler import ProbeScheduler, Slot
from rollout.event import Event, EventKind
from rollout.executors.base import Executor
from rollout.model import Guard
from tests.helpers import events, is_event, start_rollout, wait_for_event, write_plan

HOSTS = [f"h{i:03d}" for i in range(300)]
THREAD_CEILING = 40


class FleetServer:
    """One HTTP/1.1 server with keep-alive: /health/<host> answers 200, unless told to hang or lag."""

    def __init__(self) -> None:
        self.hanging: set[str] = set()
        self.delay = 0.0
        self.requests = 0
        self.got_request = threading.Event()
        self.ready = threading.Event()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.requests += 1
                self.got_request.set()
                if path.rsplit("/", 1)[-1] in self.hanging:
                    await asyncio.sleep(3600)  # stops answering, connection held open
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n")
                writer.write(b'{"ok":true}')
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    def close(self) -> None:
        """Stop serving (held requests are dropped with the loop)."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def server() -> Iterator[FleetServer]:
    srv = FleetServer()
    yield srv
    srv.close()


def _fleet_plan(
    tmp_path: Path, port: int, *, every: str, timeout: str, waves: list[Any], bake: str, hosts: list[str] = HOSTS
) -> Path:
    plan: dict[str, Any] = {
        "version": 1,
        "name": "fleet",
        "environments": {
            "demo": {
                "rehearsal": True,
                "connection": "local",
                "hosts": {h: ({"groups": ["canary"]} if h == "h007" else {}) for h in hosts},
            }
        },
        "strategy": {"waves": waves, "bake": bake, "concurrency": 8},
        "guards": [
            {
                "name": "health",
                "http": {"url": f"http://127.0.0.1:{port}/health/{{{{ host }}}}"},
                "every": every,
                "timeout": timeout,
                "fail_after": 3,
            }
        ],
        "steps": [{"name": "release", "run": "true", "rollback": "true"}],
    }
    return write_plan(tmp_path / "plan.yaml", plan)


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def _watch_threads(proc: Any, peak: list[int], done: threading.Event) -> None:
    while not done.is_set() and proc.poll() is None:
        try:
            peak[0] = max(peak[0], _threads(proc.pid))
        except (FileNotFoundError, ProcessLookupError):
            return
        done.wait(0.05)


def _run_watched(
    state: Path, plan: Path, server: FleetServer | None = None, hang: str | None = None
) -> tuple[int, str, int, float]:
    """Run the CLI; returns (exit code, output, peak thread count, wall time the path was hung)."""
    proc = start_rollout("run", plan, "--env", "demo", "--state-dir", state)
    peak, done = [0], threading.Event()
    watcher = threading.Thread(target=_watch_threads, args=(proc, peak, done), daemon=True)
    watcher.start()
    hung_at = 0.0
    try:
        if hang is not None and server is not None:
            wait_for_event(state, is_event("bake.start"), timeout=60, proc=proc)
            server.hanging.add(hang)
            hung_at = time.time()  # the journal's `ts` is wall-clock UTC
            wait_for_event(state, is_event("guard.state", outcome="tripped"), timeout=60, proc=proc)
            server.hanging.clear()  # the service recovers once the change is rolled back
        out, err = proc.communicate(timeout=120)
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        watcher.join(5)
    return proc.returncode, out + err, peak[0], hung_at


def test_300_guarded_hosts_stay_green_on_time_with_bounded_threads(server: FleetServer, tmp_path: Path) -> None:
    plan = _fleet_plan(tmp_path, server.port, every="500ms", timeout="1s", waves=["100%"], bake="3s")
    state = tmp_path / "state"
    code, output, peak, _ = _run_watched(state, plan)
    assert code == 0, output
    evts = events(state)
    assert not [e for e in evts if e["kind"] == "guard.state" and e["outcome"] != GREEN], "every guard stayed green"
    assert not [e for e in evts if e["kind"] == "guard.lagging"], "no probe fell behind"
    assert 0 < peak < THREAD_CEILING, f"peak threads {peak}"
    summary = next(e for e in evts if e["kind"] == "guards.stop")
    assert summary["data"]["probes"] >= len(HOSTS), summary
    assert summary["data"]["inconclusive"] == 0, summary
    assert [e["kind"] for e in evts].index("guards.stop") < [e["kind"] for e in evts].index("run.end")
    assert server.requests >= len(HOSTS)


def test_a_path_that_stops_answering_trips_only_its_host_within_the_bound(server: FleetServer, tmp_path: Path) -> None:
    every, timeout, fail_after = 0.5, 0.4, 3
    plan = _fleet_plan(tmp_path, server.port, every="500ms", timeout="400ms", waves=["canary", "100%"], bake="60s")
    state = tmp_path / "state"
    code, output, peak, hung_at = _run_watched(state, plan, server, hang="h007")
    assert code == 1, output
    evts = events(state)
    bad = [e for e in evts if e["kind"] == "guard.state" and e["outcome"] != GREEN]
    assert {e["host"] for e in bad} == {"h007"}, [(e["host"], e["outcome"]) for e in bad]
    tripped = next(e for e in bad if e["outcome"] == "tripped")
    assert "timed out after 0.4s" in tripped["data"]["summary"]
    margin = 2.0  # a loaded 2-core machine, and the trip's own journal write
    took = datetime.fromisoformat(tripped["ts"].replace("Z", "+00:00")).timestamp() - hung_at
    assert took < every * fail_after + timeout + margin, took
    assert 0 < peak < THREAD_CEILING, f"peak threads {peak}"


# --- a starved prober --------------------------------------------------------------------


class Collect:
    """A bus sink that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def emit(self, event: Event, *, sync: bool) -> None:
        """Keep it."""
        with self.lock:
            self.events.append(event)

    def kinds(self, kind: str) -> list[Event]:
        """The events of one kind so far."""
        with self.lock:
            return [e for e in self.events if e.kind == kind]


def _block(blocked: threading.Event, seconds: float) -> None:
    """Hold the prober's loop, as a saturated machine would."""
    blocked.set()
    time.sleep(seconds)


def _no_executor(host: str) -> Executor:
    raise AssertionError("HTTP guards never need the host's executor")


def test_a_starved_prober_reports_lag_and_inconclusive_probes_never_a_failure(
    server: FleetServer, tmp_path: Path
) -> None:
    server.delay = 0.1  # the target answers well within the timeout, every time
    guard = Guard.model_validate(
        {
            "name": "health",
            "http": {"url": f"http://127.0.0.1:{server.port}/health/h1"},
            "every": "200ms",
            "timeout": "300ms",
            "fail_after": 1,
        }
    )
    sink = Collect()
    trips: list[str] = []
    runner = CheckRunner(tmp_path)
    monitor = GuardMonitor(
        {"h1": (guard,)},
        _no_executor,
        runner,
        Bus(None, [sink]),
        on_trip=lambda h, *_: trips.append(h),
        on_fatal=lambda e: None,
    )
    monitor.start()
    try:
        assert monitor.wait_all_green(20)
        (scheduler,) = monitor._schedulers
        assert isinstance(scheduler, ProbeScheduler)
        for _ in range(3):
            # starve the loop (as a saturated machine would) while a probe is in flight
            server.got_request.clear()
            assert server.got_request.wait(10)
            blocked = threading.Event()
            scheduler._loop.call_soon_threadsafe(_block, blocked, 1.0)
            assert blocked.wait(10)
            assert monitor.wait_all_green(20)
        deadline = time.monotonic() + 20
        while not sink.kinds(EventKind.GUARD_CAUGHT_UP) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        monitor.stop()
        runner.close()
    assert not trips, "a starved prober tripped a healthy guard"
    assert not [e for e in sink.kinds(EventKind.GUARD_STATE) if e.outcome != GREEN]
    assert monitor.stats.inconclusive >= 1, monitor.stats.summary()
    lagging = sink.kinds(EventKind.GUARD_LAGGING)
    assert lagging, "the starved probes were reported as lag"
    assert lagging[0].host == "h1"
    assert lagging[0].data["late_ms"] > 200, lagging
    assert sink.kinds(EventKind.GUARD_CAUGHT_UP), "the end of the lag episode is said too"


def test_probe_phases_are_reproducible_and_spread_across_every() -> None:
    guard = Guard.model_validate({"name": "g", "tcp": {"host": "127.0.0.1", "port": 1}, "every": "1s"})
    phases = [Slot(f"h{i}", 0, guard).phase for i in range(1000)]
    assert phases == [Slot(f"h{i}", 0, guard).phase for i in range(1000)]
    assert all(0 <= p < 1.0 for p in phases)
    buckets = [0] * 10
    for p in phases:
        buckets[int(p * 10)] += 1
    assert min(buckets) > 50, buckets  # no decile empty or crowded: 1,000 probes do not fire at once


def test_command_guards_on_one_host_never_overlap_and_skipped_probes_are_lag(tmp_path: Path) -> None:
    """At most one command probe in flight per host: a guard must never starve the steps on its host."""
    from rollout.executors.base import Target
    from rollout.executors.local import LocalExecutor

    probe = (
        f"mkdir {tmp_path}/in-flight 2>/dev/null || echo overlap >> {tmp_path}/overlaps; "
        f"echo x >> {tmp_path}/probes; sleep 0.3; rmdir {tmp_path}/in-flight"
    )
    guards = tuple(
        Guard.model_validate({"name": f"g{i}", "command": probe, "every": "100ms", "timeout": "5s"}) for i in range(2)
    )
    executor = LocalExecutor(Target("h1"))
    sink = Collect()
    runner = CheckRunner(tmp_path)
    monitor = GuardMonitor(
        {"h1": guards},
        lambda host: executor,
        runner,
        Bus(None, [sink]),
        on_trip=lambda *a: None,
        on_fatal=lambda e: None,
    )
    monitor.start()
    try:
        assert monitor.wait_all_green(30)
        deadline = time.monotonic() + 30
        while len((tmp_path / "probes").read_text().split()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        monitor.stop()
        runner.close()
        executor.close()
    assert not (tmp_path / "overlaps").exists(), "two guard probes ran at once on one host"
    assert monitor.stats.summary()["skipped"] > 0
    reasons = {e.data["reason"] for e in sink.kinds(EventKind.GUARD_LAGGING)}
    assert reasons & {"host busy", "previous probe still running"}, reasons
