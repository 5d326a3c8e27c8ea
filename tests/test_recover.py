"""The orchestrator dies (SIGKILL) at each kind of journal point; `rollout recover` finishes the job.

Also: recover refuses a plan that changed since the run, and `rollout verify` detects any
edit, deletion or reordering of a real run's journal.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.cli.app import run_cli
from tests.helpers import (
    REPO,
    Fleet,
    PlanSpec,
    cli_env,
    events,
    is_event,
    kill_pidfile,
    pid_alive,
    rollout,
    run_args,
    run_id_of,
    running_fleet,
    start_rollout,
    wait_for_event,
    wait_for_file,
    write_exchange_plan,
    write_plan,
)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path / "fleet", 3) as f:
        yield f


def _slow(pidfile: Path) -> str:
    # the step's shell becomes the sleep, so the test can kill the orphan the dead run left
    return f"echo $$ > {pidfile}; exec sleep 30"


# A kill point: the plan, the journal event to kill at, and the file a step's process writes once
# it runs (the kill waits for it too: an intent is journaled *before* its command starts, so
# killing at the event alone would, under load, kill before the process the point is about).
KillPoint = tuple[PlanSpec, Callable[[dict[str, Any]], bool], Path | None]


def after_intent(tmp: Path) -> KillPoint:
    step = {"name": "slow", "run": _slow(tmp / "orphan.pid"), "rollback": "true", "timeout": "60s"}
    return PlanSpec(extra_steps=[step]), is_event("step.intent", step="slow"), tmp / "orphan.pid"


def after_outcome(tmp: Path) -> KillPoint:
    slow_verify = {"name": "slow check", "command": _slow(tmp / "orphan.pid"), "timeout": "60s"}
    spec = PlanSpec(activate_verify_extra=[slow_verify], probe_verify=False)
    return spec, is_event("step.result", step="activate-release", outcome="ok"), tmp / "orphan.pid"


def during_rollback(tmp: Path) -> KillPoint:
    # the activate rollback is slow the first time only (the dead run's attempt)
    marker = tmp / "rollback-started"
    prefix = f"if [ ! -f {marker} ]; then touch {marker}; echo $$ > {tmp / 'orphan.pid'}; sleep 30; fi; "
    fail = {"name": "post-check", "run": "false", "rollback": "true", "timeout": "5s"}
    spec = PlanSpec(extra_steps=[fail], activate_rollback_prefix=prefix)
    return spec, is_event("rollback.intent", step="activate-release"), tmp / "orphan.pid"


def during_bake(tmp: Path) -> KillPoint:
    return PlanSpec(bake="60s"), is_event("bake.start", wave=1), None


@pytest.mark.parametrize("point", [after_intent, after_outcome, during_rollback, during_bake])
def test_recover_after_sigkill_puts_every_target_back(
    tmp_path: Path, fleet: Fleet, point: Callable[[Path], KillPoint]
) -> None:
    spec, killed_at, running = point(tmp_path)
    plan = write_exchange_plan(tmp_path, fleet, spec)
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state))
    try:
        wait_for_event(state, killed_at, proc=proc)
        if running is not None:
            wait_for_file(running, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        run_id = run_id_of(state)
        assert "run.end" not in [e["kind"] for e in events(state)]

        result = rollout("recover", run_id, "--state-dir", state)
        assert result.returncode == 1, result.stdout + result.stderr
        # What the dead run left running (its slow step, verify or rollback) was ended by recover.
        orphan = tmp_path / "orphan.pid"
        if orphan.exists():
            assert not pid_alive(int(orphan.read_text())), "recover left the dead run's command running"
        assert "targets are back where they started" in result.stdout
        for host in fleet.hosts:
            assert fleet.untouched(host), host
        evts = events(state)
        assert evts[-1]["kind"] == "run.end"
        assert evts[-1]["outcome"] == "rolled_back"
        assert rollout("verify", run_id, "--state-dir", state).returncode == 0
    finally:
        proc.kill()
        kill_pidfile(tmp_path / "orphan.pid")


def test_recover_refuses_a_changed_plan_and_accepts_the_original(tmp_path: Path, fleet: Fleet) -> None:
    spec, killed_at, _ = during_bake(tmp_path)
    plan = write_exchange_plan(tmp_path, fleet, spec)
    # the digest covers the file's name too: the operator's kept copy has the same name
    (tmp_path / "original").mkdir()
    original = tmp_path / "original" / plan.name
    shutil.copyfile(plan, original)
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state))
    try:
        wait_for_event(state, killed_at, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    run_id = run_id_of(state)
    changed = json.loads(plan.read_text())
    changed["strategy"]["bake"] = "1s"
    write_plan(plan, changed)

    refused = rollout("recover", run_id, "--state-dir", state)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "--plan" in refused.stderr
    assert not fleet.untouched("gw-1"), "a refused recover must not touch the targets"

    result = rollout("recover", run_id, "--state-dir", state, "--plan", original)
    assert result.returncode == 1, result.stdout + result.stderr
    for host in fleet.hosts:
        assert fleet.untouched(host), host


# --- the journal's hash chain ---------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("chain")
    plan = tmp / "plan.yaml"
    plan.write_text(
        "name: chain\nenvironments: {demo: {rehearsal: true, hosts: {h1: {}, h2: {}}}}\nsteps:\n"
        + "".join(f"  - {{name: s{i}, run: 'true', rollback: 'true'}}\n" for i in range(3))
    )
    state = tmp / "state"
    assert run_cli(run_args(plan, state)) == 0
    return state, run_id_of(state)


def _mutations() -> list[tuple[str, Callable[[list[bytes]], list[bytes]]]]:
    def edit(i: int) -> Callable[[list[bytes]], list[bytes]]:
        def apply(lines: list[bytes]) -> list[bytes]:
            obj = json.loads(lines[i])
            obj["outcome"] = "ok" if obj.get("outcome") != "ok" else "failed"
            return [*lines[:i], json.dumps(obj, separators=(",", ":")).encode(), *lines[i + 1 :]]

        return apply

    def delete(i: int) -> Callable[[list[bytes]], list[bytes]]:
        return lambda lines: lines[:i] + lines[i + 1 :]

    def swap(i: int) -> Callable[[list[bytes]], list[bytes]]:
        return lambda lines: [*lines[:i], lines[i + 1], lines[i], *lines[i + 2 :]]

    return [
        ("edit first", edit(0)),
        ("edit middle", edit(5)),
        ("edit last", edit(-1)),
        ("delete first", delete(0)),
        ("delete middle", delete(5)),
        ("delete last", delete(-1)),
        ("swap first two", swap(0)),
        ("swap middle", swap(5)),
        ("swap last two", swap(-2)),
    ]


def test_an_untouched_journal_verifies(finished_run: tuple[Path, str]) -> None:
    state, run_id = finished_run
    assert run_cli(["verify", run_id, "--state-dir", str(state)]) == 0


@pytest.mark.parametrize(("name", "mutate"), _mutations(), ids=[n for n, _ in _mutations()])
def test_any_edit_deletion_or_reordering_of_the_journal_is_detected(
    tmp_path: Path, finished_run: tuple[Path, str], name: str, mutate: Callable[[list[bytes]], list[bytes]]
) -> None:
    state, run_id = finished_run
    copy = tmp_path / "state"
    shutil.copytree(state, copy)
    journal = copy / "runs" / run_id / "journal.jsonl"
    lines = journal.read_bytes().splitlines()
    journal.write_bytes(b"\n".join(mutate(lines)) + b"\n")
    assert run_cli(["verify", run_id, "--state-dir", str(copy)]) == 5, name


# --- recover after a failed rollback, after a death before run.start, and twice at once ------------


def _local_plan(tmp: Path, *, name: str = "settle", s1_rollback: str = "true", s2_run: str = "true") -> Path:
    """A two-step plan on one local host; each step leaves a file that its rollback removes."""
    plan = tmp / "plan.yaml"
    plan.write_text(
        f"name: {name}\n"
        f"vars: {{dir: '{tmp}', fail: 'no'}}\n"
        "environments: {demo: {rehearsal: true, hosts: {h1: {}}}}\n"
        "steps:\n"
        f"  - {{name: s1, run: 'touch {{{{ dir }}}}/s1', rollback: '{s1_rollback}', timeout: 60s}}\n"
        f"  - {{name: s2, run: '{s2_run}', rollback: 'rm -f {{{{ dir }}}}/s2', timeout: 60s}}\n"
    )
    return plan


def _run_ends(state: Path, run_id: str) -> list[str]:
    return [e["outcome"] for e in events(state, run_id) if e["kind"] == "run.end"]


def test_recover_after_a_failed_rollback_retries_what_remains_in_the_same_journal(tmp_path: Path) -> None:
    broken = tmp_path / "rollback-is-broken"
    broken.touch()
    plan = _local_plan(
        tmp_path,
        s1_rollback=f"test ! -e {broken} && rm -f {{{{ dir }}}}/s1",
        s2_run="touch {{ dir }}/s2; test {{ fail }} = no",
    )
    state = tmp_path / "state"
    first = rollout(*run_args(plan, state, "--var", "fail=yes"))
    assert first.returncode == 4, first.stdout + first.stderr
    run_id = run_id_of(state)
    assert (tmp_path / "s1").exists()
    assert not (tmp_path / "s2").exists()

    broken.unlink()  # the operator fixes what made the rollback fail
    result = rollout("recover", run_id, "--state-dir", state)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "targets are back where they started" in result.stdout
    assert not (tmp_path / "s1").exists()

    evts = events(state, run_id)
    assert _run_ends(state, run_id) == ["rollback_failed", "rolled_back"]
    retried = [e for e in evts if e["kind"] == "rollback.intent" and e["step"] == "s1"]
    assert len(retried) == 2  # the failed attempt, then the retry, in the same chained journal
    assert not [e for e in evts if e["kind"] == "rollback.intent" and e["step"] == "s2"][1:]
    assert rollout("verify", run_id, "--state-dir", state).returncode == 0

    # every reader takes the last run.end as the outcome
    runs = json.loads(rollout("runs", "--json", "--state-dir", state).stdout)
    assert [r["outcome"] for r in runs] == ["rolled_back"]
    report = json.loads(rollout("report", run_id, "--format", "json", "--state-dir", state).stdout)
    assert report["summary"]["outcome"] == "rolled_back"
    assert report["rollback"]["remaining"] == {}
    timeline = rollout("timeline", run_id, "--state-dir", state).stdout.splitlines()
    assert "run ended: ROLLED_BACK" in timeline[-1] or "run ended: ROLLED_BACK" in timeline[-2]

    again = rollout("recover", run_id, "--state-dir", state)
    assert again.returncode == 0
    assert "nothing to recover" in again.stdout
    assert _run_ends(state, run_id) == ["rollback_failed", "rolled_back"]


# A rollout process that SIGKILLs itself at a point of the journal's beginning: before the
# journal file exists, right after creating it (empty), or right after writing run.start.
KILL_AT_START = """
import os, signal, sys
from rollout.journal import Journal
point = os.environ["KILL_AT"]
create, append = Journal.create.__func__, Journal.append

def killing_create(cls, *args, **kwargs):
    if point == "before-journal":
        os.kill(os.getpid(), signal.SIGKILL)
    journal = create(cls, *args, **kwargs)
    if point == "empty-journal":
        os.kill(os.getpid(), signal.SIGKILL)
    return journal

def killing_append(self, event, *, sync=False):
    record = append(self, event, sync=sync)
    if point == "after-run-start":
        os.kill(os.getpid(), signal.SIGKILL)
    return record

Journal.create = classmethod(killing_create)
Journal.append = killing_append
from rollout.cli.app import run_cli
sys.exit(run_cli(sys.argv[1:]))
"""


@pytest.mark.parametrize("point", ["before-journal", "empty-journal", "after-run-start"])
def test_a_run_killed_at_or_before_run_start_is_settled_by_recover_as_nothing_applied(
    tmp_path: Path, point: str
) -> None:
    plan = _local_plan(tmp_path)
    state = tmp_path / "state"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_START, *run_args(plan, state)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**cli_env(KILL_AT=point), "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_id = run_id_of(state)
    assert not (tmp_path / "s1").exists()

    # the dead run blocks the next one, from any state directory, until it is settled
    elsewhere = tmp_path / "elsewhere"
    refused = rollout(*run_args(plan, elsewhere))
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert f"rollout recover {run_id}" in refused.stderr

    result = rollout("recover", run_id, "--state-dir", state)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NOTHING APPLIED" in result.stdout
    kinds = [e["kind"] for e in events(state, run_id)]
    assert kinds[0] == "run.start"
    assert kinds.count("run.start") == 1
    assert _run_ends(state, run_id) == ["not_started"]
    verified = rollout("verify", run_id, "--state-dir", state)
    assert verified.returncode == 0, verified.stdout
    assert "no run.end" not in verified.stdout
    assert rollout("recover", run_id, "--state-dir", state).returncode == 0  # settled for good

    after = rollout(*run_args(plan, elsewhere))
    assert after.returncode == 0, after.stdout + after.stderr


def _open_lock_files(pid: int) -> list[str]:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            targets.append(os.readlink(fd))
    return [t for t in targets if t.endswith(".lock")]


def test_two_recovers_at_once_end_the_run_once(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # s1's rollback holds the first recover (under the lock) until the test opens the gate
    plan = _local_plan(
        tmp_path,
        s1_rollback=f"while [ ! -e {gate} ]; do sleep 0.05; done; rm -f {{{{ dir }}}}/s1",
        s2_run="echo $$ > {{ dir }}/s2.pid; exec sleep 30",
    )
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state))
    second: subprocess.Popen[str] | None = None
    try:
        wait_for_event(state, is_event("step.intent", step="s2"), proc=proc)
        wait_for_file(tmp_path / "s2.pid", proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        kill_pidfile(tmp_path / "s2.pid")
        run_id = run_id_of(state)

        first = start_rollout("recover", run_id, "--state-dir", state)
        wait_for_event(state, is_event("rollback.intent", step="s1"), proc=first)
        second = start_rollout("recover", run_id, "--state-dir", state, "--lock-timeout", "60s")
        # once the second has the lock file open it is past every check it makes before the lock
        deadline = time.monotonic() + 20
        while not _open_lock_files(second.pid):
            assert second.poll() is None, second.communicate()
            assert time.monotonic() < deadline, "the second recover never reached the lock"
            time.sleep(0.02)
        gate.touch()

        out1, err1 = first.communicate(timeout=60)
        out2, err2 = second.communicate(timeout=60)
        assert first.returncode == 1, out1 + err1
        assert second.returncode == 0, out2 + err2
        assert "nothing to recover" in out2
        assert _run_ends(state, run_id) == ["rolled_back"]
        assert [e["kind"] for e in events(state, run_id)].count("recover.start") == 1
        assert rollout("verify", run_id, "--state-dir", state).returncode == 0
    finally:
        gate.touch()
        proc.kill()
        if second is not None:
            second.kill()
        kill_pidfile(tmp_path / "s2.pid")
