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
import grp
import hashlib
import os
import pwd
import select
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping

from rollout.atomic import write_all
from rollout.errors import ExecutorError
from rollout.executors.base import (
    DEFAULT_OUTPUT_CAP,
    DEFAULT_READ_LIMIT,
    KILL_GRACE,
    Become,
    CommandResult,
    OnStart,
    OutputTail,
    Target,
    Uploaded,
    backup_paths,
    validate_env,
)
from rollout.executors.faults import READ_FAULTS, SPAWN_FAULTS, WRITE_FAULTS, translate
from rollout.executors.runner import Process, run_process

_READ_CHUNK = 64 * 1024
_HAS_PIDFD = hasattr(os, "pidfd_open")
#: Without a pidfd the shell's exit is no poll event: look for it this often.
_EXIT_POLL = 0.01


def _leader_exited(pid: int) -> bool:
    """True once `pid` has exited; it is left unreaped so its group id stays reserved."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


#: How long a kill sent through sudo may take (sudo itself, then kill(1)).
_SUDO_KILL_TIMEOUT = 10.0


def _signal_group(pgid: int, sig: signal.Signals, become: Become | None = None) -> None:
    """Signal a process group; one started through sudo, as the same sudo unless we are root."""
    if become is not None and os.geteuid() != 0:
        # sudo (root) and the command (become.user) are not ours to signal: ask the same sudo.
        # Its password, if any, goes on stdin; a failure leaves the group to the next kill.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                become.command(f"kill -{sig.name[3:]} -{pgid} 2>/dev/null; exit 0", {}),
                input=become.stdin(None),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=_SUDO_KILL_TIMEOUT,
                check=False,
                start_new_session=True,
            )
        return
    # ESRCH (group already gone) and EPERM (a member changed uid) are both "nothing to do".
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_group(proc: subprocess.Popen[bytes], become: Become | None = None) -> None:
    """SIGTERM the command's process group, give it a short grace, then SIGKILL it.

    Must be called while the leader is not yet reaped: its pid is then still reserved,
    so the group id cannot have been reused by an unrelated process.
    """
    _signal_group(proc.pid, signal.SIGTERM, become)
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline and not _leader_exited(proc.pid):
        time.sleep(0.005)
    # Unconditional: children that outlived the shell must not outlive the step.
    _signal_group(proc.pid, signal.SIGKILL, become)


class _LocalProcess(Process):
    """One /bin/sh child: pipes and a pidfd multiplexed with poll(2), its group killed on close."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        stdin: bytes | None,
        output_cap: int,
        on_start: OnStart | None,
        forget: Callable[[_LocalProcess], None],
        become: Become | None = None,
    ) -> None:
        super().__init__(output_cap)
        self.proc = proc
        self.become = become
        self._on_start = on_start
        self._forget = forget
        self._poller = select.poll()
        self._tails: dict[int, OutputTail] = {}
        self._pending = memoryview(stdin or b"")
        self._stdin_fd = -1
        self._pidfd = -1
        self._exited = False

    def begin(self) -> None:
        """Report the group (the shell's pid: start_new_session) and register the pipes."""
        proc = self.proc
        if self._on_start is not None:
            self._on_start(proc.pid)
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._tails = {proc.stdout.fileno(): self.out, proc.stderr.fileno(): self.err}
        for fd in self._tails:
            self._poller.register(fd, select.POLLIN)
        # A pidfd turns "the shell exited" into a poll event: no polling interval, so
        # the common case costs nothing beyond the read of the final EOFs.
        self._pidfd = os.pidfd_open(proc.pid) if _HAS_PIDFD else -1
        if self._pidfd >= 0:
            self._poller.register(self._pidfd, select.POLLIN)
        if proc.stdin is not None:
            if self._pending:
                self._stdin_fd = proc.stdin.fileno()
                os.set_blocking(self._stdin_fd, False)
                self._poller.register(self._stdin_fd, select.POLLOUT)
            else:
                proc.stdin.close()

    def transfer(self, wait: float | None) -> None:
        """Handle the poll events: the shell's exit, stdin writability, output."""
        for fd, _event in self._poller.poll(None if wait is None else wait * 1000):
            if fd == self._pidfd:
                self._poller.unregister(fd)
                self._exited = True
            elif fd == self._stdin_fd:
                self._write_stdin()
            else:
                chunk = os.read(fd, _READ_CHUNK)
                if chunk:
                    self._tails[fd].feed(chunk)
                else:
                    self._poller.unregister(fd)
                    del self._tails[fd]

    def _write_stdin(self) -> None:
        try:
            sent = os.write(self._stdin_fd, self._pending[:_READ_CHUNK])
        except BrokenPipeError:
            sent = len(self._pending)  # the command stopped reading: its choice
        self._pending = self._pending[sent:]
        if not self._pending:
            self._poller.unregister(self._stdin_fd)
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
            self._stdin_fd = -1

    def exited(self) -> bool:
        """True once the shell has exited; without a pidfd (or once cancelled) ask waitid."""
        if not self._exited and (self._pidfd < 0 or self.cancelled):
            self._exited = _leader_exited(self.proc.pid)
        return self._exited

    def drained(self) -> bool:
        """True once both pipes reached EOF."""
        return not self._tails

    def kill(self) -> None:
        """TERM, grace, KILL the command's group; the shell is then as good as gone."""
        _kill_group(self.proc, self.become)
        self._exited = True

    def poll_interval(self) -> float | None:
        """Without a pidfd, look for the shell's exit now and then."""
        return _EXIT_POLL if self._pidfd < 0 and not self._exited else None

    def finish(self, *, killed: bool) -> None:
        """Nothing to collect yet: the exit status is read when close() reaps the shell."""

    def exit_code(self) -> int | None:
        """The shell's exit code; None when a signal ended it."""
        code = self.proc.returncode
        return None if code is None or code < 0 else code

    def close(self) -> None:
        """Close the pipes, deregister, kill what is left in the group, then reap the shell."""
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        # Deregister before reaping, so cancel() never signals a group whose leader pid
        # may already have been reused.
        self._forget(self)
        # On every exit, normal or not: what the command left in its group (background
        # children) must not outlive the step. The leader is still unreaped here, so
        # its pid, and with it the group id, cannot belong to anyone else yet.
        _kill_group(self.proc, self.become)
        self.proc.wait()


def _owner_ids(owner: str) -> tuple[int, int]:
    """`user[:group]` (names or numbers) as the uid and gid for chown; -1 leaves one unchanged."""
    user, _, group = owner.partition(":")
    uid = -1 if not user else int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    gid = -1 if not group else int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid


def _fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keep_previous(dest: str, backup: str, absent: str) -> bool:
    """Keep dest's current content beside it, unless an earlier attempt did; True if dest existed then.

    A hard link keeps the old inode (content, mode, owner) while the upload renames a new
    one over dest. The first attempt's copy wins: a retry must not keep its own half-change.
    """
    if os.path.lexists(absent):
        return False
    if os.path.lexists(backup):
        return True
    if not os.path.lexists(dest):
        os.close(os.open(absent, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        _fsync_dir(os.path.dirname(os.path.abspath(dest)))
        return False
    os.link(dest, backup)
    _fsync_dir(os.path.dirname(os.path.abspath(dest)))
    return True


class LocalExecutor:
    """Runs commands with /bin/sh on this machine."""

    def __init__(self, target: Target, *, output_cap: int = DEFAULT_OUTPUT_CAP) -> None:
        self.target = target
        self.output_cap = output_cap
        self._lock = threading.Lock()
        self._in_flight: set[_LocalProcess] = set()
        self._closed = False

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_start: OnStart | None = None,
        become: Become | None = None,
    ) -> CommandResult:
        """Run `command` with /bin/sh (through sudo with `become`) and wait for it, the timeout, or a cancel."""
        extra = validate_env(env)
        argv = ["/bin/sh", "-c", command] if become is None else become.command(command, extra)
        if become is not None:
            stdin = become.stdin(stdin)
        started = time.monotonic()
        # Spawn and register under the lock: a cancel() that comes once the command has
        # started doing things (a loaded machine may run it long before this thread is
        # scheduled again) must find it in flight.
        with self._lock:
            with translate(SPAWN_FAULTS, host=self.target.name):
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={**os.environ, **extra} if extra else None,
                    start_new_session=True,
                )
            entry = _LocalProcess(
                proc, stdin=stdin, output_cap=self.output_cap, on_start=on_start, forget=self._forget, become=become
            )
            self._in_flight.add(entry)
        return run_process(entry, host=self.target.name, command=command, timeout=timeout, started=started)

    def _forget(self, entry: _LocalProcess) -> None:
        with self._lock:
            self._in_flight.discard(entry)

    def read_file(self, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT) -> bytes:
        """Return the content of a local file; refuse files over `max_bytes`."""
        with translate(READ_FAULTS, host=self.target.name, path=path), open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ExecutorError(f"{path} is larger than {max_bytes} bytes", host=self.target.name)
        return data

    def put_file(self, data: bytes, path: str, *, mode: int = 0o644) -> None:
        """Replace a local file atomically: temp file, fsync, rename, fsync the directory."""
        with translate(WRITE_FAULTS, host=self.target.name, path=path):
            self._replace(data, path, mode=mode, owner=None)

    def upload(self, data: bytes, dest: str, *, mode: int, owner: str | None, key: str) -> Uploaded:
        """Keep dest's previous content (a hard link), then replace dest atomically; read back its sha256."""
        backup, absent = backup_paths(dest, key)
        with translate(WRITE_FAULTS, host=self.target.name, path=dest):
            existed = _keep_previous(dest, backup, absent)
            self._replace(data, dest, mode=mode, owner=owner)
        digest = hashlib.sha256(self.read_file(dest, max_bytes=max(len(data), 1) * 2)).hexdigest()
        return Uploaded(dest, len(data), digest, backup if existed else absent, existed)

    def _replace(self, data: bytes, dest: str, *, mode: int, owner: str | None) -> None:
        """Temp file in dest's directory, mode, owner, fsync, rename over dest, fsync the directory."""
        directory = os.path.dirname(os.path.abspath(dest))
        tmp = os.path.join(directory, f".{os.path.basename(dest)}.rollout-{uuid.uuid4().hex}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                write_all(fd, data)  # loops on short writes; a full disk is ENOSPC, not a hang
                if owner:
                    os.fchown(fd, *_owner_ids(owner))
                # After chown, which may clear set-id bits; the umask must not change the mode.
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
        except BaseException as exc:
            # Whatever stopped us (an error, an interrupt) came before the rename: dest is
            # untouched, and the temporary file must not be left beside it.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, KeyError):
                raise ExecutorError(
                    f"cannot chown {dest} to {owner}: no such user or group", host=self.target.name
                ) from None
            raise
        _fsync_dir(directory)

    def restore_upload(self, dest: str, key: str) -> str:
        """Rename the kept copy back over dest (or remove dest if it did not exist); idempotent."""
        backup, absent = backup_paths(dest, key)
        with translate(WRITE_FAULTS, host=self.target.name, path=dest):
            if os.path.lexists(backup):
                os.replace(backup, dest)  # the old inode itself: content, mode and owner as they were
                _fsync_dir(os.path.dirname(os.path.abspath(dest)))
                return f"restored the previous {dest}"
            if os.path.lexists(absent):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dest)
                os.unlink(absent)
                return f"removed {dest} (it did not exist before)"
        return f"{dest} was not changed: nothing to restore"

    def cancel(self) -> None:
        """Kill every in-flight command's process group (SIGTERM, grace, SIGKILL)."""
        with self._lock:
            entries = list(self._in_flight)
            for entry in entries:
                entry.cancelled = True
                _signal_group(entry.proc.pid, signal.SIGTERM, entry.become)
            deadline = time.monotonic() + KILL_GRACE
            while time.monotonic() < deadline and not all(_leader_exited(e.proc.pid) for e in entries):
                time.sleep(0.005)
            # Still under the lock: no run() can reap a leader (and free its pid) here.
            for entry in entries:
                _signal_group(entry.proc.pid, signal.SIGKILL, entry.become)

    def close(self) -> None:
        """Kill what is still running; idempotent, and later runs still work."""
        if not self._closed:
            self._closed = True
            self.cancel()
