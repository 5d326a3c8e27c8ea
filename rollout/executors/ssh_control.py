"""A shell kept open on the host for commands and kill scripts: one session per connection.

A session costs the host an sshd fork and a login shell. One `/bin/sh` per connection,
started through the login shell as any command is, instead runs, one request at a time,
the clean-up after a command run on a session of its own and the kill scripts of timeouts
and cancels, in itself (no fork: the common clean-up is one `kill` builtin that fails on an
empty group), each reporting on a line of its own:

    { SCRIPT
    } </dev/null >/dev/null 2>&1; echo "@rollout-control N $?"

so the scripts never call `exit` (see ssh_process); one that did would end the shell, and
the next script would take a channel of its own.

On its first use (`probe`), where the host has perl and setsid, the shell replaces itself
with a supervisor (see ssh_agent) that also runs commands (see ssh_kept), each in a
process group and session of its own, reporting the exact status: a POSIX shell cannot
tell a command ended by a signal from one that exited 128+N. The supervisor runs the
scripts with /bin/sh and reports them the same way.

The shell is a session of its own (sshd's setsid), so it is in no command's process group
and survives every kill it sends. It reads its requests from the channel: when the
connection ends, its stdin ends and so does it; nothing it starts outlives the connection
by more than the request it is running.

The kept shell is an optimisation, never a dependency. It is used only by one caller at a
time (a second concurrent command or kill takes a channel of its own, as it always did);
if it cannot be started, if it dies, or if a request does not report in time, it is closed
and the caller falls back to a channel of its own. Lines other than the report (a login
shell's start-up files may print) are ignored. It holds one of the connection's sessions
(sshd's MaxSessions, 10 by default); when sshd refuses a command's session, the executor
closes the kept shell (once it is idle) and asks again.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import threading
import time
from collections.abc import Callable

import paramiko

from rollout.executors import ssh_agent

#: How the report line starts; the shell's argument too, so it can be told apart in `ps`.
MARK = "@rollout-control"
#: Output that is not a report is dropped; a shell that prints this much without one is closed.
_NOISE_CAP = 64 * 1024


class ControlShell:
    """One `/bin/sh` on the host that runs kill scripts, and commands (see ssh_kept), sent over a kept channel."""

    def __init__(self, transport: paramiko.Transport, *, timeout: float, supervise: bool = True) -> None:
        """Open the session and start the shell; raises paramiko.SSHException or OSError if it cannot.

        Without `supervise`, the probe does not try the supervisor (it failed on this
        connection before).
        """
        self.transport = transport
        self._supervise = supervise
        #: The supervisor was started here and failed its check: not to be tried again.
        self.supervisor_failed = False
        self.lock = threading.Lock()
        #: Marks the kept shell's own lines among a command's output (see ssh_kept): unguessable.
        self.tag = f"{MARK}:{secrets.token_hex(8)}"
        #: Whether the supervisor runs here, and so commands can (see ssh_agent); None until probed.
        self.commands: bool | None = None
        self._seq = 0
        self._buffer = bytearray()
        self._closed = False
        self._retire = False  # close on release: sshd's MaxSessions wants the session back
        #: The first line the shell printed that was not a report: a start-up file's output.
        self.noise: bytes | None = None
        self.channel = transport.open_session(timeout=timeout)
        try:
            self.channel.exec_command(f"exec /bin/sh -s {MARK}")
        except BaseException:
            self.channel.close()
            raise

    @property
    def usable(self) -> bool:
        """False once closed, or once the shell or the connection under it ended."""
        return not self._closed and not self.channel.closed and not self.channel.eof_received

    def next_seq(self) -> int:
        """A number for the next request, so that no report is taken for another's."""
        self._seq += 1
        return self._seq

    def run(self, script: str, *, timeout: float) -> bool:
        """Run `script` in the shell (or the supervisor) and wait for its report; False (and closed) if none within `timeout`.

        The caller holds `lock`. The script's exit status does not matter: the kill
        scripts end with `true`, and what counts is that they ran to the end.
        """
        seq = self.next_seq()
        if self.commands:
            return self._exchange(ssh_agent.control(seq, script), seq, timeout, lambda _line: False)
        request = f'{{ {script}\n}} </dev/null >/dev/null 2>&1; echo "{MARK} {seq} $?"\n'
        return self._exchange(request, seq, timeout, lambda _line: False)

    def probe(self, *, timeout: float) -> bool:
        """Check that the shell answers, and start the supervisor where it can; False (and closed) if no answer.

        Where the host has `perl`, and setsid(2) by a number we know for its `uname -m` or
        util-linux `setsid`, the shell replaces itself with the supervisor (see ssh_agent),
        which then runs commands and control scripts; it answers once its own check showed
        that a child becomes a session and group of its own. Elsewhere the shell stays a
        shell, for control scripts only, and commands take sessions of their own.
        """
        seq = self.next_seq()
        tools = f"{self.tag} tools "
        found: list[bytes] = []

        def tools_line(line: bytes) -> bool:
            if line.startswith(tools.encode()):
                found.append(line[len(tools) :])
                return True
            return False

        request = (
            f'{{ command -v perl >/dev/null && echo "{tools}$(uname -m) $(command -v setsid)"; }} </dev/null 2>/dev/null; '
            f'echo "{MARK} {seq} $?"\n'
        )
        if not self._exchange(request, seq, timeout, tools_line):
            return False
        self.commands = False
        if not found or self.noise is not None or not self._supervise:
            return True
        machine, _, setsid_path = found[0].decode(errors="replace").partition(" ")
        setsid_nr = ssh_agent.setsid_syscall(machine)
        if not setsid_nr and not setsid_path.strip():
            return True  # neither setsid(2) by number nor util-linux setsid
        seq = self.next_seq()
        answered = self._exchange(
            ssh_agent.start(MARK, self.tag, seq, setsid_nr), seq, timeout, lambda _line: False, want="0"
        )
        if answered:
            self.commands = True
            return True
        # The shell is gone (replaced by a supervisor that failed its check): a later
        # caller starts a new shell, which stays a shell (see ShellKeeper).
        self.supervisor_failed = True
        self.close()
        return True

    def _exchange(
        self, request: str, seq: int, timeout: float, expected: Callable[[bytes], bool], *, want: str | None = None
    ) -> bool:
        """Send `request` and read lines until report `seq` (with status `want`, if given); other lines not `expected` are noise."""
        if not self.usable:
            return False
        report = f"{MARK} {seq} ".encode()
        deadline = time.monotonic() + timeout
        try:
            self.channel.settimeout(timeout)
            self.channel.sendall(request.encode())
            while True:
                line_end = self._buffer.find(b"\n")
                if line_end >= 0:
                    line = bytes(self._buffer[:line_end])
                    del self._buffer[: line_end + 1]
                    if line.startswith(report):
                        return want is None or line[len(report) :] == want.encode()
                    if not expected(line) and self.noise is None:  # the scripts print nothing: a start-up file did
                        self.noise = line[:200]
                    continue
                if len(self._buffer) > _NOISE_CAP:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.channel.settimeout(left)
                chunk = self.channel.recv(4096)
                if not chunk:
                    break  # the shell exited, or the connection is gone
                self._buffer += chunk
                while self.channel.recv_stderr_ready():  # the shell's own complaints, if any
                    self.channel.recv_stderr(4096)
        except (paramiko.SSHException, EOFError, OSError):  # a timeout is an OSError too
            pass
        self.close()
        return False

    def discard_pending(self) -> None:
        """Drop what the shell printed outside any request (nothing, unless a detached process writes there)."""
        self._buffer.clear()
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            while self.channel.recv_ready():
                self.channel.recv(65536)
            while self.channel.recv_stderr_ready():
                self.channel.recv_stderr(65536)

    def retire(self) -> None:
        """Close the shell when its current user releases it (now, if it has none)."""
        self._retire = True
        if self.lock.acquire(blocking=False):
            self.release()

    def release(self) -> None:
        """Give the shell back after `acquire`; it closes instead if it was retired meanwhile."""
        if self._retire:
            self.close()
        self.lock.release()

    def close(self) -> None:
        """Close the channel: the shell reads EOF and exits; idempotent, and quiet on a dead connection."""
        self._closed = True
        # On a connection that just died, closing fails too (the CLOSE message cannot be
        # sent); the shell goes with the connection all the same.
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            self.channel.close()


class ShellKeeper:
    """An executor's kept shell: started on first need, replaced when it dies, given up for sshd's MaxSessions."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout  # the target's connect timeout: opening the session, freeing one
        self._lock = threading.Lock()
        self._shell: ControlShell | None = None
        self._no_shell_on: paramiko.Transport | None = None  # where one could not start: not tried again
        self._no_supervisor_on: paramiko.Transport | None = None  # where the supervisor failed its check
        self._closed_at = -math.inf  # monotonic time the last one was closed

    def acquire(self, client: paramiko.SSHClient | None) -> ControlShell | None:
        """The kept shell on `client`'s live connection, locked for the caller; None if there is none to use.

        None when the connection is down (never connects: a kill script is for the
        connection that ran the command), when no shell can start there, or when another
        script is running on it (the caller takes a channel of its own).
        """
        with self._lock:
            shell = self._shell
            if shell is None or not shell.usable:
                if shell is not None:
                    shell.close()  # it died, or its connection did: its session goes too
                    if shell.supervisor_failed:
                        self._no_supervisor_on = shell.transport
                    self._shell = None
                transport = client.get_transport() if client is not None else None
                if transport is None or not transport.is_active() or transport is self._no_shell_on:
                    return None
                try:
                    shell = ControlShell(
                        transport, timeout=self._timeout, supervise=transport is not self._no_supervisor_on
                    )
                except (paramiko.SSHException, EOFError, OSError):
                    self._no_shell_on = transport
                    return None
                self._shell = shell
        if not shell.lock.acquire(blocking=False):
            return None
        if not shell.usable:
            shell.release()
            return None
        return shell

    def drop(self, transport: paramiko.Transport | None) -> bool:
        """Close the kept shell (and start no other on `transport`); True if there was one."""
        with self._lock:
            shell, self._shell = self._shell, None
            if transport is not None:
                self._no_shell_on = transport
        if shell is None:
            return False
        # A shell running a command is closed when the command ends: closing it now would
        # leave the command running with no one to report or clean up after it.
        shell.retire()
        self._closed_at = time.monotonic()
        return True

    def closing(self) -> bool:
        """True while sshd may still be freeing the session of a kept shell closed a moment ago."""
        return time.monotonic() - self._closed_at < self._timeout
