"""A real OpenSSH server on 127.0.0.1 for tests and benchmarks.

Load it as a pytest plugin (`pytest_plugins = ["tests.conftest_sshd"]`). The fixture
`sshd` is session-scoped: one server, with its own host key, a client key authorised for
the current user and a known_hosts file that trusts exactly that host key. The helper
functions (`start_sshd`, `stop_sshd`, `write_known_hosts`, `generate_key`) are plain
functions so that bench/ can start a throwaway server the same way.

Remote shell start-up is kept light on purpose: sshd runs every command through the
user's login shell, and Debian's bash sources ~/.bashrc even for non-interactive SSH
commands. Here root's ~/.bashrc runs `pyenv init`, which costs ~125 ms per command and
would swamp every measurement. sshd's `SetEnv HOME=<empty tmp home>` is applied after
sshd sets HOME from the password database, and bash resolves ~/.bashrc through $HOME,
so the login shell reads an empty rc file instead. This works for root without
touching the account, without ForceCommand (which would hide the command we send) and
without PermitUserEnvironment (which would widen what clients may set).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rollout.executors.base import Target

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
#: sshd refuses to start without its compiled-in privilege separation directory.
PRIVSEP_DIR = Path("/run/sshd")


@dataclass
class SshdServer:
    """A running sshd and everything a client needs to reach it."""

    host: str
    port: int
    user: str
    identity_file: str
    known_hosts: str
    workdir: Path
    home: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def target(self, name: str = "ssh-1", **overrides: object) -> Target:
        """A Target for this server; keyword arguments override its fields."""
        fields: dict[str, object] = {
            "name": name,
            "connection": "ssh",
            "address": self.host,
            "port": self.port,
            "user": self.user,
            "identity_file": self.identity_file,
            "known_hosts": self.known_hosts,
            "connect_timeout": 5.0,
        }
        fields.update(overrides)
        return Target(**fields)  # type: ignore[arg-type]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (sshd start-up retries on a lost race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def generate_key(path: Path) -> str:
    """Create an ed25519 key pair at `path`; return the public key line."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "rollout-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return Path(f"{path}.pub").read_text().strip()


def write_known_hosts(path: Path, host: str, port: int, public_key: str) -> None:
    """Write a known_hosts file trusting `public_key` for host:port, as ssh would."""
    key_type, key_data = public_key.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    path.write_text(f"{name} {key_type} {key_data}\n")


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                # sshd accepted and speaks SSH: it is serving, not just bound.
                sock.settimeout(2.0)
                if sock.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.02)
    return False


def start_sshd(workdir: Path, host: str = "127.0.0.1", extra_config: Sequence[str] = ()) -> SshdServer:
    """Start sshd in the foreground on a free port with fresh keys under `workdir`.

    `extra_config` lines come first in sshd_config, so they win (sshd keeps the first value).
    """
    if not os.path.exists(SSHD):
        raise FileNotFoundError(SSHD)
    workdir.mkdir(parents=True, exist_ok=True)
    if not PRIVSEP_DIR.exists():
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
    host_key = workdir / "ssh_host_ed25519_key"
    client_key = workdir / "id_ed25519"
    host_pub = generate_key(host_key)
    (workdir / "authorized_keys").write_text(generate_key(client_key) + "\n")
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    for rc in (".bashrc", ".profile", ".bash_profile"):
        (home / rc).write_text("")
    user = getpass.getuser()
    last_error = ""
    for _attempt in range(5):
        port = free_port(host)
        config = workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    *extra_config,
                    f"ListenAddress {host}",
                    f"Port {port}",
                    f"HostKey {host_key}",
                    f"PidFile {workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "StrictModes no",
                    "UsePAM no",
                    "PrintMotd no",
                    "UseDNS no",
                    # Empty rc files: see the module docstring.
                    f"SetEnv HOME={home}",
                    # One connection per target carries many concurrent channels, and
                    # the fan-out bench opens 20 connections at once.
                    "MaxSessions 200",
                    "MaxStartups 200:30:400",
                    "Subsystem sftp internal-sftp",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        with (workdir / "sshd.log").open("ab") as log:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        if _wait_for_port(host, port, process, timeout=10.0):
            known_hosts = workdir / "known_hosts"
            write_known_hosts(known_hosts, host, port, host_pub)
            return SshdServer(
                host=host,
                port=port,
                user=user,
                identity_file=str(client_key),
                known_hosts=str(known_hosts),
                workdir=workdir,
                home=home,
                process=process,
            )
        stop_sshd_process(process)
        last_error = (workdir / "sshd.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"sshd did not start: {last_error}")


def stop_sshd_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate an sshd process and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_sshd(server: SshdServer) -> None:
    """Stop the server (its sessions die with it: sshd -D kills them on SIGTERM)."""
    stop_sshd_process(server.process)


@contextmanager
def own_sshd(workdir: Path, extra_config: Sequence[str] = ()) -> Iterator[SshdServer]:
    """A real sshd of the caller's own under `workdir`, stopped on leaving; the test is skipped without sshd."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is not installed (Debian package openssh-server)")
    server = start_sshd(workdir, extra_config=extra_config)
    try:
        yield server
    finally:
        stop_sshd(server)


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshdServer]:
    """A real sshd on 127.0.0.1 for this test session."""
    with tempfile.TemporaryDirectory(prefix="rollout-sshd-") as tmp, own_sshd(Path(tmp)) as server:
        yield server


@pytest.fixture
def wrong_known_hosts(sshd: SshdServer, tmp_path: Path) -> str:
    """A known_hosts file that names the test server with somebody else's key."""
    other = generate_key(tmp_path / "other_host_key")
    path = tmp_path / "known_hosts_wrong"
    write_known_hosts(path, sshd.host, sshd.port, other)
    return str(path)


@pytest.fixture
def empty_known_hosts(tmp_path: Path) -> str:
    """A known_hosts file that trusts nothing."""
    path = tmp_path / "known_hosts_empty"
    path.write_text("")
    return str(path)
