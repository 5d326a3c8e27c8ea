"""Host keys without logging in: the key a server offers, its verdict against known_hosts, appending new ones.

`rollout trust` shows operators the keys a run would meet and records the ones they confirm.
Fetching stops after the key exchange: no authentication is attempted, so no user name or key
is sent. The verdict is the one the SSH executor would reach (paramiko's SSHClient rules, with
the same preferred key type), so "known" here means a run connects.

This module must never add a key by itself (a run never calls `append_known_hosts`), and never
rewrite, reorder or drop a line of a known_hosts file: confirmed lines are appended with one
write and fsync, so a concurrent reader never sees half a line.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import paramiko

from rollout.errors import ConnectError, ExecutorError
from rollout.executors.base import Target
from rollout.executors.faults import FaultTable, translate
from rollout.executors.ssh_connect import Stream, open_stream

#: How soon a key exchange in progress notices an abort (paramiko itself polls at 0.1 s).
POLL = 0.05

Verdict = Literal["known", "new", "changed"]

#: The key exchange, up to the server's host key.
KEX_FAULTS: FaultTable = {
    paramiko.SSHException: (ConnectError, "SSH key exchange with {endpoint} failed: {exc}"),
    EOFError: (ConnectError, "{endpoint} closed the connection during the SSH key exchange"),
    OSError: (ConnectError, "connection to {endpoint} failed: {detail}"),
}

#: Reading or appending to a known_hosts file.
KNOWN_HOSTS_FAULTS: FaultTable = {
    UnicodeDecodeError: (ExecutorError, "cannot read known_hosts file {path}: {exc}"),
    OSError: (ExecutorError, "cannot use known_hosts file {path}: {detail}"),
}


@dataclass(frozen=True)
class HostKey:
    """One public host key: type, base64 blob and OpenSSH's SHA256 fingerprint."""

    key_type: str
    base64: str
    fingerprint: str

    @classmethod
    def of(cls, key: paramiko.PKey) -> HostKey:
        """The record of a paramiko key."""
        return cls(key_type=key.get_name(), base64=key.get_base64(), fingerprint=key.fingerprint)


@dataclass(frozen=True)
class KeyVerdict:
    """What a server offered and what known_hosts says of it; `known` is the recorded key when it differs."""

    state: Verdict
    offered: HostKey
    known: HostKey | None = None


def known_hosts_name(address: str, port: int) -> str:
    """The name OpenSSH (and paramiko) file a host under: `host`, or `[host]:port` off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


def known_hosts_line(address: str, port: int, key: HostKey) -> str:
    """One known_hosts line, as `ssh` writes it with HashKnownHosts off (no newline)."""
    return f"{known_hosts_name(address, port)} {key.key_type} {key.base64}"


def load_known_hosts(path: str) -> paramiko.HostKeys:
    """The keys recorded in `path` (plain and hashed `|1|` entries); an absent file holds none."""
    keys = paramiko.HostKeys()
    with translate(KNOWN_HOSTS_FAULTS, host="", path=path):
        if os.path.exists(path):
            keys.load(path)
    return keys


def fetch_host_key(target: Target, known_hosts: str, *, abort: threading.Event, deadline: float) -> KeyVerdict:
    """The key `target` offers and its verdict against `known_hosts`; no authentication is attempted.

    Waits at most until `deadline` (monotonic) or the target's connect timeout, whichever is
    sooner, and gives up as soon as `abort` is set (ConnectError in every case).
    """
    recorded = load_known_hosts(known_hosts).lookup(known_hosts_name(target.address, target.port))
    remaining = deadline - time.monotonic()
    if remaining <= 0 or abort.is_set():
        raise ConnectError(f"not reached: {_stop_reason(abort)}", host=target.name)
    # the overall deadline may leave less than the host's own timeout; messages say what applied
    bounded = replace(target, connect_timeout=min(target.connect_timeout, remaining))
    # Through the host's jump hosts or proxy command, exactly as a run reaches it: each jump
    # host's own key is checked against its known_hosts on the way, so trust jump hosts first.
    stream, close = open_stream(bounded)
    try:
        offered = _exchange(bounded, stream, recorded, abort=abort, deadline=time.monotonic() + bounded.connect_timeout)
    finally:
        close()
    return _verdict(offered, recorded)


def _stop_reason(abort: threading.Event) -> str:
    return "interrupted" if abort.is_set() else "the overall deadline passed"


def _exchange(
    target: Target,
    sock: Stream,
    recorded: Mapping[str, paramiko.PKey] | None,
    *,
    abort: threading.Event,
    deadline: float,
) -> paramiko.PKey:
    """Run the key exchange on `sock` and return the server's host key, then hang up."""
    fields = {"endpoint": target.endpoint}
    with translate(KEX_FAULTS, host=target.name, **fields):
        transport = paramiko.Transport(sock)
    try:
        with translate(KEX_FAULTS, host=target.name, **fields):
            # our own loop below ends the wait at the deadline, with one message for every phase
            transport.banner_timeout = max(0.0, deadline - time.monotonic()) + 1.0
            if recorded is not None:
                _prefer(transport, recorded)
            done = threading.Event()
            transport.start_client(event=done)
            while not done.wait(POLL):
                if abort.is_set() or time.monotonic() >= deadline:
                    why = "interrupted" if abort.is_set() else f"timed out after {target.connect_timeout:g}s"
                    raise ConnectError(f"{why} in the SSH key exchange with {target.endpoint}", host=target.name)
            if not transport.is_active():
                raise transport.get_exception() or paramiko.SSHException("negotiation failed")
            return transport.get_remote_server_key()
    finally:
        transport.close()


def _prefer(transport: paramiko.Transport, recorded: Mapping[str, paramiko.PKey]) -> None:
    """Ask first for the key type known_hosts holds, as paramiko's SSHClient does for a run."""
    options = transport.get_security_options()
    wanted = next(iter(recorded.keys()))
    if wanted == "ssh-rsa":
        # an RSA key is negotiated under its SHA-2 signature names
        wanted = next((t for t in ("rsa-sha2-512", "rsa-sha2-256") if t in options.key_types), wanted)
    options.key_types = [wanted, *(t for t in options.key_types if t != wanted)]


def _verdict(offered: paramiko.PKey, recorded: Mapping[str, paramiko.PKey] | None) -> KeyVerdict:
    """paramiko's SSHClient rule: no entry for the host is new; an entry that differs (or lacks the type) is changed."""
    key = HostKey.of(offered)
    if recorded is None:
        return KeyVerdict("new", key)
    ours = recorded.get(offered.get_name())
    if ours == offered:
        return KeyVerdict("known", key)
    if ours is None:
        ours = next(iter(recorded.values()))
    return KeyVerdict("changed", key, HostKey.of(ours))


def append_known_hosts(path: str, lines: Sequence[str]) -> list[str]:
    """Append the lines whose host has no entry yet to `path` in one write, fsynced; return those appended.

    A missing file is created 0600 (its missing directories 0700). The file is re-read just
    before writing, so a host another process recorded meanwhile is not written twice.
    """
    with translate(KNOWN_HOSTS_FAULTS, host="", path=path):
        recorded = load_known_hosts(path)
        # a host that has any entry by now is no longer new: adding would only make it ambiguous
        fresh = list(dict.fromkeys(line for line in lines if recorded.lookup(line.split()[0]) is None))
        if not fresh:
            return []
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
            os.chmod(directory, 0o700)  # whatever the umask
        created = not os.path.lexists(path)
        # read-write only to look at the last byte; O_APPEND puts every write at the end
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if created:
                os.fchmod(fd, 0o600)
            data = "".join(f"{line}\n" for line in fresh).encode()
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # the last line had no newline: never glue ours onto it
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(directory)
    return fresh


def _write_all(fd: int, data: bytes) -> None:
    """One write(2) in practice; a short write (a full disk) continues where it stopped, or raises."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: str) -> None:
    """Make a new file's directory entry durable (not every filesystem can)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
