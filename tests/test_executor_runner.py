"""The one command-runner loop and the one exception table that every executor shares.

Invariants:
- `run_process` owns the loop: it never waits past the deadline, kills a command whose
  deadline passed exactly once, stops waiting for pipes held by background children
  after the linger, reports a dropped connection as a result, and closes the command on
  every path (normal end, timeout, error).
- No executor module builds a CommandResult or runs a loop of its own: only the runner.
- Library and OS exceptions become ours through a table, the most specific entry wins,
  ours pass through unchanged, and the user-visible messages stay word for word.
"""

from __future__ import annotations

import ast
import errno
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from rollout.errors import ConnectError, ExecutorError, RolloutError
from rollout.executors import CommandResult, Target, open_executor
from rollout.executors.faults import READ_FAULTS, FaultTable, describe, translate
from rollout.executors.runner import LINGER, ConnectionLost, Process, run_process
from tests.conftest_sshd import SshdServer, free_port

EXECUTORS = Path(__file__).resolve().parent.parent / "rollout" / "executors"


class Scripted(Process):
    """A command whose exit, output EOF and failures are switched by the test, on events."""

    def __init__(self, *, exits: bool = True, drains: bool = True) -> None:
        super().__init__(1024)
        self.exit_now = threading.Event()
        if exits:
            self.exit_now.set()
        self.drains = drains
        self.kills = 0
        self.closes = 0
        self.waits: list[tuple[float, float | None]] = []  # (when, how long the runner allowed)
        self.fail_in_transfer: BaseException | None = None

    def begin(self) -> None:
        self.out.feed(b"hello\n")

    def transfer(self, wait: float | None) -> None:
        self.waits.append((time.monotonic(), wait))
        if self.fail_in_transfer is not None:
            raise self.fail_in_transfer
        # An event-driven wait: returns early once the command "exits".
        self.exit_now.wait(wait)

    def exited(self) -> bool:
        return self.exit_now.is_set()

    def drained(self) -> bool:
        return self.drains

    def kill(self) -> None:
        self.kills += 1
        self.exit_now.set()

    def finish(self, *, killed: bool) -> None:
        pass

    def exit_code(self) -> int | None:
        return 3

    def close(self) -> None:
        self.closes += 1


def drive(process: Process, timeout: float | None) -> tuple[float, CommandResult]:
    started = time.monotonic()
    return started, run_process(process, host="h1", command="cmd", timeout=timeout, started=started)


class TestRunner:
    def test_a_normal_end_reports_exit_code_and_output_and_closes_once(self) -> None:
        process = Scripted()
        _, result = drive(process, 10.0)
        assert result == CommandResult(
            host="h1", command="cmd", exit_code=3, stdout="hello\n", stderr="", duration=result.duration
        )
        assert (process.kills, process.closes) == (0, 1)

    def test_the_deadline_kills_once_and_no_wait_runs_past_it(self) -> None:
        process = Scripted(exits=False)
        started, result = drive(process, 0.3)
        assert result.timed_out
        assert result.exit_code is None
        assert not result.cancelled
        assert (process.kills, process.closes) == (1, 1)
        deadline = started + 0.3
        before_kill = [(at, wait) for at, wait in process.waits if at < deadline]
        assert before_kill, "the runner must wait for events before the deadline"
        for at, wait in before_kill:
            assert wait is not None
            assert at + wait <= deadline + 1e-3

    def test_pipes_held_by_background_children_are_given_up_after_the_linger(self) -> None:
        process = Scripted(drains=False)
        started, result = drive(process, None)
        assert result.exit_code == 3
        assert not result.timed_out
        assert time.monotonic() - started >= LINGER
        assert all(wait is not None and wait <= LINGER for _, wait in process.waits)

    def test_a_cancelled_command_has_no_exit_code(self) -> None:
        process = Scripted()
        process.cancelled = True
        _, result = drive(process, None)
        assert result.cancelled
        assert result.exit_code is None
        assert not result.timed_out

    def test_a_dropped_connection_is_a_result_not_an_error(self) -> None:
        process = Scripted(exits=False)
        process.fail_in_transfer = ConnectionLost("connection to h:22 lost during the command (EOF)")
        _, result = drive(process, 5.0)
        assert result.connection_lost
        assert result.exit_code is None
        assert result.failed
        assert result.stderr == "connection to h:22 lost during the command (EOF)"
        assert process.closes == 1

    def test_an_error_in_the_loop_still_closes_the_command(self) -> None:
        process = Scripted(exits=False)
        process.fail_in_transfer = OSError(errno.EIO, "I/O error")
        with pytest.raises(OSError, match="I/O error"):
            drive(process, 5.0)
        assert process.closes == 1


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


def test_only_the_runner_builds_a_command_result() -> None:
    for path in sorted(EXECUTORS.glob("*.py")):
        tree = ast.parse(path.read_text())
        if path.name == "runner.py":
            assert _calls(tree, "CommandResult")
        elif path.name in ("local.py", "ssh.py"):
            assert not _calls(tree, "CommandResult"), f"{path.name} builds a CommandResult itself"
            assert _calls(tree, "run_process"), f"{path.name} does not run commands through the runner"
        elif path.name != "base.py":
            assert not _calls(tree, "CommandResult"), f"{path.name} builds a CommandResult itself"


def test_no_executor_raises_our_errors_from_a_library_exception_handler() -> None:
    """Translations live in tables; a handler for OS or paramiko errors may clean up and re-raise, not translate."""
    library = {"OSError", "EOFError", "TimeoutError", "SSHException", "SFTPError", "AuthenticationException"}
    for path in sorted(EXECUTORS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ExceptHandler) or node.type is None:
                continue
            caught = ast.unparse(node.type)
            if not any(name in caught for name in library):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Raise) and inner.exc is not None:
                    raised = ast.unparse(inner.exc)
                    assert "Error(" not in raised, f"{path.name}:{inner.lineno} translates {caught} by hand"


class TestTranslate:
    TABLE: ClassVar[FaultTable] = {
        OSError: (ExecutorError, "cannot read {path}: {detail}"),
        FileNotFoundError: (ConnectError, "no {path} ({exc.errno})"),
    }

    def test_the_most_specific_entry_wins_and_names_the_host(self) -> None:
        with pytest.raises(ConnectError) as caught, translate(self.TABLE, host="h1", path="/x"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        assert str(caught.value) == f"h1: no /x ({errno.ENOENT})"
        assert isinstance(caught.value.__cause__, FileNotFoundError)

    def test_a_base_entry_covers_subclasses_and_uses_strerror(self) -> None:
        with pytest.raises(ExecutorError) as caught, translate(self.TABLE, host="h1", path="/x"):
            raise PermissionError(errno.EACCES, "Permission denied")
        assert type(caught.value) is ExecutorError
        assert str(caught.value) == "h1: cannot read /x: Permission denied"

    def test_ours_and_unnamed_exceptions_pass_through(self) -> None:
        ours = RolloutError("kept")
        with pytest.raises(RolloutError) as caught, translate(self.TABLE, host="h1", path="/x"):
            raise ours
        assert caught.value is ours
        with pytest.raises(KeyError), translate(self.TABLE, host="h1", path="/x"):
            raise KeyError("k")

    def test_describe_prefers_strerror(self) -> None:
        assert describe(OSError(errno.EIO, "I/O error")) == "I/O error"
        assert describe(OSError("plain")) == "plain"
        assert describe(EOFError("eof")) == "eof"

    def test_local_messages_are_unchanged(self, tmp_path: Path) -> None:
        executor = open_executor(Target(name="l1"))
        missing = tmp_path / "absent"
        with pytest.raises(ExecutorError) as caught:
            executor.read_file(str(missing))
        assert str(caught.value) == f"l1: cannot read {missing}: No such file or directory"
        with pytest.raises(ExecutorError) as caught:
            executor.put_file(b"x", str(tmp_path / "no" / "dir" / "f"))
        assert str(caught.value) == f"l1: cannot write {tmp_path / 'no' / 'dir' / 'f'}: No such file or directory"
        assert READ_FAULTS[OSError][0] is ExecutorError


def _fingerprint(key_file: Path) -> tuple[str, str]:
    import paramiko

    key = paramiko.Ed25519Key.from_private_key_file(str(key_file))
    return key.get_name(), key.fingerprint


@pytest.mark.ssh
class TestSshMessagesUnchanged:
    """The SSH connect messages, word for word as operators have seen them."""

    def test_a_closed_port(self, sshd: SshdServer) -> None:
        port = free_port()
        with pytest.raises(ConnectError) as caught:
            open_executor(sshd.target("gw", port=port)).run("true")
        assert str(caught.value) == f"gw: connection refused by 127.0.0.1:{port} (is sshd running on that port?)"

    def test_an_unresolvable_name(self, sshd: SshdServer) -> None:
        with pytest.raises(ConnectError) as caught:
            open_executor(sshd.target("gw", address="no-such-host.invalid")).run("true")
        try:
            socket.getaddrinfo("no-such-host.invalid", 22)
        except socket.gaierror as exc:
            expected = f"gw: cannot resolve no-such-host.invalid: {exc.strerror}"
        assert str(caught.value) == expected

    def test_an_unknown_host_key(self, sshd: SshdServer, empty_known_hosts: str) -> None:
        name, fingerprint = _fingerprint(sshd.workdir / "ssh_host_ed25519_key")
        with pytest.raises(ConnectError) as caught:
            open_executor(sshd.target("gw", known_hosts=empty_known_hosts)).run("true")
        endpoint = f"127.0.0.1:{sshd.port}"
        assert str(caught.value) == (
            f"gw: refusing to connect: the host key of {endpoint} ({name} {fingerprint}) is not in "
            f"{empty_known_hosts}. Verify it out of band, then add it with: "
            f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty_known_hosts}"
        )

    def test_a_changed_host_key(self, sshd: SshdServer, wrong_known_hosts: str, tmp_path: Path) -> None:
        _, offered = _fingerprint(sshd.workdir / "ssh_host_ed25519_key")
        _, expected_key = _fingerprint(tmp_path / "other_host_key")
        with pytest.raises(ConnectError) as caught:
            open_executor(sshd.target("gw", known_hosts=wrong_known_hosts)).run("true")
        endpoint = f"127.0.0.1:{sshd.port}"
        assert str(caught.value) == (
            f"gw: refusing to connect: the host key of {endpoint} CHANGED (known_hosts {wrong_known_hosts} has "
            f"{expected_key}, the server offered {offered}); this may be an attack. If the change is expected: "
            f"ssh-keygen -R '127.0.0.1' -f {wrong_known_hosts} && "
            f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {wrong_known_hosts}"
        )

    def test_a_wrong_key(self, sshd: SshdServer, tmp_path: Path) -> None:
        from tests.conftest_sshd import generate_key

        generate_key(tmp_path / "stranger")
        with pytest.raises(ConnectError) as caught:
            open_executor(sshd.target("gw", identity_file=str(tmp_path / "stranger"))).run("true")
        assert str(caught.value) == (
            f"gw: authentication to 127.0.0.1:{sshd.port} as {sshd.user} failed (Authentication failed.); "
            f"key: {tmp_path / 'stranger'}"
        )

    def test_a_missing_remote_file(self, sshd: SshdServer, tmp_path: Path) -> None:
        executor = open_executor(sshd.target("gw"))
        try:
            with pytest.raises(ExecutorError) as caught:
                executor.read_file(str(tmp_path / "absent"))
            assert str(caught.value) == f"gw: cannot read {tmp_path / 'absent'}: No such file"
            with pytest.raises(ExecutorError) as caught:
                executor.put_file(b"x", str(tmp_path / "no" / "f"))
            assert str(caught.value) == f"gw: cannot write {tmp_path / 'no' / 'f'}: No such file"
        finally:
            executor.close()


def test_the_runner_and_the_tables_do_not_import_paramiko() -> None:
    code = (
        "import sys, rollout.executors.runner, rollout.executors.faults, rollout.executors.local;"
        "sys.exit('paramiko' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_no_executor_module_is_over_450_lines() -> None:
    for path in EXECUTORS.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 450, path.name


class _ArrivedWithEof:
    """A channel whose transport thread delivered the last output together with EOF and the exit."""

    def __init__(self) -> None:
        self.stdout = bytearray(b"4242\nstill usable\n")
        self.eof_received = True
        self.closed = False

    def recv_ready(self) -> bool:
        return bool(self.stdout)

    def recv(self, size: int) -> bytes:
        chunk, self.stdout[:] = bytes(self.stdout[:size]), self.stdout[size:]
        return chunk

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return True

    def fileno(self) -> int:
        return -1


def test_ssh_output_that_arrives_with_eof_is_read_before_the_command_counts_as_drained() -> None:
    """paramiko flags EOF from its own thread: output buffered before it must still be read."""
    from rollout.executors.ssh_process import RemoteHooks, RemoteProcess

    channel = _ArrivedWithEof()
    hooks = RemoteHooks(
        Target("h1"),
        output_cap=1024,
        control=lambda _script, _become: True,
        orphan=lambda _pgid, _become: None,
        forget=lambda _process: None,
    )
    process = RemoteProcess(
        channel,  # type: ignore[arg-type]
        hooks,
        remote_command="echo still usable",
        stdin=None,
        on_start=None,
    )
    assert process.exited()
    assert not process.drained(), "EOF is flagged, but output before it has not been read"
    process._read()
    assert process.drained()
    assert process.pgid == 4242
    assert process.out.text() == "still usable\n"
