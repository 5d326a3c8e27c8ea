"""A command run by the kept shell's supervisor (see ssh_agent) instead of on a session of its own.

A session per command costs the host an sshd fork and a login shell, then `/bin/sh` for
the command, and its clean-up; on a fleet's small steps that is most of the host's work.
Where the kept shell became the supervisor (perl and setsid on the host, see
ControlShell.probe) and is free, the supervisor runs the command: it forks, the child execs
`setsid /bin/sh -c COMMAND`, and it reports on the channel

    \nTAG N S PGID          on stdout, as soon as the child exists
    \nTAG N E STATUS        on stdout, once the command ended and what it left in its
                           group is dead (TERM, grace, KILL); STATUS is the exit code, or
                           sSIG when a signal ended it (waitpid's own status)
    \nTAG N E               on stderr, after everything the command wrote there

The command means what it means on a session: `/bin/sh -c`, the login environment plus
the run's variables, the home directory, stdin at end-of-file, stdout and stderr on the
channel's two streams; in a process group and session of its own (setsid), reported before
anything else, killed the same way (TERM, grace, KILL) on a timeout or cancel, cleaned up
after the same way, and its exit code, or None when a signal ended it. The supervisor's
lines are told from the command's output by its tag, a random token (in the supervisor's
argv, never in the command's); each line is removed byte for byte, with the newline put
before it, so the output arrives as the command wrote it, whatever it ends with. Small
writes to a pipe are atomic, so a line of the supervisor never splits one of the
command's, or the other way round.

What differs, and why it is safe:
- The supervisor waits for the command: while it runs, kill scripts and other commands on
  the same host take sessions of their own (the shell is locked by the command).
- A process that escaped the group (its own setsid) without redirecting its output holds
  the supervisor's stdout, as it would hold a session's; on a session that output is lost
  when the channel closes, here it shows in the output of a later command on the host.
- The child starts the command only once the supervisor has written its group: so when
  the supervisor ends (killed on the host, between two commands or just now) with no `S`
  line sent and the connection up, the command never started, and it runs on a session
  of its own instead. (A separate "request taken" line would have been a second small
  write right before `S`: over a jump host, whose sshd delays its ACKs, Nagle held the
  second one back 40 ms.)
- If the supervisor ends mid-command (killed on the host), the command's status is lost
  with it: that shows once the command closes its output (it ends, or its timeout kills
  it; paramiko ignores sshd's exit-signal, the only earlier sign), its group is killed
  (TERM, grace, KILL), and the result is in doubt (`connection_lost`), never a success.
  If the connection drops, the result is `connection_lost` as on a session, and the group
  is killed on reconnect.
Commands with stdin (sudo's password, a step's input) and `become` commands run on
sessions of their own, as do all commands on hosts without perl or setsid.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Mapping

import paramiko

from rollout.executors import ssh_agent
from rollout.executors.base import KILL_GRACE, OnStart, OutputTail
from rollout.executors.runner import ConnectionLost
from rollout.executors.ssh_control import ControlShell
from rollout.executors.ssh_process import (
    KILL_POLL,
    READ_CHUNK,
    STATUS_POLL,
    RemoteCommand,
    RemoteHooks,
    kill_script,
    transport_alive,
)


class Frames:
    """Splits one stream of the kept shell into the command's bytes and the shell's own lines.

    The shell's lines are `\\nMARKER REST\\n` where MARKER is `TAG N `; `feed` returns the
    bytes before and between them unchanged and each REST. Bytes that may be the start of
    a marker are held back until the next chunk tells. After an `E` line the stream is done:
    anything later is not this command's.
    """

    def __init__(self, marker: bytes) -> None:
        self._marker = marker
        self._held = bytearray()
        self.done = False

    def feed(self, chunk: bytes) -> tuple[bytes, list[bytes]]:
        """The command's bytes in `chunk` (and what was held back), and the shell's lines completed by it."""
        if self.done:
            return b"", []
        buffer = self._held
        buffer += chunk
        out = bytearray()
        lines: list[bytes] = []
        marker = self._marker
        while True:
            start = buffer.find(marker)
            if start < 0:
                break
            end = buffer.find(b"\n", start + len(marker))
            out += buffer[:start]
            if end < 0:
                del buffer[:start]  # the line is not whole yet
                return bytes(out), lines
            line = bytes(buffer[start + len(marker) : end])
            del buffer[: end + 1]
            lines.append(line)
            if line.startswith(b"E"):
                self.done = True
                buffer.clear()
                return bytes(out), lines
        # A marker starts with the only newline it holds, so only the bytes from the last
        # newline on can be the beginning of one.
        last = buffer.rfind(b"\n")
        if last >= 0 and len(buffer) - last < len(marker) and marker.startswith(buffer[last:]):
            out += buffer[:last]
            del buffer[:last]
        else:
            out += buffer
            buffer.clear()
        return bytes(out), lines


class NotTaken(Exception):
    """The supervisor ended before it reported the command's group: nothing started, so it can run elsewhere."""


class KeptCommand(RemoteCommand):
    """One command run by the kept shell; the caller has acquired the shell, and close() gives it back."""

    def __init__(
        self, shell: ControlShell, hooks: RemoteHooks, *, command: str, env: Mapping[str, str], on_start: OnStart | None
    ) -> None:
        super().__init__(shell.channel, hooks, on_start=on_start)
        self._shell = shell
        seq = shell.next_seq()
        marker = f"\n{shell.tag} {seq} ".encode()
        self._stdout = Frames(marker)
        self._stderr = Frames(marker)
        self._request = ssh_agent.command(seq, command, env)
        self._wake = -1

    def begin(self) -> None:
        """Send the request to the kept shell."""
        self._shell.discard_pending()
        self.channel.settimeout(self._target.connect_timeout)  # the shell reads its input: this is quick
        try:
            self.channel.sendall(self._request.encode())
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if transport_alive(self.channel):
                raise NotTaken from exc  # the supervisor's channel is closed: nothing was sent
            raise
        self._wake = self.channel.fileno()  # readable on stdout, stderr, EOF or close

    def _shell_gone(self) -> bool:
        """True once the kept shell (or the connection under it) ended.

        Its exit status says so even while the command, its child, still holds the
        channel's pipes open (sshd sends EOF only once they close).
        """
        channel = self.channel
        return bool(channel.closed or channel.eof_received or channel.exit_status_ready())

    def transfer(self, wait: float | None) -> None:
        """Wait for output or the shell's lines, then read both streams."""
        if not self._shell_gone():
            select.select([self._wake], [], [], wait)
        elif wait:
            # The wake pipe stays readable once the shell ended: do not spin on it.
            time.sleep(min(wait, STATUS_POLL))
        self._read()

    def _read(self) -> None:
        channel = self.channel
        for line in _drain(channel.recv_ready, channel.recv, self._stdout, self.out):
            self._line(line)
        _drain(channel.recv_stderr_ready, channel.recv_stderr, self._stderr, self.err)

    def _line(self, line: bytes) -> None:
        """`S PGID` once the command started, `E STATUS` once it and its clean-up are over."""
        kind, _, value = line.partition(b" ")
        if kind == b"S" and self.pgid is None:
            self._started(int(value))
        elif kind == b"E":
            # `sN`: a signal ended it, and the code is None, as for a session's exit-signal.
            self._code = None if value.startswith(b"s") else int(value)

    def exited(self) -> bool:
        """True once the shell reported the end (after the clean-up), or ended itself."""
        return self._stdout.done or self._shell_gone()

    def drained(self) -> bool:
        """True once both streams reported their end, or the shell ended and all it sent was read."""
        if self._stdout.done and self._stderr.done:
            return True
        channel = self.channel
        return self._shell_gone() and not channel.recv_ready() and not channel.recv_stderr_ready()

    def stopping(self, now: float) -> bool | None:
        """Once a kill is under way: done when the shell reports the end; never past the kill's own bound."""
        if self.kill_requested_at is None:
            return None
        if (self._stdout.done and self._stderr.done) or self._shell_gone():
            return True
        return now - self.kill_requested_at > self._target.connect_timeout + KILL_GRACE

    def poll_interval(self) -> float | None:
        """Look again soon while a kill waits for the group id; otherwise every output wakes the loop."""
        return KILL_POLL if self.kill_requested_at is not None else STATUS_POLL

    def finish(self, *, killed: bool) -> None:
        """Take the status the shell reported; if the shell ended first, end the command's group here."""
        if not killed:
            self._read()
        if killed or self._stdout.done:
            return  # the kill, or the shell's own clean-up, ended the group
        if not transport_alive(self.channel):
            raise ConnectionLost(self._lost("the connection closed before the command's end was reported"))
        if self.pgid is None and (self.channel.eof_received or self.channel.closed):
            # Everything it wrote has arrived (EOF comes after the data), and no group line
            # was among it: the child never started the command.
            raise NotTaken
        # The kept shell ended mid-command (killed on the host): the command's status is
        # lost with it, so whether it took effect is in doubt, as after a dropped
        # connection. Whatever of it still runs is ended first, as a kill would.
        with self.lock:
            pgid = None if self.killed or self.pgid is None or self.pgid <= 1 else self.pgid
            self.killed = True
        if pgid is not None:
            self._control(kill_script([pgid]), None)
        fate = f"its process group {pgid} was killed" if pgid is not None else "its process group was not reported"
        raise ConnectionLost(
            f"the shell on {self._target.endpoint} that ran the command ended before reporting the command's end "
            f"(killed on the host?); its status is lost, and {fate}"
        )

    def close(self) -> None:
        """Deregister and give the kept shell back; close it if it did not report both ends."""
        self._forget(self)
        if not (self._stdout.done and self._stderr.done):
            self._shell.close()  # mid-request: what it prints next is unknown, so start a new one
        self._shell.release()


def _drain(ready: Callable[[], bool], recv: Callable[[int], bytes], frames: Frames, tail: OutputTail) -> list[bytes]:
    """Read one stream while it has data: the command's bytes to `tail`, the supervisor's lines returned."""
    lines: list[bytes] = []
    while ready():
        chunk = recv(READ_CHUNK)
        if not chunk:
            break  # EOF, or the channel was closed under us
        data, found = frames.feed(chunk)
        tail.feed(data)
        lines += found
    return lines
