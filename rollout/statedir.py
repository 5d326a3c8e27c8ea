"""Directories that hold rollout's state (runs, journals, locks): the user's own, never a link.

A run writes evidence and takes locks under these directories. A directory that is a
symbolic link, or that belongs to another user, would let someone else redirect those
writes (truncate a file of their choosing, or forge evidence), so it is refused with an
error naming it, never followed and never "fixed". Directories this module creates are
0700 whatever the umask.

Standard library only: this is on the CLI start-up path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rollout.errors import JournalError

__all__ = ["check_private_dir", "ensure_private_dir"]


def check_private_dir(path: Path) -> None:
    """Raise JournalError unless `path` is a real directory (not a symlink) owned by this user."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise JournalError(f"{path}: cannot inspect the state directory: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise JournalError(
            f"{path}: is a symbolic link; rollout does not follow links for its state "
            "(point --state-dir or the lock directory at the real directory)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise JournalError(f"{path}: is not a directory")
    if st.st_uid != os.geteuid():
        raise JournalError(
            f"{path}: is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); "
            "rollout keeps its state only in your own directories"
        )


def _make_dir(path: Path) -> None:
    """mkdir with exactly 0700 (the umask may be 000), refusing to have raced into a link."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return  # created by a concurrent run; checked by the caller like any existing one
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def ensure_private_dir(root: Path, *parts: str) -> Path:
    """`root/parts...`, each level created 0700 if missing and checked to be the user's own real directory.

    Missing ancestors of `root` are created too (0700); existing ancestors are not
    checked (a state directory under /tmp is fine), `root` and everything below it are.
    """
    try:
        missing = [p for p in (root, *root.parents) if not os.path.lexists(p)]
        for directory in reversed(missing):
            _make_dir(directory)
        check_private_dir(root)
        path = root
        for part in parts:
            path = path / part
            if not os.path.lexists(path):
                _make_dir(path)
            check_private_dir(path)
    except JournalError:
        raise
    except OSError as exc:
        raise JournalError(f"cannot create the state directory {exc.filename or root}: {exc.strerror or exc}") from exc
    return path
