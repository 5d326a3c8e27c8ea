"""The kept shell that ends what each SSH command left behind, against a real sshd.

Invariants:

- what a command left in its process group is dead when `run` returns, with one kept
  shell per connection doing the clean-ups, not one session per command;
- the kept shell dies with its connection: closed by the executor, or cut off when the
  orchestrator is SIGKILLed;
- when the kept shell is gone (killed on the host) or cannot get a session (sshd's
  MaxSessions), clean-ups and commands still happen, on channels of their own;
- the ssh pre-check (one session, the kept shell's) fails, naming the host, when the
  login shell's start-up files print, as `true` would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.errors import ExecutorError
from rollout.executors import CommandResult, open_executor
from rollout.executors.ssh import SshExecutor
from rollout.executors.ssh_control import MARK
from tests.conftest_sshd import SshdServer, own_sshd
from tests.test_executors import is_running, wait_for_pids, wait_until_gone

pytestmark = pytest.mark.ssh

DEADLINE = 10.0  # seconds any one wait here may take before it fails the test
LEFT_BEHIND = "sleep 30 >/dev/null 2>&1 & echo $! >> {f}; echo done"


@pytest.fixture(scope="module")
def module_sshd() -> Iterator[SshdServer]:
    """An sshd of this module's own, so that every kept shell under it is one of ours."""
    with tempfile.TemporaryDirectory(prefix="rollout-sshd-control-") as tmp, own_sshd(Path(tmp)) as server:
        yield server


def _ancestors(pid: int) -> set[int]:
    seen: set[int] = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


def control_shells(server: SshdServer) -> list[int]:
    """Live kept shells started under `server` (found by their argument, below its sshd)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        pid = int(entry.name)
        if MARK.encode() in argv and is_running(pid) and server.process.pid in _ancestors(pid):
            found.append(pid)
    return found


def wait_for_shells(server: SshdServer, count: int) -> list[int]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        shells = control_shells(server)
        if len(shells) == count:
            return shells
        time.sleep(0.02)
    raise AssertionError(f"expected {count} kept shell(s) under sshd, found {control_shells(server)}")


def test_one_kept_shell_ends_what_every_command_left_behind(module_sshd: SshdServer, tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    executor = open_executor(module_sshd.target("ssh-1"))
    try:
        for n in range(1, 6):
            result = executor.run(LEFT_BEHIND.format(f=pids_file))
            assert result.ok, result
            # Dead when run returns: the clean-up is part of the command, not later.
            assert [p for p in wait_for_pids(pids_file, n) if is_running(p)] == []
        assert len(control_shells(module_sshd)) == 1
    finally:
        executor.close()
    assert wait_for_shells(module_sshd, 0) == []


def test_the_kept_shell_dies_with_a_killed_orchestrator(module_sshd: SshdServer, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from rollout.executors import Target, open_executor\n"
        f"ex = open_executor(Target(name='ssh-1', connection='ssh', address={module_sshd.host!r}, port={module_sshd.port},"
        f" user={module_sshd.user!r}, identity_file={module_sshd.identity_file!r}, known_hosts={module_sshd.known_hosts!r}))\n"
        f"assert ex.run({LEFT_BEHIND.format(f=tmp_path / 'pids')!r}).ok\n"
        f"Path({str(ready)!r}).write_text('ok')\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + DEADLINE
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), "the child did not run its command"
        assert len(wait_for_shells(module_sshd, 1)) == 1
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=DEADLINE)
        # The connection is gone, so is the shell's stdin: it exits on its own.
        assert wait_for_shells(module_sshd, 0) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_kept_shell_killed_on_the_host_is_replaced_and_nothing_is_left(
    module_sshd: SshdServer, tmp_path: Path
) -> None:
    pids_file = tmp_path / "pids"
    executor = open_executor(module_sshd.target("ssh-1"))
    try:
        assert executor.run(LEFT_BEHIND.format(f=pids_file)).ok
        [shell] = wait_for_shells(module_sshd, 1)
        os.kill(shell, signal.SIGKILL)
        assert wait_until_gone([shell], timeout=DEADLINE) == []
        result = executor.run(LEFT_BEHIND.format(f=pids_file))
        assert result.ok, result
        assert [p for p in wait_for_pids(pids_file, 2) if is_running(p)] == []
        # The next clean-up starts a new kept shell (or took a channel of its own).
        assert executor.run(LEFT_BEHIND.format(f=pids_file)).ok
        assert [p for p in wait_for_pids(pids_file, 3) if is_running(p)] == []
        assert len(wait_for_shells(module_sshd, 1)) == 1
    finally:
        executor.close()


def test_commands_get_their_sessions_when_sshd_allows_only_two(tmp_path: Path) -> None:
    with own_sshd(tmp_path / "sshd", extra_config=["MaxSessions 2"]) as server:
        _two_at_once(server, tmp_path / "pids")


def _two_at_once(server: SshdServer, pids_file: Path) -> None:
    executor = open_executor(server.target("ssh-1"))
    try:
        assert executor.run(LEFT_BEHIND.format(f=pids_file)).ok  # the kept shell now holds a session
        results: list[CommandResult] = []
        barrier = threading.Barrier(2, timeout=DEADLINE)

        def both() -> None:
            barrier.wait()
            results.append(executor.run(f"sleep 0.5; {LEFT_BEHIND.format(f=pids_file)}", timeout=DEADLINE))

        workers = [threading.Thread(target=both) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=2 * DEADLINE)
        assert [r.ok for r in results] == [True, True], results
        assert [p for p in wait_for_pids(pids_file, 3) if is_running(p)] == []
    finally:
        executor.close()


def test_a_start_up_file_that_prints_fails_the_ssh_check_naming_the_host(tmp_path: Path) -> None:
    with own_sshd(tmp_path / "sshd") as server:
        quiet = open_executor(server.target("web-1"))
        try:
            assert isinstance(quiet, SshExecutor)
            assert quiet.check_ready(DEADLINE) is None
        finally:
            quiet.close()
        for rc in (".bashrc", ".profile", ".bash_profile"):
            (server.home / rc).write_text("echo welcome to web-1\n")
        noisy = open_executor(server.target("web-1"))
        try:
            assert isinstance(noisy, SshExecutor)
            ready = noisy.check_ready(DEADLINE)
            try:
                command_ran, why = noisy.run("true").ok, ""
            except ExecutorError as exc:
                command_ran, why = False, str(exc)
        finally:
            noisy.close()
    if command_ran:
        pytest.skip("this login shell reads no start-up file when sshd runs a command")
    # The same words a command would have failed with, naming the host.
    assert ready == why
    assert why.startswith("web-1: unexpected output from the remote shell")
    assert "welcome to web-1" in why


def test_closing_after_the_host_went_away_is_quiet(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    with own_sshd(tmp_path / "sshd") as server:
        executor = open_executor(server.target("ssh-1"))
        assert executor.run(LEFT_BEHIND.format(f=pids_file)).ok  # the kept shell is up
    # sshd is gone, and the connection with it: closing must neither raise nor hang.
    started = time.monotonic()
    executor.close()
    assert time.monotonic() - started < DEADLINE
