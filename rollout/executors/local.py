"""Run commands on this machine: one /bin/sh per command, in its own process group.

Each command gets a new session (so a new process group) so that a timeout or a cancel
can kill everything the command started, not only the shell; and when the shell exits,
whatever it left running in that group (`sleep 30 &`) is killed too, before the shell
is reaped, so the group id cannot have been reused. This module must never
use `shell=True` (the command string goes to `/bin/sh -c` as one argument) and never
buffer unbounded output.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from rollout.errors import ExecutorError
from rollout.executors.base import (
    DEFAULT_OUTPUT_CAP,
    DEFAULT_READ_LIMIT,
    KILL_GRACE,
    CommandResult,
    OnStart,
    OutputTail,
    Target,
    validate_env,
)

_READ_CHUNK = 64 * 1024
#: After the shell exits, how long to keep reading pipes still held by its background
#: children before giving up on them (a daemon started without redirecting output
#: would otherwise hold the step until its timeout).
_LINGER = 0.25
_HAS_PIDFD = hasattr(os, "pidfd_open")


@dataclass(eq=False)
class _InFlight:
    proc: subprocess.Popen[bytes]
    cancelled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _leader_exited(pid: int) -> bool:
    """True once `pid` has exited; it is left unreaped so its group id stays reserved."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # ESRCH (group already gone) and EPERM (a member changed uid) are both "nothing to do".
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group, give it a short grace, then SIGKILL it.

    Must be called while the leader is not yet reaped: its pid is then still reserved,
    so the group id cannot have been reused by an unrelated process.
    """
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline and not _leader_exited(proc.pid):
        time.sleep(0.005)
    # Unconditional: children that outlived the shell must not outlive the step.
    _signal_group(proc.pid, signal.SIGKILL)


class LocalExecutor:
    """Runs commands with /bin/sh on this machine."""

    def __init__(self, target: Target, *, output_cap: int = DEFAULT_OUTPUT_CAP) -> None:
        self.target = target
        self.output_cap = output_cap
        self._lock = threading.Lock()
        self._in_flight: set[_InFlight] = set()
        self._closed = False

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_start: OnStart | None = None,
    ) -> CommandResult:
        """Run `command` with /bin/sh and wait for it, the timeout, or a cancel."""
        extra = validate_env(env)
        started = time.monotonic()
        # Spawn and register under the lock: a cancel() that comes once the command has
        # started doing things (a loaded machine may run it long before this thread is
        # scheduled again) must find it in flight.
        with self._lock:
            try:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", command],
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={**os.environ, **extra} if extra else None,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ExecutorError(f"cannot start /bin/sh: {exc}", host=self.target.name) from exc
            entry = _InFlight(proc)
            self._in_flight.add(entry)
        try:
            if on_start is not None:
                on_start(proc.pid)  # start_new_session: the shell's pid is the group id
            out, err, timed_out = self._communicate(proc, entry, stdin, timeout, started)
        finally:
            # Deregister before reaping, under the lock, so cancel() never signals a
            # group whose leader pid may already have been reused.
            with self._lock:
                self._in_flight.discard(entry)
            # On every exit, normal or not: what the command left in its group (background
            # children) must not outlive the step. The leader is still unreaped here, so
            # its pid, and with it the group id, cannot belong to anyone else yet.
            _kill_group(proc)
            proc.wait()
        code = proc.returncode
        killed = timed_out or entry.cancelled
        return CommandResult(
            host=self.target.name,
            command=command,
            exit_code=None if killed or code < 0 else code,
            stdout=out.text(),
            stderr=err.text(),
            duration=time.monotonic() - started,
            timed_out=timed_out,
            cancelled=entry.cancelled and not timed_out,
            truncated=out.truncated or err.truncated,
        )

    def _communicate(
        self,
        proc: subprocess.Popen[bytes],
        entry: _InFlight,
        stdin: bytes | None,
        timeout: float | None,
        started: float,
    ) -> tuple[OutputTail, OutputTail, bool]:
        """Pump stdin/stdout/stderr in this thread until exit, timeout or cancel."""
        assert proc.stdout is not None
        assert proc.stderr is not None
        tails = {
            proc.stdout.fileno(): OutputTail(self.output_cap),
            proc.stderr.fileno(): OutputTail(self.output_cap),
        }
        out, err = tails[proc.stdout.fileno()], tails[proc.stderr.fileno()]
        poller = select.poll()
        for fd in tails:
            poller.register(fd, select.POLLIN)
        # A pidfd turns "the shell exited" into a poll event: no polling interval, so
        # the common case costs nothing beyond the read of the final EOFs.
        pidfd = os.pidfd_open(proc.pid) if _HAS_PIDFD else -1
        if pidfd >= 0:
            poller.register(pidfd, select.POLLIN)
        pending = memoryview(stdin or b"")
        stdin_fd = -1
        if proc.stdin is not None:
            stdin_fd = proc.stdin.fileno()
            if pending:
                os.set_blocking(stdin_fd, False)
                poller.register(stdin_fd, select.POLLOUT)
            else:
                proc.stdin.close()
                stdin_fd = -1
        deadline = None if timeout is None else started + timeout
        exited_at: float | None = None
        timed_out = False
        try:
            # Until both pipes hit EOF *and* the shell has exited: a shell that closed
            # its output may still be running (and must then still obey the timeout).
            while tails or exited_at is None:
                now = time.monotonic()
                if exited_at is None and (pidfd < 0 or entry.cancelled):
                    exited_at = now if _leader_exited(proc.pid) else None
                if exited_at is not None and (not tails or now - exited_at >= _LINGER):
                    break  # background children hold the pipes; stop waiting for them
                if deadline is not None and now >= deadline and exited_at is None:
                    timed_out = True
                    _kill_group(proc)
                    exited_at = time.monotonic()
                    continue
                wait = _next_wake(now, deadline, exited_at, polling=pidfd < 0)
                for fd, _event in poller.poll(None if wait is None else wait * 1000):
                    if fd == pidfd:
                        poller.unregister(pidfd)
                        exited_at = time.monotonic()
                    elif fd == stdin_fd:
                        try:
                            sent = os.write(stdin_fd, pending[:_READ_CHUNK])
                        except BrokenPipeError:
                            sent = len(pending)  # the command stopped reading: its choice
                        pending = pending[sent:]
                        if not pending:
                            poller.unregister(stdin_fd)
                            assert proc.stdin is not None
                            with contextlib.suppress(BrokenPipeError):
                                proc.stdin.close()
                            stdin_fd = -1
                    else:
                        chunk = os.read(fd, _READ_CHUNK)
                        if chunk:
                            tails[fd].feed(chunk)
                        else:
                            poller.unregister(fd)
                            del tails[fd]
        finally:
            if pidfd >= 0:
                os.close(pidfd)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        return out, err, timed_out

    def read_file(self, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT) -> bytes:
        """Return the content of a local file; refuse files over `max_bytes`."""
        try:
            with open(path, "rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise ExecutorError(f"cannot read {path}: {exc.strerror or exc}", host=self.target.name) from exc
        if len(data) > max_bytes:
            raise ExecutorError(f"{path} is larger than {max_bytes} bytes", host=self.target.name)
        return data

    def put_file(self, data: bytes, path: str, *, mode: int = 0o644) -> None:
        """Replace a local file atomically: temp file, fsync, rename, fsync the directory."""
        directory = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(
            directory,
            f".{os.path.basename(path)}.rollout-{os.getpid()}-{threading.get_ident()}.tmp",
        )
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                # Explicit chmod: the umask must not weaken or change the requested mode.
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise ExecutorError(f"cannot write {path}: {exc.strerror or exc}", host=self.target.name) from exc

    def cancel(self) -> None:
        """Kill every in-flight command's process group (SIGTERM, grace, SIGKILL)."""
        with self._lock:
            entries = list(self._in_flight)
            for entry in entries:
                entry.cancelled = True
                _signal_group(entry.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + KILL_GRACE
            while time.monotonic() < deadline and not all(_leader_exited(e.proc.pid) for e in entries):
                time.sleep(0.005)
            # Still under the lock: no run() can reap a leader (and free its pid) here.
            for entry in entries:
                _signal_group(entry.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Kill what is still running; idempotent, and later runs still work."""
        if not self._closed:
            self._closed = True
            self.cancel()


def _next_wake(now: float, deadline: float | None, exited_at: float | None, *, polling: bool) -> float | None:
    """Seconds until the loop must look again without an event, or None for never."""
    waits = []
    if deadline is not None and exited_at is None:
        waits.append(deadline - now)
    if exited_at is not None:
        waits.append(exited_at + _LINGER - now)
    if polling and exited_at is None:
        waits.append(0.01)  # no pidfd on this platform: look for the exit now and then
    return max(0.0, min(waits)) if waits else None
