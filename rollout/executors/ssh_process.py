"""One remote command on its own SSH channel, as the shared runner loop drives it; what every remote command shares.

The kept shell runs most commands (see ssh_kept); a command gets a session of its own when
it has stdin or `become`, when the kept shell is busy, or where it cannot run commands.

Such a command runs as `echo $$; exec /bin/sh -c '<command>'` through the login
shell. sshd starts each no-pty session with setsid(), so the login shell's pid is the
process group of everything the command starts; the first stdout line reports it, and a
timeout or cancel kills that group over a second channel (closing a channel alone
leaves the remote processes running). When the command exits, what it left in that group
is killed the same way. When the connection drops mid-command, the result says so
(`connection_lost`) and the group is remembered, to be killed on reconnect.

A command with `become` execs sudo in place of the login shell's /bin/sh: sudo and the
command stay in that same process group, which then belongs to root (or the become user),
so every kill of it runs through the same sudo, with the password (if any) on stdin.
"""

from __future__ import annotations

import select
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import paramiko

from rollout.errors import ExecutorError
from rollout.executors.base import KILL_GRACE, Become, OnStart, Target
from rollout.executors.faults import FaultTable, translate
from rollout.executors.runner import ConnectionLost, Process

READ_CHUNK = 32 * 1024
#: paramiko signals data, EOF and close on the wake pipe but not exit-status, so look
#: again this often to notice a shell that exited before its background children
#: closed the pipes.
STATUS_POLL = 0.1
#: While a kill waits for the process group to be reported.
KILL_POLL = 0.05
#: paramiko gives no writability event: look again this soon while stdin is pending.
SEND_POLL = 0.005

#: A kill waits up to KILL_GRACE for a group to die, looking every 50 ms: this many times.
GRACE_ROUNDS = max(1, int(KILL_GRACE / 0.05))

#: Errors while a command runs on a connection that is still alive.
COMMAND_FAULTS: FaultTable = {
    OSError: (ExecutorError, "connection to {endpoint} lost: {detail}"),
    paramiko.SSHException: (ExecutorError, "command failed on {endpoint}: {exc}"),
    EOFError: (ExecutorError, "command failed on {endpoint}: {exc}"),
}

#: Runs a kill script on a channel of its own (through sudo for a become command); False if the connection is gone.
Control = Callable[[str, Become | None], bool]


def wrap(command: str, env: Mapping[str, str], become: Become | None = None) -> str:
    """The remote command line: report the process group, then exec /bin/sh -c COMMAND (through sudo)."""
    if become is not None:
        # The markers are exported inside sudo's shell: sudo's env_reset would drop them.
        return f"echo $$; exec {become.shell(command, env)}"
    exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in env.items())
    # /bin/sh, not the login shell, so that commands mean the same as on local targets.
    return f"echo $$; {exports}exec /bin/sh -c {shlex.quote(command)}"


def controlled(script: str, become: Become | None) -> tuple[str, bytes | None]:
    """A control script as it runs on the host, and its stdin: through sudo for a become command's group."""
    if become is None:
        return script, None
    return become.shell(script, {}), become.stdin(None)


def run_control(channel: paramiko.Channel, script: str, become: Become | None, timeout: float) -> int:
    """Run a control script on `channel` (through sudo for `become`), wait for its exit status, close the channel."""
    script, stdin = controlled(script, become)
    try:
        channel.settimeout(timeout)
        channel.exec_command(script)
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()
        return channel.recv_exit_status()
    finally:
        channel.close()


def kill_script(pgids: list[int]) -> str:
    """Shell that SIGTERMs the groups, waits up to the grace, then SIGKILLs survivors.

    Like every control script it never calls `exit`: it also runs inside the kept shell.
    """
    groups = " ".join(str(p) for p in pgids)
    rounds = GRACE_ROUNDS
    # A group is alive while it has a non-zombie member: orphans re-parented to an init
    # that reaps slowly (containers) stay zombies, and `kill -0` alone would wait out the
    # whole grace for them. The group id equals the session id (sshd's setsid), which
    # procps `ps -s` selects by; where ps cannot do that, fall back to `kill -0`.
    # `kill -SIG -PGID` without `--`: dash rejects `--`, and both dash and bash accept this.
    return (
        f"g='{groups}'; "
        "alive() { s=$(ps -o stat= -s $1 2>/dev/null) || { kill -0 -$1 2>/dev/null; return; }; "
        "printf '%s\\n' \"$s\" | grep -qv '^Z'; }; "
        "for p in $g; do kill -TERM -$p; done 2>/dev/null; n=0; a=1; "
        f'while [ -n "$a" ] && [ $n -lt {rounds} ]; do a=; for p in $g; do alive $p && a=1; done; '
        '[ -n "$a" ] && { sleep 0.05; n=$((n+1)); }; done; '
        'if [ -n "$a" ]; then for p in $g; do kill -KILL -$p; done 2>/dev/null; fi; true'
    )


def leftovers_script(pgid: int) -> str:
    """Shell that ends what an exited command left in its group: nothing to do costs one kill(2)."""
    rounds = GRACE_ROUNDS
    # TERM fails when the group is empty: the common case ends there, with no ps and no wait.
    return (
        f"if kill -TERM -{pgid} 2>/dev/null; then n=0; "
        f"while [ $n -lt {rounds} ] && kill -0 -{pgid} 2>/dev/null; do sleep 0.05; n=$((n+1)); done; "
        f"kill -KILL -{pgid} 2>/dev/null; fi; true"
    )


def unexpected_output(line: bytes) -> str:
    """Why a host whose shell printed `line` before the command cannot run commands."""
    return (
        f"unexpected output from the remote shell before the command: {line[:200]!r} "
        "(does a shell start-up file print something?)"
    )


def transport_alive(channel: paramiko.Channel) -> bool:
    """True while the connection under `channel` is up."""
    transport = channel.get_transport()
    return transport is not None and transport.is_active()


def kill_runs(entries: list[RemoteCommand], control: Control) -> None:
    """Kill the remote process groups (TERM, grace, KILL), then end what goes with each (see after_kill)."""
    pgids: dict[Become | None, list[int]] = {}
    for entry in entries:
        with entry.lock:
            if entry.pgid is not None and not entry.killed and entry.pgid > 1:
                entry.killed = True
                pgids.setdefault(entry.become, []).append(entry.pgid)
    for become, groups in pgids.items():
        # If the connection is gone, so is any way to reach those processes. The result
        # still says timed_out/cancelled, which is what the caller acts on.
        control(kill_script(groups), become)
    for entry in entries:
        if entry.killed:
            entry.after_kill()


@dataclass(frozen=True)
class RemoteHooks:
    """What every remote command of one executor shares: its target, output cap and the executor's callbacks."""

    target: Target
    output_cap: int
    #: Runs a kill or clean-up script on the host (see Control).
    control: Control
    #: Remembers a process group cut off by a dropped connection, to be killed on reconnect.
    orphan: Callable[[int, Become | None], None]
    #: Takes an ended command off the executor's in-flight set.
    forget: Callable[[RemoteCommand], None]


class RemoteCommand(Process):
    """What every in-flight remote command has: its channel, its process group once reported, and how to kill it.

    Two kinds run (see ssh_process.RemoteProcess, a session per command, and
    ssh_kept.KeptCommand, a command run by the kept shell's supervisor); both report the group before
    anything else, kill it the same way, and leave it to be killed on reconnect when the
    connection drops under them.
    """

    def __init__(
        self, channel: paramiko.Channel, hooks: RemoteHooks, *, on_start: OnStart | None, become: Become | None = None
    ) -> None:
        super().__init__(hooks.output_cap)
        self.channel = channel
        self.become = become
        self.pgid: int | None = None
        self.kill_requested_at: float | None = None  # timeout or cancel: kill once pgid is known
        self.killed = False
        self.lock = threading.Lock()
        self._target = hooks.target
        self._on_start = on_start
        self._control = hooks.control
        self._orphan = hooks.orphan
        self._forget = hooks.forget
        self._code: int | None = None

    @contextmanager
    def faults(self) -> Iterator[None]:
        """A drop of the connection is ConnectionLost; other library errors become ours."""
        with translate(COMMAND_FAULTS, host=self._target.name, endpoint=self._target.endpoint):
            try:
                yield
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if not transport_alive(self.channel):
                    raise ConnectionLost(self._lost(f"{type(exc).__name__}: {exc}")) from exc
                raise

    def after_kill(self) -> None:
        """Once the group is killed: what else ends with it (a session closes its channel)."""

    def _started(self, pgid: int) -> None:
        """Record the reported process group; kill it now if a cancel came first."""
        with self.lock:
            self.pgid = pgid
            late_kill = self.kill_requested_at is not None
        if late_kill:
            kill_runs([self], self._control)
        elif self._on_start is not None:
            try:
                self._on_start(pgid)
            except BaseException:
                # Whoever asked could not record the command: it must not run unrecorded.
                with self.lock:
                    self.kill_requested_at = time.monotonic()
                kill_runs([self], self._control)
                raise

    def kill(self) -> None:
        """Kill the remote group now, or as soon as it is reported."""
        self.kill_requested_at = time.monotonic()
        kill_runs([self], self._control)

    def _lost(self, why: str) -> str:
        """What a command cut off by a dropped connection reports; its group is killed on reconnect."""
        with self.lock:
            pgid = None if self.killed else self.pgid
        if pgid is not None and pgid > 1:
            self._orphan(pgid, self.become)
            fate = f"its remote process group {pgid} may still run and is killed on reconnect, before anything else"
        else:
            fate = "it may have started on the host, but its process group was not yet reported"
        return f"connection to {self._target.endpoint} lost during the command ({why}); {fate}"

    def exit_code(self) -> int | None:
        """The command's exit status; None when a signal ended it."""
        return self._code


class RemoteProcess(RemoteCommand):
    """One in-flight command on a session of its own: `echo $$; exec /bin/sh -c COMMAND`."""

    def __init__(
        self,
        channel: paramiko.Channel,
        hooks: RemoteHooks,
        *,
        remote_command: str,
        stdin: bytes | None,
        on_start: OnStart | None,
        become: Become | None = None,
    ) -> None:
        super().__init__(channel, hooks, on_start=on_start, become=become)
        self._remote_command = remote_command
        self._pending = memoryview(stdin or b"")
        self._header = bytearray()  # the first stdout line: the remote process group id
        self._wake = -1

    def after_kill(self) -> None:
        """The group is dead: close the session too."""
        self.channel.close()

    def begin(self) -> None:
        """Start the wrapped command; close its stdin at once when there is nothing to send."""
        self.channel.exec_command(self._remote_command)
        if not self._pending:
            self.channel.shutdown_write()
        self._wake = self.channel.fileno()  # readable on stdout, stderr, EOF or close

    def transfer(self, wait: float | None) -> None:
        """Send what stdin the channel takes, wait for data or the exit, then read both streams."""
        channel = self.channel
        if self._pending and channel.send_ready():
            try:
                self._pending = self._pending[channel.send(bytes(self._pending[:READ_CHUNK])) :]
            except OSError:
                self._pending = self._pending[:0]  # the command exited without reading it all
            if not self._pending and not channel.closed:
                channel.shutdown_write()
        if channel.eof_received:
            # The wake pipe stays readable after EOF; a command that closed its
            # output but still runs would make select() spin. Wait for the exit.
            channel.status_event.wait(wait)
        else:
            select.select([self._wake], [], [], wait)
        self._read()

    def _read(self) -> None:
        channel = self.channel
        while channel.recv_ready():
            chunk = channel.recv(READ_CHUNK)
            if not chunk:
                break  # EOF, or the channel was closed under us
            if self.pgid is None:
                self._header += chunk
                line, newline, rest = bytes(self._header).partition(b"\n")
                if not newline:
                    continue
                self._learn_pgid(line)
                chunk = rest
            self.out.feed(chunk)
        while channel.recv_stderr_ready():
            chunk = channel.recv_stderr(READ_CHUNK)
            if not chunk:
                break
            self.err.feed(chunk)

    def _learn_pgid(self, line: bytes) -> None:
        """Record the reported process group; kill it now if a cancel came first."""
        try:
            pgid = int(line.strip())
        except ValueError:
            raise ExecutorError(unexpected_output(line), host=self._target.name) from None
        self._started(pgid)

    def exited(self) -> bool:
        """True once the exit status (or the channel's close) has arrived."""
        return self.channel.exit_status_ready()

    def drained(self) -> bool:
        """True once the remote side sent EOF and every byte before it has been read.

        paramiko's transport thread buffers data and then flags EOF, independently of our
        reads: output that arrived with the EOF after the last read must still be read, so
        EOF is looked at first and the buffers after it.
        """
        channel = self.channel
        return bool(channel.eof_received) and not channel.recv_ready() and not channel.recv_stderr_ready()

    def stopping(self, now: float) -> bool | None:
        """Once a kill is under way: done when killed or closed; wait for the group id, not forever."""
        if self.kill_requested_at is None:
            return None
        waited = now - self.kill_requested_at
        return self.killed or bool(self.channel.closed) or waited > self._target.connect_timeout

    def poll_interval(self) -> float | None:
        """Look again soon: exit status, a pending kill and stdin give no wake event."""
        waits = [STATUS_POLL]
        if self.kill_requested_at is not None:
            waits.append(KILL_POLL)
        if self._pending:
            waits.append(SEND_POLL)
        return min(waits)

    def finish(self, *, killed: bool) -> None:
        """Collect the exit status, then end what the command left running in its group."""
        channel = self.channel
        if not killed:
            self._read()  # what arrived since the last read (past the linger, nothing signals it)
        if not killed and channel.exit_status_ready():
            if channel.exit_status < 0 and not transport_alive(channel):
                # paramiko marks a channel closed by a dead transport "exit status ready"
                # with status -1: that is a dropped connection, not a command that died.
                raise ConnectionLost(self._lost("the connection closed before the exit status arrived"))
            status = channel.recv_exit_status()
            # -1: no exit-status message, i.e. the remote shell died of a signal.
            self._code = None if status < 0 else status
        # The command is done: what it left running in its group must not outlive it.
        self._end_leftovers()

    def _end_leftovers(self) -> None:
        """Kill what an exited command left in its remote process group; best effort."""
        with self.lock:
            pgid = None if self.killed or self.pgid is None or self.pgid <= 1 else self.pgid
            self.killed = True
        if pgid is not None:
            # if the connection is gone, the command itself completed, which is what it reports
            self._control(leftovers_script(pgid), self.become)

    def close(self) -> None:
        """Deregister and close the channel."""
        self._forget(self)
        self.channel.close()
