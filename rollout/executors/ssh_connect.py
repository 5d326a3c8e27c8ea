"""Opening an SSH connection: TCP with TCP_NODELAY, host-key check, authentication.

Host keys are checked against known_hosts: unknown or changed keys are refused, never
added. Every socket and paramiko exception from connecting is translated here, through
the two tables below, into a ConnectError that names the host and says what to do.
Imported only by the SSH executor, so paramiko is loaded only when an SSH target is used.
"""

from __future__ import annotations

import os
import socket
from typing import cast

import paramiko

from rollout.errors import ConnectError
from rollout.executors.base import Target
from rollout.executors.faults import FaultTable, translate


class _UnknownHostKey(paramiko.SSHException):
    """The server's host key is not in known_hosts."""

    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        self.hostname = hostname
        self.key = key
        self.key_name = key.get_name()
        super().__init__(f"{hostname} not found in known_hosts")


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """paramiko's RejectPolicy, with the key kept so the error can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


#: Opening the TCP connection.
SOCKET_FAULTS: FaultTable = {
    TimeoutError: (ConnectError, "timed out after {timeout:g}s connecting to {endpoint}"),
    ConnectionRefusedError: (ConnectError, "connection refused by {endpoint} (is sshd running on that port?)"),
    socket.gaierror: (ConnectError, "cannot resolve {address}: {exc.strerror}"),
    OSError: (ConnectError, "cannot connect to {endpoint}: {detail}"),
}

#: Key exchange, host-key check and authentication.
HANDSHAKE_FAULTS: FaultTable = {
    _UnknownHostKey: (
        ConnectError,
        "refusing to connect: the host key of {endpoint} ({exc.key_name} {exc.key.fingerprint}) is not in "
        "{known_hosts}. Verify it out of band, then add it with: ssh-keyscan -p {port} {address} >> {known_hosts}",
    ),
    paramiko.BadHostKeyException: (
        ConnectError,
        "refusing to connect: the host key of {endpoint} CHANGED (known_hosts {known_hosts} has "
        "{exc.expected_key.fingerprint}, the server offered {exc.key.fingerprint}); this may be an attack. "
        "If the change is expected: ssh-keygen -R '{exc.hostname}' -f {known_hosts} && "
        "ssh-keyscan -p {port} {address} >> {known_hosts}",
    ),
    paramiko.AuthenticationException: (
        ConnectError,
        "authentication to {endpoint} as {user} failed ({exc}); key: {identity}",
    ),
    paramiko.SSHException: (ConnectError, "SSH handshake with {endpoint} failed: {exc}"),
    EOFError: (ConnectError, "{endpoint} closed the connection during the SSH handshake"),
    TimeoutError: (ConnectError, "timed out after {timeout:g}s in the SSH handshake with {endpoint}"),
    OSError: (ConnectError, "connection to {endpoint} failed: {detail}"),
}


def connect(target: Target, known_hosts: str) -> tuple[paramiko.SSHClient, socket.socket]:
    """An authenticated client on a socket of our own (with TCP_NODELAY), and that socket."""
    timeout = target.connect_timeout
    with translate(SOCKET_FAULTS, host=target.name, endpoint=target.endpoint, address=target.address, timeout=timeout):
        sock = socket.create_connection((target.address, target.port), timeout=timeout)
    try:
        # Nagle plus delayed ACKs otherwise adds ~40 ms to every command.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _handshake(target, known_hosts, sock)
    except BaseException:
        sock.close()
        raise
    return client, sock


def _offered_keys(target: Target) -> list[str]:
    """The key files to offer, in order; empty means the agent and ~/.ssh defaults."""
    return list(target.identity_files) or ([target.identity_file] if target.identity_file else [])


def _handshake(target: Target, known_hosts: str, sock: socket.socket) -> paramiko.SSHClient:
    """Key exchange, host-key check and authentication on an open socket."""
    if target.known_hosts is not None and not os.path.isfile(known_hosts):
        raise ConnectError(f"known_hosts file {known_hosts} does not exist", host=target.name)
    client = paramiko.SSHClient()
    with translate(
        HANDSHAKE_FAULTS,
        host=target.name,
        endpoint=target.endpoint,
        address=target.address,
        port=target.port,
        timeout=target.connect_timeout,
        known_hosts=known_hosts,
        user=target.user or "the current user",
        identity=", ".join(_offered_keys(target)) or "agent or ~/.ssh defaults",
    ):
        try:
            if os.path.isfile(known_hosts):
                # "System" host keys are only read, never written back.
                client.load_system_host_keys(known_hosts)
            client.set_missing_host_key_policy(_RefuseUnknownHost())
            keys = _offered_keys(target)
            client.connect(
                hostname=target.address,
                port=target.port,
                username=target.user,
                # paramiko documents and accepts a list of files; its type stubs say only str.
                key_filename=cast("str | None", keys or None),
                # IdentitiesOnly: offer only the configured keys, as OpenSSH does.
                allow_agent=not (target.identities_only and keys),
                look_for_keys=not keys,
                timeout=target.connect_timeout,
                banner_timeout=target.connect_timeout,
                auth_timeout=target.connect_timeout,
                channel_timeout=target.connect_timeout,
                sock=sock,
            )
        except BaseException:
            client.close()
            raise
    transport = client.get_transport()
    if target.server_alive_interval > 0 and transport is not None:
        transport.set_keepalive(max(1, int(target.server_alive_interval)))
    return client
