"""One contract suite over every executor: real subprocesses and a real sshd.

The SSH server comes from the `sshd` fixture in tests/conftest_sshd.py. Process checks
read /proc because local and "remote" processes live on this same machine.
"""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rollout.errors import ConnectError, ExecutorError
from rollout.executors import CommandResult, Executor, Target, open_executor
from tests.conftest_sshd import SshdServer, free_port

MakeExecutor = Callable[..., Executor]


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def make_executor(request: pytest.FixtureRequest) -> Iterator[MakeExecutor]:
    """A factory of executors of one kind; every executor made is closed afterwards."""
    made: list[Executor] = []

    def make(**kwargs: object) -> Executor:
        if request.param == "local":
            target = Target(name="local-1")
        else:
            server: SshdServer = request.getfixturevalue("sshd")
            target = server.target("ssh-1")
        executor = open_executor(target, **kwargs)  # type: ignore[arg-type]
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.close()


@pytest.fixture
def executor(make_executor: MakeExecutor) -> Executor:
    """An executor of each kind with the default output cap."""
    return make_executor()


def is_running(pid: int) -> bool:
    """True if `pid` is a live process (zombies waiting for a reaper count as dead)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return text.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_for_pids(path: Path, count: int, timeout: float = 10.0) -> list[int]:
    """The pids a command wrote to `path`, once `count` of them are there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            pids = [int(p) for p in path.read_text().split()]
            if len(pids) >= count:
                return pids
        time.sleep(0.01)
    raise AssertionError(f"the command did not write {count} pids to {path}")


def wait_until_gone(pids: list[int], timeout: float = 2.0) -> list[int]:
    """The pids still running after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_running(p) for p in pids):
        time.sleep(0.01)
    return [p for p in pids if is_running(p)]


# A command whose shell starts two background children, records their pids, then waits.
TWO_SLEEPERS = "sleep 30 & echo $! >> {f}; sh -c 'sleep 30' & echo $! >> {f}; wait"


class TestContract:
    def test_exit_code_and_stdout_are_captured(self, executor: Executor) -> None:
        result = executor.run("echo hello; exit 3")
        assert result.exit_code == 3
        assert result.stdout == "hello\n"
        assert result.failed
        assert not result.timed_out
        assert not result.cancelled

    def test_a_zero_exit_is_ok(self, executor: Executor) -> None:
        result = executor.run("true")
        assert result.ok
        assert result.exit_code == 0
        assert result.host == executor.target.name
        assert result.command == "true"
        assert 0 <= result.duration < 5

    def test_stderr_is_kept_separate_from_stdout(self, executor: Executor) -> None:
        result = executor.run("echo out; echo err >&2; echo out2")
        assert result.stdout == "out\nout2\n"
        assert result.stderr == "err\n"

    def test_output_over_the_cap_keeps_the_tail_and_says_truncated(self, make_executor: MakeExecutor) -> None:
        executor = make_executor(output_cap=1000)
        result = executor.run("i=0; while [ $i -lt 500 ]; do echo line$i; i=$((i+1)); done; echo END")
        assert result.truncated
        assert len(result.stdout.encode()) <= 1000
        assert result.stdout.endswith("line499\nEND\n")
        assert result.tail(lines=2) == "line499\nEND"
        assert result.exit_code == 0

    def test_default_cap_keeps_64_kib_of_a_large_output(self, executor: Executor) -> None:
        result = executor.run("head -c 300000 /dev/zero | tr '\\0' a; echo; echo LAST >&2")
        assert result.truncated
        assert len(result.stdout) == 64 * 1024
        assert result.stdout.endswith("a\n")
        assert result.stderr == "LAST\n"

    def test_output_under_the_cap_is_not_truncated(self, executor: Executor) -> None:
        assert not executor.run("echo small").truncated

    def test_shell_metacharacters_are_interpreted_by_sh(self, executor: Executor, tmp_path: Path) -> None:
        target = tmp_path / "out file"
        result = executor.run(
            f"echo abc | tr a-c x-z > '{target}' && cat '{target}'; "
            'x="$((6 * 7))"; echo "$x" $(echo sub) `echo tick`; false || echo fallback'
        )
        assert result.stdout == "xyz\n42 sub tick\nfallback\n"

    def test_environment_and_stdin_reach_the_command(self, executor: Executor) -> None:
        result = executor.run('printf "%s|" "$GREETING"; cat', env={"GREETING": "it's $HOME"}, stdin=b"from stdin")
        assert result.stdout == "it's $HOME|from stdin"

    def test_large_stdin_is_fed_without_deadlock(self, executor: Executor) -> None:
        data = b"0123456789" * 100_000
        result = executor.run("wc -c; cat >/dev/null", stdin=data, timeout=20)
        assert result.stdout.strip() == str(len(data))

    def test_stdin_the_command_does_not_read_is_not_an_error(self, executor: Executor) -> None:
        result = executor.run("echo quick", stdin=b"z" * 2_000_000, timeout=20)
        assert result.ok
        assert result.stdout == "quick\n"

    def test_without_stdin_the_command_reads_eof(self, executor: Executor) -> None:
        result = executor.run("cat; echo done", timeout=10)
        assert result.stdout == "done\n"
        assert not result.timed_out

    def test_a_command_killed_by_a_signal_has_no_exit_code(self, executor: Executor) -> None:
        result = executor.run("kill -9 $$")
        assert result.exit_code is None
        assert result.failed

    def test_timeout_kills_the_whole_process_group(self, executor: Executor, tmp_path: Path) -> None:
        pids_file = tmp_path / "pids"
        result = executor.run(TWO_SLEEPERS.format(f=pids_file), timeout=0.5)
        pids = wait_for_pids(pids_file, 2)
        assert result.timed_out
        assert result.exit_code is None
        assert not result.cancelled
        assert 0.5 <= result.duration < 2.0
        assert wait_until_gone(pids) == []

    def test_a_command_that_closed_its_output_still_obeys_the_timeout(self, executor: Executor) -> None:
        result = executor.run("exec >/dev/null 2>&1; sleep 30", timeout=0.5)
        assert result.timed_out
        assert 0.5 <= result.duration < 2.0

    def test_a_command_that_closed_its_output_still_reports_its_exit_code(self, executor: Executor) -> None:
        result = executor.run("exec >/dev/null 2>&1; sleep 0.3; exit 4", timeout=10)
        assert result.exit_code == 4

    def test_cancel_from_another_thread_kills_an_in_flight_command(self, executor: Executor, tmp_path: Path) -> None:
        pids_file = tmp_path / "pids"
        results: list[CommandResult] = []
        worker = threading.Thread(
            target=lambda: results.append(executor.run(TWO_SLEEPERS.format(f=pids_file), timeout=30))
        )
        worker.start()
        pids = wait_for_pids(pids_file, 2)
        started = time.monotonic()
        executor.cancel()
        worker.join(timeout=10)
        assert not worker.is_alive()
        assert time.monotonic() - started < 2.0
        (result,) = results
        assert result.cancelled
        assert not result.timed_out
        assert result.exit_code is None
        assert wait_until_gone(pids) == []
        assert executor.run("echo still usable").stdout == "still usable\n"

    def test_cancel_kills_a_command_that_ignores_sigterm(self, executor: Executor, tmp_path: Path) -> None:
        pids_file = tmp_path / "pids"
        results: list[CommandResult] = []
        command = f"trap '' TERM; echo $$ > {pids_file}; while :; do sleep 0.05; done"
        worker = threading.Thread(target=lambda: results.append(executor.run(command)))
        worker.start()
        pids = wait_for_pids(pids_file, 1)
        executor.cancel()
        worker.join(timeout=10)
        assert results[0].cancelled
        assert wait_until_gone(pids) == []

    def test_cancel_with_nothing_in_flight_is_harmless(self, executor: Executor) -> None:
        executor.cancel()
        assert executor.run("echo ok").ok

    def test_a_background_daemon_holding_the_output_does_not_hold_the_step(
        self, executor: Executor, tmp_path: Path
    ) -> None:
        pids_file = tmp_path / "pids"
        result = executor.run(f"sleep 30 & echo $! > {pids_file}; echo started")
        assert result.ok
        assert result.stdout == "started\n"
        assert result.duration < 2.0
        # ...and it dies with the command: nothing a step left in its group outlives it.
        assert wait_until_gone(wait_for_pids(pids_file, 1), timeout=0.5) == []

    def test_background_children_die_when_the_command_exits_normally(self, executor: Executor, tmp_path: Path) -> None:
        pids_file = tmp_path / "pids"
        # The children's output goes elsewhere, so nothing holds the pipes: the shell's exit ends the run.
        command = (
            f"(sleep 30 >/dev/null 2>&1 & echo $! >> {pids_file}); "
            f"sleep 30 >/dev/null 2>&1 & echo $! >> {pids_file}; exit 0"
        )
        result = executor.run(command)
        assert result.exit_code == 0
        assert wait_until_gone(wait_for_pids(pids_file, 2), timeout=0.5) == []

    def test_on_start_reports_the_commands_process_group(self, executor: Executor) -> None:
        reported: list[int] = []
        # Field 5 of /proc/self/stat is the process group; the shell's own, as seen on the target.
        result = executor.run("cut -d' ' -f5 /proc/$$/stat", on_start=reported.append)
        assert result.ok
        assert reported == [int(result.stdout)]

    def test_a_failing_on_start_kills_the_command_and_propagates(self, executor: Executor, tmp_path: Path) -> None:
        pids_file = tmp_path / "pids"

        def refuse(pgid: int) -> None:
            wait_for_pids(pids_file, 1)
            raise RuntimeError("cannot record the process")

        with pytest.raises(RuntimeError, match="cannot record"):
            executor.run(f"echo $$ > {pids_file}; sleep 30", timeout=30, on_start=refuse)
        assert wait_until_gone(wait_for_pids(pids_file, 1)) == []
        assert executor.run("echo still usable").stdout == "still usable\n"

    def test_commands_run_concurrently_on_one_executor(self, executor: Executor) -> None:
        results: list[CommandResult] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            result = executor.run(f"sleep 0.5; echo {i}")
            with lock:
                results.append(result)

        started = time.monotonic()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert time.monotonic() - started < 3.0
        assert sorted(int(r.stdout) for r in results) == list(range(8))

    def test_put_file_and_read_file_round_trip_with_mode(self, executor: Executor, tmp_path: Path) -> None:
        path = tmp_path / "config.json"
        path.write_text("old content that is longer than the new one")
        data = b'{"version": 2}\n\x00\xff'
        executor.put_file(data, str(path), mode=0o600)
        assert executor.read_file(str(path)) == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
        executor.put_file(b"x", str(path), mode=0o755)
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        assert path.read_bytes() == b"x"

    def test_read_file_refuses_a_file_over_max_bytes(self, executor: Executor, tmp_path: Path) -> None:
        path = tmp_path / "big"
        path.write_bytes(b"y" * 2000)
        with pytest.raises(ExecutorError, match="larger than 1000 bytes"):
            executor.read_file(str(path), max_bytes=1000)

    def test_reading_a_missing_file_names_the_host_and_path(self, executor: Executor, tmp_path: Path) -> None:
        missing = tmp_path / "missing.yaml"
        with pytest.raises(ExecutorError) as caught:
            executor.read_file(str(missing))
        assert caught.value.host == executor.target.name
        assert str(missing) in str(caught.value)

    def test_put_file_into_a_missing_directory_raises_executor_error(self, executor: Executor, tmp_path: Path) -> None:
        with pytest.raises(ExecutorError, match="cannot write"):
            executor.put_file(b"x", str(tmp_path / "nope" / "file"))

    def test_close_twice_is_safe(self, executor: Executor) -> None:
        executor.run("true")
        executor.close()
        executor.close()


@pytest.mark.ssh
class TestSsh:
    def test_an_unknown_host_key_is_refused(self, sshd: SshdServer, empty_known_hosts: str) -> None:
        executor = open_executor(sshd.target("gw-1", known_hosts=empty_known_hosts))
        with pytest.raises(ConnectError) as caught:
            executor.run("true")
        assert caught.value.host == "gw-1"
        message = str(caught.value)
        assert message.startswith("gw-1: ")
        assert "not in" in message
        assert f"ssh-keyscan -p {sshd.port} {sshd.host} >> {empty_known_hosts}" in message
        assert Path(empty_known_hosts).read_text() == ""  # never added

    def test_a_changed_host_key_is_refused(self, sshd: SshdServer, wrong_known_hosts: str) -> None:
        executor = open_executor(sshd.target("gw-2", known_hosts=wrong_known_hosts))
        with pytest.raises(ConnectError, match="CHANGED") as caught:
            executor.run("true")
        assert caught.value.host == "gw-2"

    def test_a_missing_known_hosts_file_is_an_error(self, sshd: SshdServer, tmp_path: Path) -> None:
        executor = open_executor(sshd.target(known_hosts=str(tmp_path / "absent")))
        with pytest.raises(ConnectError, match="does not exist"):
            executor.run("true")

    def test_a_closed_port_fails_fast_naming_host_and_port(self, sshd: SshdServer) -> None:
        port = free_port()
        executor = open_executor(sshd.target("gw-3", port=port))
        started = time.monotonic()
        with pytest.raises(ConnectError) as caught:
            executor.run("true")
        assert time.monotonic() - started < 1.0
        assert caught.value.host == "gw-3"
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert "refused" in str(caught.value)

    def test_a_wrong_key_fails_authentication(self, sshd: SshdServer, tmp_path: Path) -> None:
        from tests.conftest_sshd import generate_key

        generate_key(tmp_path / "stranger")
        executor = open_executor(sshd.target(identity_file=str(tmp_path / "stranger")))
        with pytest.raises(ConnectError, match="authentication"):
            executor.run("true")

    def test_the_socket_has_tcp_nodelay(self, sshd: SshdServer) -> None:
        from rollout.executors.ssh import SshExecutor

        executor = SshExecutor(sshd.target())
        try:
            executor.run("true")
            sock = executor._sock
            assert sock is not None
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            executor.close()

    def test_one_connection_serves_every_command(self, sshd: SshdServer) -> None:
        from rollout.executors.ssh import SshExecutor

        executor = SshExecutor(sshd.target())
        try:
            executor.run("true")
            first = executor._sock
            for _ in range(3):
                executor.run("true")
            assert executor._sock is first
        finally:
            executor.close()

    def test_a_closed_executor_reconnects_on_next_use(self, sshd: SshdServer) -> None:
        executor = open_executor(sshd.target())
        executor.run("true")
        executor.close()
        assert executor.run("echo again").stdout == "again\n"
        executor.close()

    def test_a_dropped_connection_is_reported_and_its_command_killed_on_reconnect(
        self, sshd: SshdServer, tmp_path: Path
    ) -> None:
        from rollout.executors.ssh import SshExecutor

        executor = SshExecutor(sshd.target())
        pid_file, done = tmp_path / "pid", tmp_path / "done"
        reported = threading.Event()
        results: list[CommandResult] = []
        command = f"echo $$ > {pid_file}; sleep 3; touch {done}"
        worker = threading.Thread(
            target=lambda: results.append(executor.run(command, timeout=30, on_start=lambda _: reported.set()))
        )
        try:
            worker.start()
            (pid,) = wait_for_pids(pid_file, 1)
            assert reported.wait(10)
            sock = executor._sock
            assert sock is not None
            sock.shutdown(socket.SHUT_RDWR)  # the network drops mid-command
            worker.join(timeout=10)
            (result,) = results
            assert result.connection_lost
            assert not result.ok
            assert result.exit_code is None
            assert "connection" in result.stderr
            assert "lost" in result.stderr
            # The next command reconnects, and the cut-off command is gone before it runs.
            assert executor.run("true").ok
            assert not is_running(pid)
            assert not done.exists()
        finally:
            executor.close()
            worker.join(timeout=10)

    def test_commands_run_with_sh_not_the_login_shell(self, sshd: SshdServer) -> None:
        executor = open_executor(sshd.target())
        try:
            # Under bash, $BASH_VERSION would be set; /bin/sh (dash) leaves it empty.
            result = executor.run('readlink /proc/$$/exe; echo "[${BASH_VERSION:-}]"')
            local = subprocess.run(
                ["/bin/sh", "-c", 'readlink /proc/$$/exe; echo "[${BASH_VERSION:-}]"'],
                capture_output=True,
                text=True,
                check=True,
            )
            assert result.stdout == local.stdout
        finally:
            executor.close()


def test_importing_executors_does_not_import_paramiko() -> None:
    code = (
        "import sys; from rollout.executors import open_executor, Target;"
        "ex = open_executor(Target('l')); ex.run('true'); ex.close();"
        "sys.exit('paramiko' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
