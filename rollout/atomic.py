"""The one way rollout writes a whole file: complete, durable, atomically replaced.

Invariant: after `write_atomic` returns, `path` holds exactly `data` (on disk, fsynced,
directory entry included); when it raises, `path` is unchanged and no temporary file is
left beside it. Readers never see a partly written file, because the data is written to
a private temporary file in the same directory and renamed over the target.

A single ``os.write`` may write fewer bytes than asked (a nearly full disk, a signal):
the loop below keeps writing the rest, and a write that makes no progress is an error.

This module must import only the standard library: the journal uses it on the CLI
start-up path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of data to fd (also an append-only one), looping on short writes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # no progress: the disk takes nothing more
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable (never through a symlink)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path | str, data: bytes | str, mode: int = 0o600, *, sync_dir: bool = True, durable: bool = True
) -> Path:
    """Replace path with data (durably, atomically); on failure leave no temporary file.

    `sync_dir=False` skips the directory fsync: after a crash the name may still show the
    previous complete file (never a partial one). For a file rewritten very often whose
    older version is still true (the journal's head), that saves one fsync a write.
    `durable=False` skips the file's fsync too: still atomic for every reader and across
    a crash of this process (the kernel has the data), but a power loss may leave the
    previous version or an empty file. Only for a file whose loss is detected and whose
    final version is written durably (the journal's head while the run goes on).
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL|O_NOFOLLOW: never write through a link or a file someone planted at the name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
            write_all(fd, payload)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir and durable:
        fsync_dir(path.parent)
    return path
