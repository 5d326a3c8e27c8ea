"""Two throwaway users with sudo, and a real sshd they can log in to, for the become tests.

Load it as a pytest plugin (`pytest_plugins = ["tests.conftest_sudo"]`). The session
fixture `sudo_users` creates (with unique names) one user with passwordless sudo and one
whose sudo needs its password, a sudoers drop-in for them (checked with `visudo -cf`,
mode 0440), and an sshd of its own (tests/conftest_sshd.start_sshd) whose authorized_keys
file those users can read: sshd reads it with the user's privileges, and start_sshd's
work directory is root's alone. Everything is removed afterwards, and any process the
users still run is ended by pid first (userdel refuses a user that has processes).

Tests run as root on the test machine (`make test` installs Debian's sudo); without
root, or without sudo, the fixture skips with the reason.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest_sshd import SSHD, SshdServer, start_sshd, stop_sshd

SUDOERS_DIR = Path("/etc/sudoers.d")


@dataclass
class SudoUsers:
    """The test users, the password of the one that needs it, and an sshd they can log in to."""

    nopw: str  # passwordless sudo to any user
    pw: str  # sudo to any user after its password
    password: str = field(repr=False)
    sshd: SshdServer


def _missing() -> str | None:
    """Why the sudo tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the sudo tests create users and sudoers entries: run them as root"
    for tool in ("sudo", "visudo", "useradd", "userdel", "chpasswd", "usermod"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package sudo / passwd; `make test` installs sudo)"
    if not os.path.exists(SSHD):
        return f"{SSHD} is not installed (Debian package openssh-server)"
    return None


def _run(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True, timeout=60)


def _pids_of(user: str) -> list[int]:
    found = subprocess.run(["pgrep", "-u", user], capture_output=True, text=True, timeout=30, check=False)
    return [int(pid) for pid in found.stdout.split()]


def _end_processes_of(user: str) -> None:
    """SIGKILL every process still running as `user`, by pid (the users are ours alone), and see them gone."""
    deadline = time.monotonic() + 10.0
    while (pids := _pids_of(user)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)  # a killed process leaves the process table once its parent reaps it


def _install_sudoers(path: Path, text: str) -> None:
    """Validate a drop-in with visudo before it goes live, then install it root-owned, mode 0440."""
    with tempfile.NamedTemporaryFile("w", prefix="rollout-sudoers-", delete=False) as tmp:
        tmp.write(text)
    try:
        _run("visudo", "-cf", tmp.name)
        os.chmod(tmp.name, 0o440)
        shutil.move(tmp.name, path)
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)


@pytest.fixture(scope="session")
def sudo_users() -> Iterator[SudoUsers]:
    """Two users with sudo (one passwordless, one with a password) and an sshd they log in to."""
    why = _missing()
    if why is not None:
        pytest.skip(why)
    suffix = secrets.token_hex(3)
    nopw, pw = f"rollout-nopw-{suffix}", f"rollout-pw-{suffix}"
    password = f"pw-{secrets.token_hex(12)}"
    created_dir = not SUDOERS_DIR.exists()
    drop_in = SUDOERS_DIR / f"rollout-test-{suffix}"  # no dot: sudo skips names with one
    users: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rollout-sudo-sshd-") as tmp:
        server: SshdServer | None = None
        try:
            for user in (nopw, pw):
                _run("useradd", "--create-home", "--shell", "/bin/sh", user)
                users.append(user)
            _run("chpasswd", stdin=f"{pw}:{password}\n")
            # A locked account ('!') may not log in with a key either; '*' has no password but is not locked.
            _run("usermod", "-p", "*", nopw)
            if created_dir:
                SUDOERS_DIR.mkdir(mode=0o755)
            _install_sudoers(
                drop_in,
                f"Defaults:{nopw},{pw} lecture=never\n{nopw} ALL=(ALL:ALL) NOPASSWD: ALL\n{pw} ALL=(ALL:ALL) ALL\n",
            )
            workdir = Path(tmp) / "sshd"
            server = start_sshd(workdir)
            # sshd reads authorized_keys (and the empty rc home) as the logging-in user.
            for path in (Path(tmp), workdir, server.home):
                path.chmod(0o755)
            (workdir / "authorized_keys").chmod(0o644)
            yield SudoUsers(nopw=nopw, pw=pw, password=password, sshd=server)
        finally:
            if server is not None:
                stop_sshd(server)
            for user in users:
                _end_processes_of(user)
                removed = subprocess.run(["userdel", "--remove", user], capture_output=True, timeout=60, check=False)
                if removed.returncode not in (0, 12):  # 12: the home could not be removed, the user is gone
                    subprocess.run(
                        ["userdel", "--force", "--remove", user], capture_output=True, timeout=60, check=False
                    )
            if drop_in.exists():
                drop_in.unlink()
            if created_dir and SUDOERS_DIR.exists() and not any(SUDOERS_DIR.iterdir()):
                SUDOERS_DIR.rmdir()
