"""Every process a step starts dies with the step or is recorded, and recover ends it first.

Real processes throughout: `rollout run` as a child process SIGKILLed mid-step, then
`rollout recover`; the process scan against real marked processes (one escaped with
setsid); and an SSH connection dropped mid-command against the real sshd fixture.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from rollout.engine.apply import Engine
from rollout.engine.events import Bus
from rollout.engine.prepare import prepare_schedule
from rollout.engine.processes import (
    InDoubtCommand,
    command_env,
    end_script,
    in_doubt_commands,
    parse_scan,
    scan_script,
    select_processes,
)
from rollout.errors import ExitStatus
from rollout.event import Event, EventKind
from rollout.executors import Target, open_executor
from rollout.planfile import load_plan
from tests.conftest_sshd import SshdServer
from tests.helpers import (
    events,
    marked_pids,
    pid_alive,
    rollout,
    run_args,
    run_id_of,
    start_rollout,
    wait_for_event,
    write_plan,
)
from tests.test_engine_journal_failure import FailingJournal

HOSTS = ("h1", "h2", "h3", "h4")
# The slow step waits for this file instead of a fixed time, so that however loaded the
# machine, the dead run's shells are still mid-step when recover looks for them. The test
# creates it once recover has finished: a shell still alive then would write v2.
GATE = "release"
#: Shell that prints the pid of the nearest sshd process above it (the one serving its
#: connection). It writes nothing to stderr: once the connection is gone, that would be a
#: broken pipe, and SIGPIPE would end the command.
NEAREST_SSHD = (
    '_p=$PPID; while [ "$(ps -o comm= -p $_p 2>/dev/null)" != sshd ]; do '
    '_p=$(ps -o ppid= -p $_p 2>/dev/null); [ -n "$_p" ] && [ "$_p" -gt 1 ] || break; done; echo $_p'
)


def gate_wait(gate: Path) -> str:
    """Shell that blocks until `gate` exists (a bounded loop: the test never forgets to open it)."""
    return f"n=0; while [ ! -e {gate} ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done"


def slow_plan(tmp_path: Path) -> Path:
    """Four local hosts at v1; one step that writes v2 once the gate opens; its rollback writes v1."""
    work = tmp_path / "hosts"
    work.mkdir()
    for host in HOSTS:
        (work / f"{host}.version").write_text("v1\n")
    plan: dict[str, Any] = {
        "version": 1,
        "name": "slow-upgrade",
        "vars": {"file": f"{work}/{{{{ host }}}}.version"},
        "environments": {"demo": {"rehearsal": True, "connection": "local", "hosts": {h: {} for h in HOSTS}}},
        "strategy": {"waves": ["100%"], "concurrency": len(HOSTS)},
        "steps": [
            {
                "name": "upgrade",
                "run": f"echo $$ > {{{{ file }}}}.pid; {gate_wait(tmp_path / GATE)}; echo v2 > {{{{ file }}}}",
                "verify": [{"name": "on v2", "command": {"run": "cat {{ file }}", "stdout": "^v2$"}}],
                "rollback": "echo v1 > {{ file }}",
                "timeout": "30s",
            }
        ],
    }
    return write_plan(tmp_path / "plan.yaml", plan)


def test_recover_ends_the_dead_runs_step_shells_before_rolling_back(tmp_path: Path) -> None:
    plan = slow_plan(tmp_path)
    work = tmp_path / "hosts"
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state))
    try:
        # Every host's step shell is running: kill the orchestrator mid-step.
        wait_for_event(state, lambda e: all((work / f"{h}.version.pid").exists() for h in HOSTS), proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        run_id = run_id_of(state)
        shells = [int((work / f"{h}.version.pid").read_text()) for h in HOSTS]
        assert all(pid_alive(p) for p in shells), "the dead run's step shells should still be running"

        result = rollout("recover", run_id, "--state-dir", state)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "targets are back where they started" in result.stdout
        assert [p for p in shells if pid_alive(p)] == []
        assert marked_pids(run_id) == []
        # The step may now complete: any shell the dead run left would write v2. None is left.
        (tmp_path / GATE).touch()
        for host in HOSTS:
            assert (work / f"{host}.version").read_text() == "v1\n", host

        evts = events(state)
        (found,) = [e for e in evts if e["kind"] == "recover.processes"]
        assert found["outcome"] == "ended"
        assert {p["host"] for p in found["data"]["ended"]} == set(HOSTS)
        assert {p["role"] for p in found["data"]["ended"]} == {"step"}
        kinds = [e["kind"] for e in evts]
        # Ended before any in-doubt step is judged or rolled back.
        assert kinds.index("recover.processes") < kinds.index("step.in_doubt") < kinds.index("rollback.start")
        assert rollout("verify", run_id, "--state-dir", state).returncode == 0
    finally:
        proc.kill()
        for pid in marked_pids(run_id_of(state)) if (state / "runs").is_dir() else []:
            os.kill(pid, signal.SIGKILL)


def test_each_step_and_rollback_process_is_journaled_with_its_group_and_marker(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    plan: dict[str, Any] = {
        "version": 1,
        "name": "marked",
        "environments": {"demo": {"rehearsal": True, "connection": "local", "hosts": {"h1": {}}}},
        "steps": [
            {
                "name": "env",
                "run": f"cut -d' ' -f5 /proc/$$/stat > {work}/pgid; env > {work}/step.env",
                "rollback": f"env > {work}/rollback.env",
            },
            {"name": "fail", "run": "false", "rollback": "true"},
        ],
    }
    state = tmp_path / "state"
    result = rollout(*run_args(write_plan(tmp_path / "plan.yaml", plan), state))
    assert result.returncode == 1, result.stdout + result.stderr
    evts = events(state)
    run_id = run_id_of(state)
    intent = next(e for e in evts if e["kind"] == "step.intent" and e["step"] == "env")
    started = next(e for e in evts if e["kind"] == "process.start" and e["step"] == "env")
    assert evts.index(intent) < evts.index(started)
    assert started["data"]["role"] == "step"
    assert started["data"]["attempt_id"] == intent["data"]["attempt_id"]
    assert started["data"]["pgid"] == int((work / "pgid").read_text())
    step_env = (work / "step.env").read_text().splitlines()
    assert f"ROLLOUT_RUN={run_id}" in step_env
    assert f"ROLLOUT_ATTEMPT_ID={intent['data']['attempt_id']}" in step_env
    rollback_intent = next(e for e in evts if e["kind"] == "rollback.intent" and e["step"] == "env")
    assert any(
        e["kind"] == "process.start" and e["data"]["role"] == "rollback" and e["step"] == "env"
        for e in evts[evts.index(rollback_intent) :]
    )
    assert f"ROLLOUT_ATTEMPT_ID={rollback_intent['data']['attempt_id']}" in (work / "rollback.env").read_text()


# --- the scan itself --------------------------------------------------------------------


def _event(kind: str, host: str, step: str, **data: Any) -> Event:
    return Event(kind, host=host, step=step, data=data)


def test_in_doubt_commands_are_those_with_an_intent_and_no_result() -> None:
    evts = [
        _event(EventKind.STEP_INTENT, "h1", "a", attempt_id="t1"),
        _event(EventKind.PROCESS, "h1", "a", attempt_id="t1", pgid=101, role="step"),
        _event(EventKind.STEP_RESULT, "h1", "a"),
        _event(EventKind.STEP_INTENT, "h1", "b", attempt_id="t2"),
        _event(EventKind.PROCESS, "h1", "b", attempt_id="t2", pgid=102, role="step"),
        _event(EventKind.STEP_INTENT, "h2", "a", attempt_id="t3"),  # died before its process was journaled
        _event(EventKind.ROLLBACK_INTENT, "h1", "a", attempt_id="t4"),
    ]
    assert in_doubt_commands(evts) == {
        "t2": InDoubtCommand("t2", "h1", "b", "step", 102),
        "t3": InDoubtCommand("t3", "h2", "a", "step", None),
        "t4": InDoubtCommand("t4", "h1", "a", "rollback", None),
    }


def test_the_scan_finds_marked_processes_even_after_setsid_and_ends_them(tmp_path: Path) -> None:
    run_id = f"test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, **command_env(run_id, "doubt")}
    pids = tmp_path / "pids"
    # A step shell with a child that escaped into its own session, as a daemon would.
    shell = subprocess.Popen(
        ["/bin/sh", "-c", f"setsid sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; exec sleep 60"],
        env=env,
        start_new_session=True,
    )
    done = subprocess.Popen(["sleep", "60"], env={**os.environ, **command_env(run_id, "finished")})
    other = subprocess.Popen(["sleep", "60"], env={**os.environ, **command_env("another-run", "doubt")})
    executor = open_executor(Target("local"))
    try:
        deadline = time.monotonic() + 10
        while (not pids.exists() or len(pids.read_text().split()) < 2) and time.monotonic() < deadline:
            time.sleep(0.01)
        escaped, leader = (int(p) for p in pids.read_text().split())
        found = parse_scan(executor.run(scan_script(run_id), timeout=30).stdout)
        assert found is not None
        targets = select_processes(found, run_id, {"doubt": object()})
        assert {p.pid for p in targets} == {escaped, leader}
        assert {p.pgid for p in targets} == {escaped, leader}  # two groups: the step's and the escaped one
        assert done.pid in {p.pid for p in found}  # found, but its command reported: left alone

        result = executor.run(end_script(sorted({p.pgid for p in targets}), [p.pid for p in targets], 5.0))
        assert result.ok
        shell.wait(timeout=5)
        assert not pid_alive(escaped)
        assert done.poll() is None
        assert other.poll() is None
    finally:
        for p in (shell, done, other):
            p.kill()
            p.wait()
        for pid in pids.read_text().split() if pids.exists() else []:
            if pid_alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        executor.close()


# --- a connection dropped mid-command ---------------------------------------------------


def _ssh_plan(tmp_path: Path, sshd: SshdServer) -> tuple[Path, Path]:
    work = tmp_path / "remote"
    work.mkdir()
    (work / "version").write_text("v1\n")
    plan: dict[str, Any] = {
        "version": 1,
        "name": "ssh-drop",
        "environments": {
            "demo": {
                "rehearsal": True,
                "connection": "ssh",
                "ssh": {
                    "user": sshd.user,
                    "port": sshd.port,
                    "identity_file": sshd.identity_file,
                    "known_hosts": sshd.known_hosts,
                    "connect_timeout": "5s",
                },
                "hosts": {"node": {"address": "127.0.0.1"}},
            }
        },
        "steps": [
            {
                "name": "upgrade",
                # The nearest sshd above the command serves this connection: killing it drops
                # the connection. (The command's parent is sshd for a session of its own, the
                # kept shell when that runs it.)
                "run": f"{NEAREST_SSHD} > {work}/sshd.pid; echo $$ > {work}/cmd.pid; "
                f"{gate_wait(tmp_path / GATE)}; echo v2 > {work}/version",
                "rollback": f"echo v1 > {work}/version",
                "timeout": "30s",
            }
        ],
    }
    return write_plan(tmp_path / "plan.yaml", plan), work


@pytest.mark.ssh
def test_a_dropped_ssh_connection_is_journaled_and_its_command_killed_before_the_rollback(
    tmp_path: Path, sshd: SshdServer
) -> None:
    plan, work = _ssh_plan(tmp_path, sshd)
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state))
    cmd_pid = None
    try:
        wait_for_event(state, lambda e: e["kind"] == "process.start" and e["step"] == "upgrade", proc=proc)
        deadline = time.monotonic() + 10
        while not (work / "cmd.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        cmd_pid = int((work / "cmd.pid").read_text())
        os.kill(int((work / "sshd.pid").read_text()), signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, out + err
        assert not pid_alive(cmd_pid), "the cut-off command still runs after the run ended"

        evts = events(state)
        (step_result,) = [e for e in evts if e["kind"] == "step.result"]
        assert step_result["outcome"] == "connection_lost"
        assert step_result["data"]["connection_lost"] is True
        assert step_result["data"]["in_doubt"] is True
        assert "lost" in step_result["data"]["stderr"]
        abort = next(e for e in evts if e["kind"] == "abort")
        assert (
            "lost its connection mid-command (whether it took effect is in doubt)" in abort["data"]["cause"]["summary"]
        )
        assert next(e for e in evts if e["kind"] == "rollback.result")["outcome"] == "ok"
        # The cut-off command may now complete: it is gone, so the host stays where it started.
        (tmp_path / GATE).touch()
        assert (work / "version").read_text() == "v1\n"
    finally:
        proc.kill()
        if cmd_pid is not None and pid_alive(cmd_pid):
            os.killpg(cmd_pid, signal.SIGKILL)


def test_a_command_whose_process_group_cannot_be_journaled_is_killed(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: unrecorded\n"
        "environments: {lab: {hosts: {h1: {}}}}\n"
        "steps:\n"
        f"  - {{name: one, run: 'echo $$ > {tmp_path}/pid; sleep 2; touch {tmp_path}/one', rollback: 'true'}}\n"
    )
    schedule = prepare_schedule(load_plan(plan), "lab", run_id="unrecorded")
    journal = FailingJournal(ok_events=4)  # run.start, prechecks.passed, wave.start, intent(one)
    result = Engine(schedule, Bus(journal)).run()
    assert result.exit_status == ExitStatus.JOURNAL
    assert [e.kind for e in journal.events][-1] == EventKind.STEP_INTENT
    # The command ran unrecorded for an instant only: it is dead before run() returns.
    pid_file = tmp_path / "pid"
    if pid_file.exists():
        assert not pid_alive(int(pid_file.read_text()))
    assert not (tmp_path / "one").exists()


@pytest.mark.ssh
def test_recover_ends_a_dead_runs_command_on_an_ssh_host_before_rolling_back(tmp_path: Path, sshd: SshdServer) -> None:
    plan, work = _ssh_plan(tmp_path, sshd)
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state))
    cmd_pid = None
    try:
        wait_for_event(state, lambda e: e["kind"] == "process.start" and e["step"] == "upgrade", proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        deadline = time.monotonic() + 10
        while not (work / "cmd.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        cmd_pid = int((work / "cmd.pid").read_text())
        assert pid_alive(cmd_pid), "the remote command should outlive the orchestrator"

        result = rollout("recover", run_id_of(state), "--state-dir", state)
        assert result.returncode == 1, result.stdout + result.stderr
        assert not pid_alive(cmd_pid), "recover left the dead run's remote command running"
        (found,) = [e for e in events(state) if e["kind"] == "recover.processes"]
        assert found["outcome"] == "ended"
        assert {(p["host"], p["step"]) for p in found["data"]["ended"]} == {("node", "upgrade")}
        (tmp_path / GATE).touch()
        assert (work / "version").read_text() == "v1\n"
    finally:
        proc.kill()
        if cmd_pid is not None and pid_alive(cmd_pid):
            os.killpg(cmd_pid, signal.SIGKILL)
