"""Commands run by the kept shell's supervisor (rollout/executors/ssh_kept.py, ssh_agent.py), against a real sshd.

Invariants:

- a command means the same there as on a session of its own: the same output, byte for
  byte and stream for stream, the same exit code (None for a signal, every signal, every
  time; 128+N when the command exits 128+N), the same environment, and a process group of
  its own that is reported, killed on a timeout and emptied when the command ends;
- the supervisor's own lines never show in a command's output, however the output is
  chunked or ends (a property, over generated outputs and chunkings);
- a command whose supervisor dies under it is never a success, and is not left running;
- where the host lacks perl or setsid, commands run on sessions of their own.
"""

from __future__ import annotations

import itertools
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout.executors import open_executor, ssh_agent
from rollout.executors.ssh import SshExecutor
from rollout.executors.ssh_kept import Frames
from tests.conftest_sshd import SshdServer, own_sshd
from tests.test_executors import is_running, wait_for_pids, wait_until_gone
from tests.test_ssh_control import DEADLINE, LEFT_BEHIND, control_shells, wait_for_shells

MARKER = b"\n@rollout-control:0123456789abcdef 7 "


@given(
    output=st.lists(st.binary(max_size=40) | st.sampled_from([b"\n", MARKER[:5], MARKER[:-3], b"7 S"]), max_size=12),
    start_at=st.integers(min_value=0),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_frames_give_back_the_output_byte_for_byte_however_it_is_chunked(
    output: list[bytes], start_at: int, cuts: list[int]
) -> None:
    writes = list(output)
    # The shell's start line lands between two of the command's writes; its end line last.
    writes.insert(start_at % (len(writes) + 1), MARKER + b"S 4242\n")
    stream = b"".join(writes) + MARKER + b"E 0\n" + b"a stray write after the end"
    frames = Frames(MARKER)
    got, lines = bytearray(), []
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for start, end in itertools.pairwise(edges):
        data, new = frames.feed(stream[start:end])
        got += data
        lines += new
    assert bytes(got) == b"".join(output)
    assert lines == [b"S 4242", b"E 0"]
    assert frames.done


@pytest.fixture(scope="module")
def kept_sshd() -> Iterator[SshdServer]:
    with tempfile.TemporaryDirectory(prefix="rollout-sshd-kept-") as tmp, own_sshd(Path(tmp)) as server:
        yield server


@pytest.fixture
def executor(kept_sshd: SshdServer) -> Iterator[SshExecutor]:
    ex = open_executor(kept_sshd.target("ssh-1"))
    assert isinstance(ex, SshExecutor)
    assert ex.check_ready(DEADLINE) is None
    try:
        yield ex
    finally:
        ex.close()


def test_commands_run_in_the_kept_shell_with_their_output_exact(executor: SshExecutor, kept_sshd: SshdServer) -> None:
    [shell] = wait_for_shells(kept_sshd, 1)
    first = executor.run("echo $PPID; printf 'no newline at the end'")
    # Run by the kept shell, not by a session of their own.
    assert first.stdout == f"{shell}\nno newline at the end"
    second = executor.run("printf 'err\\n' >&2; printf 'out'; exit 3")
    assert (second.stdout, second.stderr, second.exit_code) == ("out", "err\n", 3)
    # Over several channel packets and reads, under the output cap.
    big = executor.run("head -c 60000 /dev/zero | tr '\\0' 'x'; echo; printf '\\n\\n'")
    assert big.stdout == "x" * 60000 + "\n\n\n"
    assert not big.truncated
    assert executor.run("exit 137").exit_code == 137  # an exit status, not a signal
    assert control_shells(kept_sshd) == [shell]


def test_a_command_killed_by_a_signal_has_no_exit_code_in_the_kept_shell(executor: SshExecutor) -> None:
    # Repeated: a shell's `wait` cannot tell these apart, and a notice-based guess was
    # right only most of the time.
    for _ in range(20):
        for sig in ("KILL", "TERM", "SEGV", "INT", "PIPE"):
            result = executor.run(f"kill -{sig} $$")
            assert result.exit_code is None, (sig, result)
            assert not result.ok
        assert executor.run("exit 143").exit_code == 143
        assert executor.run("sh -c 'kill -TERM $$'; exit $?").exit_code == 143


def test_a_command_sees_the_environment_a_session_gives_it(executor: SshExecutor) -> None:
    env = {"ROLLOUT_RUN": "r-1", "WITH_SPACE": "a b 'c'"}
    kept = executor.run("env | sort", env=env)
    # stdin sends the command to a session of its own: the reference.
    session = executor.run("cat >/dev/null; env | sort", env=env, stdin=b"x")
    assert kept.ok
    assert session.ok
    assert "ROLLOUT_RUN=r-1" in kept.stdout.splitlines()
    assert "WITH_SPACE=a b 'c'" in kept.stdout.splitlines()

    def comparable(text: str) -> set[str]:
        # `_` is the last program a shell ran: the two paths start the command differently.
        return {line for line in text.splitlines() if not line.startswith("_=")}

    assert comparable(kept.stdout) == comparable(session.stdout)
    assert not any(line.startswith("_r") for line in kept.stdout.splitlines())


def test_a_timeout_kills_the_group_and_the_kept_shell_carries_on(
    executor: SshExecutor, kept_sshd: SshdServer, tmp_path: Path
) -> None:
    [shell] = wait_for_shells(kept_sshd, 1)
    pids = tmp_path / "pids"
    result = executor.run(f"sleep 30 & echo $! >> {pids}; echo $$ >> {pids}; wait", timeout=0.5)
    assert result.timed_out
    assert result.exit_code is None
    assert wait_until_gone(wait_for_pids(pids, 2), timeout=DEADLINE) == []
    after = executor.run("echo $PPID")
    assert after.ok
    assert after.stdout == f"{shell}\n"


def test_what_a_command_left_behind_is_dead_when_run_returns(executor: SshExecutor, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    for n in range(1, 4):
        assert executor.run(LEFT_BEHIND.format(f=pids)).ok
        assert [p for p in wait_for_pids(pids, n) if is_running(p)] == []


def test_a_command_whose_kept_shell_dies_is_in_doubt_and_ended(
    executor: SshExecutor, kept_sshd: SshdServer, tmp_path: Path
) -> None:
    [shell] = wait_for_shells(kept_sshd, 1)
    pids = tmp_path / "pids"
    release = tmp_path / "release"
    killer = threading.Thread(target=lambda: (wait_for_pids(pids, 1), os.kill(shell, signal.SIGKILL), release.touch()))
    killer.start()
    # The command outlives its shell, then ends on its own; its status went with the shell.
    command = f"echo $$ >> {pids}; while [ ! -e {release} ]; do sleep 0.05; done; echo finished"
    result = executor.run(command, timeout=DEADLINE)
    killer.join(DEADLINE)
    assert result.connection_lost, result
    assert not result.ok
    assert not result.timed_out
    assert result.exit_code is None
    assert "ended before reporting the command's end" in result.stderr
    assert wait_until_gone(wait_for_pids(pids, 1), timeout=DEADLINE) == []
    # A new kept shell takes over.
    after = executor.run("echo $PPID")
    assert after.ok
    assert int(after.stdout) in control_shells(kept_sshd)


def test_two_commands_at_once_on_one_host_both_run(executor: SshExecutor, tmp_path: Path) -> None:
    barrier = threading.Barrier(2, timeout=DEADLINE)
    results = []

    def one(n: int) -> None:
        barrier.wait()
        results.append(executor.run(f"sleep 0.3; echo {n}", timeout=DEADLINE))

    workers = [threading.Thread(target=one, args=(n,)) for n in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(2 * DEADLINE)
    assert sorted(r.stdout for r in results) == ["1\n", "2\n"]


@pytest.mark.parametrize(
    ("missing", "known_syscall", "supervised"),
    [
        ("perl", True, False),
        ("setsid", False, False),  # an architecture whose setsid(2) number we do not know
        ("setsid", True, True),  # setsid(2) by number: util-linux setsid is not needed
    ],
)
def test_without_the_supervisors_tools_commands_run_on_sessions_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str, known_syscall: bool, supervised: bool
) -> None:
    if not known_syscall:
        monkeypatch.setattr(ssh_agent, "SETSID_SYSCALLS", {})
    elif ssh_agent.setsid_syscall(os.uname().machine) == 0:
        pytest.skip(f"no setsid(2) number known for {os.uname().machine}")
    # A PATH with every tool the login shell and the commands use, but not `missing`.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in ("/usr/bin", "/bin"):
        for tool in Path(directory).iterdir():
            link = bin_dir / tool.name
            if tool.name != missing and not link.exists():
                link.symlink_to(tool)
    with own_sshd(tmp_path / "sshd", extra_config=[f"SetEnv PATH={bin_dir}"]) as server:
        ex = open_executor(server.target("ssh-1"))
        try:
            assert isinstance(ex, SshExecutor)
            assert ex.check_ready(DEADLINE) is None
            result = ex.run(f"command -v {missing} || echo none; echo $PPID")
            assert result.ok, result
            none, parent = result.stdout.split()
            assert none == "none"
            assert (int(parent) in control_shells(server)) == supervised
            assert ex.run("kill -KILL $$").exit_code is None
            assert ex.run("exit 137").exit_code == 137
        finally:
            ex.close()


@pytest.mark.parametrize("setsid", ["syscall", "util-linux"])
def test_both_ways_to_a_session_give_the_exact_status_and_group(
    kept_sshd: SshdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setsid: str
) -> None:
    if setsid == "util-linux":
        monkeypatch.setattr(ssh_agent, "SETSID_SYSCALLS", {})
    elif ssh_agent.setsid_syscall(os.uname().machine) == 0:
        pytest.skip(f"no setsid(2) number known for {os.uname().machine}")
    ex = open_executor(kept_sshd.target("ssh-1"))
    try:
        groups: list[int] = []
        result = ex.run("ps -o pgid= -o sid= -p $$", on_start=groups.append)
        assert result.ok, result
        # Its own process group and session, both its pid, reported before it ran.
        assert [int(x) for x in result.stdout.split()] == groups * 2
        assert ex.run("kill -TERM $$").exit_code is None
        assert ex.run("exit 143").exit_code == 143
    finally:
        ex.close()


def test_a_supervisor_that_fails_its_check_is_tried_once_and_commands_take_sessions(
    kept_sshd: SshdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = os.uname().machine
    if ssh_agent.setsid_syscall(machine) == 0:
        pytest.skip(f"no setsid(2) number known for {machine}")
    # 39 is getpid(2) on x86_64 (and harmless elsewhere: the check only compares numbers):
    # the child stays in the supervisor's group, which the check refuses.
    monkeypatch.setattr(ssh_agent, "SETSID_SYSCALLS", {machine: 39 if machine == "x86_64" else 172})
    starts: list[str] = []
    original = ssh_agent.start

    def counting_start(*args: Any) -> str:
        starts.append("start")
        return original(*args)

    monkeypatch.setattr(ssh_agent, "start", counting_start)
    ex = open_executor(kept_sshd.target("ssh-1"))
    try:
        assert isinstance(ex, SshExecutor)
        assert ex.check_ready(DEADLINE) is None
        for _ in range(3):
            result = ex.run("echo $PPID")
            assert result.ok, result
            assert int(result.stdout) not in control_shells(kept_sshd)
        assert ex.run("kill -TERM $$").exit_code is None
        assert starts == ["start"]
    finally:
        ex.close()


def test_a_command_sent_to_a_supervisor_that_just_died_runs_once(
    executor: SshExecutor, kept_sshd: SshdServer, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    for n in range(1, 6):
        [shell] = wait_for_shells(kept_sshd, 1)
        os.kill(shell, signal.SIGKILL)
        assert wait_until_gone([shell], timeout=DEADLINE) == []
        # Sent before or after this side noticed: either way the command runs, exactly once.
        result = executor.run(f"echo {n} >> {ran}")
        assert result.ok, result
        assert ran.read_text().split() == [str(i) for i in range(1, n + 1)]
