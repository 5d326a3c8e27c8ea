"""Cost that grows with steps and hosts: per-step work stays flat, the host pool is sized by concurrency.

Invariants (no timing here; the times are in bench/bench_steps.py):
- the work a run does per step does not grow with the number of steps already applied;
- a wave runs min(concurrency, hosts) host threads at once, whatever the fleet size, and
  a `concurrency` above the old fixed cap of 64 is honoured.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from rollout.engine.apply import Engine
from rollout.engine.events import Bus, ListSink
from rollout.engine.outcomes import AppliedStep
from rollout.engine.prepare import prepare_schedule
from rollout.event import Outcome
from rollout.planfile import load_plan
from tests.test_engine_unit import _engine


def _step_plan(n: int) -> str:
    return "".join(f"  - {{name: s{i}, run: do-{i}, rollback: undo-{i}}}\n" for i in range(n))


def _comparisons_for(tmp_path: Path, n: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many AppliedStep comparisons a one-host run of n steps makes."""
    calls = 0
    original = AppliedStep.__eq__

    def counting(self: AppliedStep, other: object) -> bool:
        nonlocal calls
        calls += 1
        return original(self, other)

    monkeypatch.setattr(AppliedStep, "__eq__", counting)
    work = tmp_path / str(n)
    work.mkdir()
    engine, fleet, _ = _engine(work, _step_plan(n), hosts=1)
    assert engine.run().outcome == Outcome.SUCCEEDED
    assert len(fleet.log) == n
    monkeypatch.setattr(AppliedStep, "__eq__", original)
    return calls


def test_per_step_work_does_not_grow_with_the_steps_already_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tracking a step on its host's rollback stack used to scan the stack: n^2/2 comparisons.
    small = _comparisons_for(tmp_path, 100, monkeypatch)
    large = _comparisons_for(tmp_path, 400, monkeypatch)
    assert large <= 4 * small + 4, f"4x the steps cost {large} comparisons against {small}: not linear"


def _host_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("host"))


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.parametrize(("hosts", "concurrency"), [(12, 5), (80, 70)])
def test_a_wave_runs_exactly_min_concurrency_hosts_threads(tmp_path: Path, hosts: int, concurrency: int) -> None:
    # Every step blocks on a shared lock the test holds (no CPU while waiting), so the hosts
    # in flight are exactly the host threads the pool has; 70 > the old fixed cap of 64.
    gate = tmp_path / "gate"
    gate.touch()
    started = tmp_path / "started"
    started.mkdir()
    host_map = ", ".join(f"h{i}: {{}}" for i in range(hosts))
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: pool\n"
        f"environments: {{lab: {{hosts: {{{host_map}}}}}}}\n"
        f"strategy: {{waves: ['100%'], concurrency: {concurrency}}}\n"
        "steps:\n"
        f"  - name: wait\n    run: mktemp {started}/XXXXXX >/dev/null && flock -s {gate} true\n"
        "    rollback: 'true'\n    timeout: 60s\n"
    )
    engine = Engine(prepare_schedule(load_plan(plan), "lab", run_id="pool"), Bus(ListSink()))
    result: list[str] = []
    baseline = _tasks()
    with gate.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        runner = threading.Thread(target=lambda: result.append(engine.run().outcome), daemon=True)
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while len(os.listdir(started)) < concurrency and runner.is_alive():
                assert time.monotonic() < deadline, f"only {len(os.listdir(started))} of {concurrency} hosts started"
                time.sleep(0.02)
            threads, tasks = _host_threads(), _tasks()
            in_flight = len(os.listdir(started))
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
    runner.join(60)
    assert result == [Outcome.SUCCEEDED]
    assert in_flight == concurrency, "every host thread holds one host; the others wait their turn"
    assert threads == concurrency
    # The process grew by the host threads and the run's own thread, not by one per host.
    assert tasks - baseline <= concurrency + 2, f"{tasks - baseline} new threads for {hosts} hosts"
    assert len(os.listdir(started)) == hosts
