"""A shell kept open on the host for kill scripts: one session per connection, not one per script.

Every command's exit is followed by a clean-up of what it left in its process group (see
ssh_process). On its own channel that clean-up costs a whole session: sshd forks, the login
shell starts, runs one `kill`, and exits, on the host's CPU as much as the command itself.
Here the scripts go, one at a time, to a `/bin/sh` started once per connection, which runs
each in itself (no fork: the common clean-up is one `kill` builtin that fails on an empty
group) and reports on a line of its own:

    { SCRIPT
    } </dev/null >/dev/null 2>&1; echo "@rollout-control N $?"

so the scripts never call `exit` (see ssh_process); one that did would end the shell, and
the next script would take a channel of its own.

The shell is a session of its own (sshd's setsid), so it is in no command's process group
and survives every kill it sends. It reads its scripts from the channel: when the
connection ends, its stdin ends and so does it; nothing it starts outlives the connection
by more than the script it is running.

The kept shell is an optimisation, never a dependency. It is used only by one caller at a
time (a second concurrent kill takes a channel of its own, as it always did); if it cannot
be started, if it dies, or if a script does not report in time, it is closed and the
caller falls back to a channel of its own. Lines other than the report (a login shell's
start-up files may print) are ignored. It holds one of the connection's sessions (sshd's
MaxSessions, 10 by default); when sshd refuses a command's session, the executor closes
the kept shell and asks again.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time

import paramiko

#: How the report line starts; the shell's argument too, so it can be told apart in `ps`.
MARK = "@rollout-control"
#: Output that is not a report is dropped; a shell that prints this much without one is closed.
_NOISE_CAP = 64 * 1024


class ControlShell:
    """One `/bin/sh` on the host that runs kill scripts sent over a kept channel."""

    def __init__(self, transport: paramiko.Transport, *, timeout: float) -> None:
        """Open the session and start the shell; raises paramiko.SSHException or OSError if it cannot."""
        self.lock = threading.Lock()
        self._seq = 0
        self._buffer = bytearray()
        self._closed = False
        #: The first line the shell printed that was not a report: a start-up file's output.
        self.noise: bytes | None = None
        self._channel = transport.open_session(timeout=timeout)
        try:
            self._channel.exec_command(f"exec /bin/sh -s {MARK}")
        except BaseException:
            self._channel.close()
            raise

    @property
    def usable(self) -> bool:
        """False once closed, or once the shell or the connection under it ended."""
        return not self._closed and not self._channel.closed and not self._channel.eof_received

    def run(self, script: str, *, timeout: float) -> bool:
        """Run `script` in the shell and wait for its report; False (and closed) if there was none within `timeout`.

        The caller holds `lock`. The script's exit status does not matter: the kill
        scripts end with `true`, and what counts is that they ran to the end.
        """
        if not self.usable:
            return False
        self._seq += 1
        report = f"{MARK} {self._seq} ".encode()
        request = f'{{ {script}\n}} </dev/null >/dev/null 2>&1; echo "{MARK} {self._seq} $?"\n'
        deadline = time.monotonic() + timeout
        try:
            self._channel.settimeout(timeout)
            self._channel.sendall(request.encode())
            while True:
                line_end = self._buffer.find(b"\n")
                if line_end >= 0:
                    line = bytes(self._buffer[:line_end])
                    del self._buffer[: line_end + 1]
                    if line.startswith(report):
                        return True
                    if self.noise is None:  # the scripts print nothing: a start-up file did
                        self.noise = line[:200]
                    continue
                if len(self._buffer) > _NOISE_CAP:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._channel.settimeout(left)
                chunk = self._channel.recv(4096)
                if not chunk:
                    break  # the shell exited, or the connection is gone
                self._buffer += chunk
                while self._channel.recv_stderr_ready():  # the shell's own complaints, if any
                    self._channel.recv_stderr(4096)
        except (paramiko.SSHException, EOFError, OSError):  # a timeout is an OSError too
            pass
        self.close()
        return False

    def close(self) -> None:
        """Close the channel: the shell reads EOF and exits; idempotent, and quiet on a dead connection."""
        self._closed = True
        # On a connection that just died, closing fails too (the CLOSE message cannot be
        # sent); the shell goes with the connection all the same.
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            self._channel.close()


class ShellKeeper:
    """An executor's kept shell: started on first need, replaced when it dies, given up for sshd's MaxSessions."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout  # the target's connect timeout: opening the session, freeing one
        self._lock = threading.Lock()
        self._shell: ControlShell | None = None
        self._no_shell_on: paramiko.Transport | None = None  # where one could not start: not tried again
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
                    self._shell = None
                transport = client.get_transport() if client is not None else None
                if transport is None or not transport.is_active() or transport is self._no_shell_on:
                    return None
                try:
                    shell = ControlShell(transport, timeout=self._timeout)
                except (paramiko.SSHException, EOFError, OSError):
                    self._no_shell_on = transport
                    return None
                self._shell = shell
        if not shell.lock.acquire(blocking=False):
            return None
        if not shell.usable:
            shell.lock.release()
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
        shell.close()
        self._closed_at = time.monotonic()
        return True

    def closing(self) -> bool:
        """True while sshd may still be freeing the session of a kept shell closed a moment ago."""
        return time.monotonic() - self._closed_at < self._timeout
