"""Uploading a file over SFTP with the same atomic steps as on a local target.

The previous content is copied beside dest (once per key, through a temporary file and a
rename, so a half copy never looks complete); the new content goes to a temporary file in
dest's directory, gets its mode (and owner, through a command), and is renamed over dest
with posix-rename; dest is then read back and hashed. A connection that drops before the
rename leaves dest as it was. paramiko has no fsync@openssh.com call, so the data reaches
the server's disk when the server flushes it; the rename is still atomic. Used only by
the SSH executor, which translates the exceptions.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import stat
import uuid
from collections.abc import Callable

import paramiko

from rollout.executors.base import backup_paths

#: Runs `chown OWNER PATH` on the target; raises when it fails.
Chown = Callable[[str, str], None]
_CHUNK = 256 * 1024


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _temp_beside(path: str) -> str:
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".{name}.rollout-{uuid.uuid4().hex}.tmp")


def _write_then_rename(
    sftp: paramiko.SFTPClient, data: bytes, path: str, mode: int, before: Callable[[str], None]
) -> None:
    """Write a temporary file beside `path`, chmod it, run `before` on it, then rename it over `path`."""
    tmp = _temp_beside(path)
    try:
        with sftp.open(tmp, "wb") as handle:
            handle.set_pipelined(True)
            handle.write(data)
        before(tmp)
        # After any chown, which may clear set-id bits.
        sftp.chmod(tmp, mode)
        # posix-rename replaces the target in one step (plain SFTP rename refuses to).
        sftp.posix_rename(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            sftp.remove(tmp)
        raise


def _read(sftp: paramiko.SFTPClient, path: str) -> bytes:
    with sftp.open(path, "rb") as handle:
        handle.prefetch()
        return handle.read()


def keep_previous(sftp: paramiko.SFTPClient, dest: str, key: str) -> bool:
    """Copy dest's current content and mode beside it, unless an earlier attempt did; True if dest existed."""
    backup, absent = backup_paths(dest, key)
    if _exists(sftp, absent):
        return False
    if _exists(sftp, backup):
        return True
    try:
        attrs = sftp.stat(dest)
    except FileNotFoundError:
        with sftp.open(absent, "wb"):
            pass
        return False
    mode = stat.S_IMODE(attrs.st_mode or 0o644)
    _write_then_rename(sftp, _read(sftp, dest), backup, mode, lambda _tmp: None)
    return True


def replace(sftp: paramiko.SFTPClient, data: bytes, dest: str, mode: int, owner: str | None, chown: Chown) -> str:
    """Replace dest atomically with `data`; the sha256 of dest as read back from the target."""
    _write_then_rename(sftp, data, dest, mode, lambda tmp: chown(owner, tmp) if owner else None)
    return hashlib.sha256(_read(sftp, dest)).hexdigest()


def restore(sftp: paramiko.SFTPClient, dest: str, key: str) -> str:
    """Rename the kept copy back over dest, or remove dest if it did not exist; idempotent."""
    backup, absent = backup_paths(dest, key)
    if _exists(sftp, backup):
        sftp.posix_rename(backup, dest)
        return f"restored the previous {dest}"
    if _exists(sftp, absent):
        with contextlib.suppress(FileNotFoundError):
            sftp.remove(dest)
        sftp.remove(absent)
        return f"removed {dest} (it did not exist before)"
    return f"{dest} was not changed: nothing to restore"
