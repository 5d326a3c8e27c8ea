"""The environment lock: one run of a plan on an environment at a time, for this machine user.

The lock is keyed by what is being changed, the plan's name and the environment
(``PLAN@ENV.lock``), and lives in one lock directory shared by every working directory
and state directory of the user (see `default_lock_dir`). Beside it, ``PLAN@ENV.last-run``
names the last run that started under the lock, until that run or its `recover` settles:
a new run refuses while it names a run that died unrecovered or ended rollback_failed,
from whichever directory either of them ran.

How the lock works, and why:

- It is an open-file-description write lock (``F_OFD_SETLK``) on the whole lock file.
  Like flock it belongs to the open file, so the kernel drops it when the holder dies and
  two opens in one process exclude each other; unlike flock it can be *queried*
  (``F_OFD_GETLK``) without being taken. A reader asking "is it held, and by whom?" never
  holds the lock, so it can neither make a taker fail nor see another reader as a holder.
- The holder writes its details as the file's first line after it has the lock. On
  release it appends a line saying so and never truncates: a reader that sees the lock
  held and a first line already released (or naming a dead local process) is looking at
  the previous holder's details while the next holder is about to write its own, and
  waits for them; and a lock file renamed aside by `force_unlock` keeps its evidence.
- Every file here is opened with O_NOFOLLOW and must be a regular file of ours with one
  link; the directory must be the user's own real directory (`rollout.statedir`).

Linux only (OFD locks, Linux 3.15 and later). Standard library only: on the CLI start-up path.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import fcntl
import getpass
import json
import os
import re
import secrets
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from rollout.atomic import fsync_dir
from rollout.errors import JournalError, LockHeld, Refused, UsageError
from rollout.statedir import ensure_private_dir

__all__ = [
    "EnvironmentLock",
    "LastRun",
    "LockHolder",
    "default_lock_dir",
    "force_unlock",
    "lock_name",
    "read_lock_holder",
]

_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# struct flock as the kernel reads it on LP64 Linux: l_type, l_whence, l_start, l_len, l_pid.
_FLOCK: Final = struct.Struct("@hhqqi4x")
# How long a reader that sees the lock held waits for the new holder to write its details.
HOLDER_WAIT: Final = 2.0


def default_lock_dir() -> Path:
    """``$XDG_STATE_HOME/rollout/locks``, by default ``~/.local/state/rollout/locks``."""
    base = os.environ.get("XDG_STATE_HOME")
    state = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return state / "rollout" / "locks"


def lock_name(plan: str, env: str) -> str:
    """``PLAN@ENV``: '@' is in neither name's alphabet, so the key is unambiguous."""
    for what, name in (("plan", plan), ("environment", env)):
        if not _NAME.fullmatch(name) or len(name) > 128:
            raise ValueError(f"invalid {what} name for a lock file: {name!r}")
    return f"{plan}@{env}"


def _utc_ms(t: float) -> str:
    secs, ms = divmod(int(t * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


@dataclass(frozen=True)
class LockHolder:
    """Who holds an environment lock, as written into the lock file."""

    run_id: str
    user: str
    host: str
    pid: int
    started: str
    lock_id: str

    @classmethod
    def current(cls, run_id: str) -> LockHolder:
        """This process as the holder for a run, with a fresh lock id."""
        return cls(
            run_id=run_id,
            user=getpass.getuser(),
            host=socket.gethostname(),
            pid=os.getpid(),
            started=_utc_ms(time.time()),
            lock_id=secrets.token_hex(8),
        )

    def describe(self) -> str:
        """`run R by user@host (pid N) since T, held for 3m05s`."""
        held = ""
        try:
            started = calendar.timegm(time.strptime(self.started[:19], "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            pass
        else:
            minutes, secs = divmod(max(0, int(time.time()) - started), 60)
            hours, minutes = divmod(minutes, 60)
            took = f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
            held = f", held for {took}"
        return f"run {self.run_id} by {self.user}@{self.host} (pid {self.pid}) since {self.started}{held}"

    def to_json(self) -> bytes:
        """The holder line written into the lock file."""
        fields = {k: getattr(self, k) for k in ("run_id", "user", "host", "pid", "started", "lock_id")}
        return json.dumps(fields, ensure_ascii=False).encode()


@dataclass(frozen=True)
class LastRun:
    """The last run started under a lock and not yet settled: its id and run directory."""

    run_id: str
    run_dir: Path
    started: str


def _holder_from_line(raw: bytes) -> LockHolder | None:
    try:
        obj = json.loads(raw)
        return LockHolder(
            run_id=str(obj["run_id"]),
            user=str(obj["user"]),
            host=str(obj["host"]),
            pid=int(obj["pid"]),
            started=str(obj["started"]),
            lock_id=str(obj["lock_id"]),
        )
    except (ValueError, TypeError, KeyError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _current_holder(raw: bytes) -> LockHolder | None:
    """The holder the file names, unless it is a previous holder's (released, or dead here)."""
    first, _, rest = raw.partition(b"\n")
    holder = _holder_from_line(first)
    if holder is None:
        return None
    for line in rest.split(b"\n"):
        try:
            if json.loads(line).get("released") == holder.lock_id:
                return None
        except (ValueError, AttributeError):
            continue  # a torn or foreign line says nothing about release
    if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
        return None  # killed while holding: the kernel dropped its lock; a new holder is writing
    return holder


def _open_lock_file(path: Path, flags: int) -> int:
    """Open a lock-directory file without following a link; it must be a regular file of ours, one link."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise JournalError(f"{path}: is a symbolic link; refusing to follow it") from exc
        raise
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by you"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} hard links (a planted link?)"
    if problem:
        os.close(fd)
        raise JournalError(f"{path}: {problem}; refusing to use it as a lock file")
    return fd


def _lock_op(fd: int, op: int, kind: int) -> bytes:
    return fcntl.fcntl(fd, op, _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0))


def _try_lock(fd: int) -> bool:
    try:
        _lock_op(fd, fcntl.F_OFD_SETLK, fcntl.F_WRLCK)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _is_locked(fd: int) -> bool:
    """Whether another open file holds the lock; a query only, it takes nothing."""
    kind = _FLOCK.unpack(_lock_op(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK))[0]
    return bool(kind != fcntl.F_UNLCK)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


class EnvironmentLock:
    """One run of a plan per environment: an OFD lock on LOCKDIR/PLAN@ENV.lock naming its holder.

    Used as a context manager it releases on exit: ``with EnvironmentLock(d, plan, env) as
    lock: lock.acquire(holder)``.
    """

    def __init__(self, lock_dir: Path | str, plan: str, env: str) -> None:
        self.plan = plan
        self.env = env
        self.lock_dir = Path(lock_dir)
        name = lock_name(plan, env)
        self.path = self.lock_dir / f"{name}.lock"
        self.record_path = self.lock_dir / f"{name}.last-run"
        self.holder: LockHolder | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self, holder: LockHolder, *, timeout: float = 0.0, poll: float = 0.1) -> None:
        """Take the lock for holder, waiting up to timeout seconds; raise LockHeld otherwise."""
        if self._fd is not None:
            raise RuntimeError(f"environment lock {self.path.name!r} is already held by this object")
        deadline = time.monotonic() + timeout
        ensure_private_dir(self.lock_dir)
        fd = -1
        try:
            fd = _open_lock_file(self.path, os.O_RDWR | os.O_CREAT)
            while True:
                while not _try_lock(fd):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise LockHeld(self._held_message())
                    time.sleep(min(poll, remaining))
                if _same_file(fd, self.path):
                    break
                # The lock was forced away (the file renamed) between open and lock:
                # this fd locks an orphan; start again on the file now at the path.
                old, fd = fd, -1
                os.close(old)
                fd = _open_lock_file(self.path, os.O_RDWR | os.O_CREAT)
            # Overwrite, then cut: a reader sees the old first line or the new one, never none.
            line = holder.to_json() + b"\n"
            os.pwrite(fd, line, 0)
            os.ftruncate(fd, len(line))
            os.fsync(fd)
        except OSError as exc:
            if fd >= 0:
                _close(fd)
            raise JournalError(f"cannot take environment lock {self.path}: {exc.strerror or exc}") from exc
        except BaseException:
            if fd >= 0:
                _close(fd)
            raise
        self._fd = fd
        self.holder = holder

    def release(self) -> None:
        """Say in the file that this holder released, then unlock; safe to call when not held."""
        fd, self._fd = self._fd, None
        holder, self.holder = self.holder, None
        if fd is None:
            return
        try:
            if holder is not None:
                note = json.dumps({"released": holder.lock_id, "at": _utc_ms(time.time())}).encode() + b"\n"
                os.pwrite(fd, note, os.fstat(fd).st_size)
        except OSError:
            pass  # the lock is what matters; a reader also knows a dead holder by its pid
        finally:
            _close(fd)  # closing the only fd of the open file drops the lock

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _held_message(self) -> str:
        try:
            holder = read_lock_holder(self.lock_dir, self.plan, self.env)
        except JournalError:
            holder = None
        who = holder.describe() if holder else "another process (holder details not written yet)"
        message = f"plan {self.plan!r} on environment {self.env!r} is locked by {who}; lock file {self.path}"
        if holder is None:
            return message
        return (
            f"{message}, lock id {holder.lock_id} (only if that holder is stuck: "
            f"rollout unlock {self.env} --plan {self.plan} --lock-id {holder.lock_id})"
        )

    # --- the last run started under this lock --------------------------------------------

    def last_run(self) -> LastRun | None:
        """The run the record names (a run that has not settled yet), or None."""
        try:
            fd = _open_lock_file(self.record_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise JournalError(f"cannot read {self.record_path}: {exc.strerror or exc}") from exc
        try:
            raw = os.pread(fd, 1 << 16, 0)
        finally:
            os.close(fd)
        try:
            obj = json.loads(raw)
            return LastRun(run_id=str(obj["run_id"]), run_dir=Path(str(obj["run_dir"])), started=str(obj["started"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise JournalError(f"{self.record_path}: unreadable record of the last run ({exc})") from exc

    def record_run(self, run_id: str, run_dir: Path) -> None:
        """Name the run now starting under this lock (atomically replacing the record)."""
        self._require_held()
        data = json.dumps(
            {"run_id": run_id, "run_dir": str(Path(run_dir).resolve()), "started": _utc_ms(time.time())}
        ).encode()
        tmp = self.record_path.with_name(f".{self.record_path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data + b"\n")
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.record_path)
            fsync_dir(self.lock_dir)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise JournalError(f"cannot record the run in {self.record_path}: {exc.strerror or exc}") from exc

    def clear_run(self, run_id: str) -> None:
        """Remove the record if it names run_id: that run has settled."""
        self._require_held()
        last = self.last_run()
        if last is None or last.run_id != run_id:
            return
        try:
            os.unlink(self.record_path)
            fsync_dir(self.lock_dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise JournalError(f"cannot clear {self.record_path}: {exc.strerror or exc}") from exc

    def _require_held(self) -> None:
        if self._fd is None:
            raise RuntimeError(f"environment lock {self.path.name!r} is not held")


def read_lock_holder(lock_dir: Path | str, plan: str, env: str, *, wait: float = HOLDER_WAIT) -> LockHolder | None:
    """The live holder of a plan's lock on an environment, or None when it is free.

    Never takes the lock: it asks the kernel whether another open file holds it, and reads
    the holder's line without locking.
    """
    path = Path(lock_dir) / f"{lock_name(plan, env)}.lock"
    try:
        fd = _open_lock_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JournalError(f"cannot read lock file {path}: {exc.strerror or exc}") from exc
    try:
        deadline = time.monotonic() + wait
        while True:
            if not _is_locked(fd):
                return None
            raw = os.pread(fd, 1 << 16, 0)
            # A read is not atomic against the holder's pwrite: a torn read can splice two
            # holders' lines into a well-formed one that names neither. Two equal reads in a
            # row cannot both be mid-write.
            holder = _current_holder(raw) if raw == os.pread(fd, 1 << 16, 0) else None
            if holder is not None:
                return holder
            # held, and the file still names the previous holder: the new one writes next
            if time.monotonic() >= deadline:
                raise JournalError(f"lock {path} is held but its holder wrote no details within {wait:g}s")
            time.sleep(0.005)
    finally:
        os.close(fd)


def force_unlock(lock_dir: Path | str, plan: str, env: str, lock_id: str) -> LockHolder:
    """Break a live holder's lock, only when `lock_id` names it; returns the holder it was.

    The lock file is renamed aside (kept as evidence), so the next run locks a new file.
    The old holder, if it is still running, keeps its lock on the renamed file and does
    not know: forcing is for a holder that is stuck or unreachable, never a healthy one.
    """
    path = Path(lock_dir) / f"{lock_name(plan, env)}.lock"
    holder = read_lock_holder(lock_dir, plan, env)
    if holder is None:
        raise UsageError(f"plan {plan!r} on environment {env!r} is not locked; nothing to force")
    if holder.lock_id != lock_id:
        raise Refused(
            f"lock id {lock_id!r} does not match the lock of plan {plan!r} on {env!r} "
            f"({holder.describe()}, lock id {holder.lock_id}); nothing was changed"
        )
    aside = path.with_name(f"{path.name}.forced-{holder.lock_id}")
    try:
        os.rename(path, aside)
        fsync_dir(path.parent)
    except OSError as exc:
        raise JournalError(f"cannot force lock {path}: {exc.strerror or exc}") from exc
    return holder
