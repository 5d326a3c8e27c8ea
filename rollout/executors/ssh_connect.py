"""Opening an SSH connection: a route to the host, host-key check, authentication.

The route is a TCP socket (with TCP_NODELAY), or a `direct-tcpip` channel through each
ProxyJump host in turn (each authenticated and host-key checked like the host itself),
or the stdin/stdout of a ProxyCommand process. A Route owns everything it opened and
closes it newest first; `open_stream` gives the route alone, for code that needs the
host's key without logging in. Host keys are checked against known_hosts: unknown or
changed keys are refused, never added. Every socket and paramiko exception from
connecting is translated here, through the tables below, into a ConnectError that
names the host (and the jump host or proxy on the way) and says what to do.
Imported only by the SSH executor, so paramiko is loaded only when an SSH target is used.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from typing import Any, cast

import paramiko

from rollout.errors import ConnectError
from rollout.executors.base import KILL_GRACE, Target
from rollout.executors.faults import FaultTable, translate

#: What carries the SSH protocol to the host: paramiko accepts any of these as `sock`.
Stream = socket.socket | paramiko.Channel | paramiko.ProxyCommand
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
#: Ciphers that authenticate as they decrypt (AEAD), asked for first: paramiko checks the
#: MAC of every other cipher's packets in Python, a byte at a time, which was the largest
#: single cost of a fleet's commands on the client. OpenSSH offers them by default; a
#: server that does not falls back to the rest of paramiko's list.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


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
        "refusing to connect{via}: the host key of {endpoint} ({exc.key_name} {exc.key.fingerprint}) is not in "
        "{known_hosts}. Verify it out of band, then add it with: {keyscan} >> {known_hosts}",
    ),
    paramiko.BadHostKeyException: (
        ConnectError,
        "refusing to connect{via}: the host key of {endpoint} CHANGED (known_hosts {known_hosts} has "
        "{exc.expected_key.fingerprint}, the server offered {exc.key.fingerprint}); this may be an attack. "
        "If the change is expected: ssh-keygen -R '{exc.hostname}' -f {known_hosts} && "
        "{keyscan} >> {known_hosts}",
    ),
    paramiko.AuthenticationException: (
        ConnectError,
        "authentication to {endpoint} as {user} failed ({exc}); key: {identity}",
    ),
    paramiko.SSHException: (ConnectError, "SSH handshake with {endpoint} failed: {exc}{stderr}"),
    paramiko.ProxyCommandFailure: (ConnectError, "the connection to {endpoint} failed ({exc.error}){stderr}"),
    EOFError: (ConnectError, "{endpoint} closed the connection during the SSH handshake{stderr}"),
    TimeoutError: (ConnectError, "timed out after {timeout:g}s in the SSH handshake with {endpoint}"),
    OSError: (ConnectError, "connection to {endpoint} failed: {detail}"),
}


#: Opening a `direct-tcpip` channel from a jump host to the next hop.
FORWARD_FAULTS: FaultTable = {
    paramiko.ChannelException: (ConnectError, "{jump} could not reach {endpoint}: {exc.text} (code {exc.code})"),
    paramiko.SSHException: (ConnectError, "{jump} could not open a channel to {endpoint}: {exc}"),
    EOFError: (ConnectError, "{jump} closed the connection while opening a channel to {endpoint}"),
    OSError: (ConnectError, "connection to {jump} failed while opening a channel to {endpoint}: {detail}"),
}

#: Starting the ProxyCommand.
PROXY_FAULTS: FaultTable = {
    OSError: (ConnectError, "cannot start the proxy command `{command}`: {detail}"),
}


class ProxyProcess(paramiko.ProxyCommand):
    """paramiko's ProxyCommand, run by /bin/sh as OpenSSH does, which dies with the connection.

    Unlike paramiko's, reading at the process's end of output reports end of file (so the
    transport sees the connection drop instead of waiting forever), closing waits for the
    process to end (no zombie, no stray process), and its stderr is kept for errors.
    """

    def __init__(self, command: str) -> None:
        self.cmd = ["/bin/sh", "-c", f"exec {command}"]
        self.command = command
        self.timeout: float | None = None
        self._lock = threading.Lock()
        self._said = ""
        # stderr goes to an unlinked file, so a chatty command never blocks on a full pipe.
        with tempfile.TemporaryFile() as errors:
            # A session of its own: closing ends whatever the command started too, and a
            # Ctrl-C at the terminal reaches rollout (which then closes it), not the proxy.
            self.process = subprocess.Popen(
                self.cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                bufsize=0,
                start_new_session=True,
            )
            self._errors: int | None = os.dup(errors.fileno())

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes from the command's stdout; b'' once it has ended (or been closed)."""
        stdout = self.process.stdout
        if stdout is None or stdout.closed:
            return b""
        try:
            ready, _, _ = select.select([stdout], [], [], self.timeout)
            if not ready:
                raise TimeoutError
            return os.read(stdout.fileno(), size)
        except (ValueError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                raise
            return b""  # closed under us by close() from another thread

    def stderr_tail(self) -> str:
        """The last lines the command wrote to stderr."""
        with self._lock:
            if self._errors is None:
                return self._said
            size = os.fstat(self._errors).st_size
            data = os.pread(self._errors, 4096, max(0, size - 4096))
        text = data.decode("utf-8", errors="replace").strip()
        return "\n".join(text.splitlines()[-3:])

    def close(self) -> None:
        """End the command's process group (SIGTERM, then SIGKILL after a grace) and reap it; safe to call twice."""
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        # A failed handshake closes the stream before its error is worded: keep what the command said.
        said = self.stderr_tail()
        with self._lock:
            if self._errors is not None:
                self._said = said
                os.close(self._errors)
                self._errors = None


class Route:
    """The way to one host: its stream, and every client, channel, socket or process opened on the way.

    `close()` closes them newest first (the stream, then the jump hosts from the last to the
    first); it is idempotent and safe from any thread.
    """

    def __init__(self) -> None:
        self.stream: Stream | None = None
        #: the TCP connection we opened (to the host, or to the first jump host); None with a proxy command
        self.tcp: socket.socket | None = None
        self.jump_clients: list[paramiko.SSHClient] = []
        self._closers: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def _own(self, closer: Callable[[], None]) -> None:
        with self._lock:
            self._closers.append(closer)

    def close(self) -> None:
        """Close everything this route opened, newest first."""
        with self._lock:
            closers, self._closers = self._closers, []
        for closer in reversed(closers):
            with contextlib.suppress(Exception):
                closer()


def open_stream(target: Target) -> tuple[Stream, Callable[[], None]]:
    """A byte stream to `target`'s sshd (through its jump hosts or proxy command, each verified), and its closer.

    Nothing is authenticated to `target` itself: hand the stream to paramiko.Transport.
    Each jump host is checked against `known_hosts_of(hop)`; `target.jumps[k]` is itself a
    Target whose own `jumps` are the hops before it, so its key can be fetched the same way.
    """
    route = open_route(target)
    assert route.stream is not None
    return route.stream, route.close


def open_route(target: Target) -> Route:
    """The route to `target`, open up to its sshd; raises ConnectError naming the hop that failed."""
    route = Route()
    try:
        if target.proxy_command:
            with translate(PROXY_FAULTS, host=target.name, command=target.proxy_command):
                proxy = ProxyProcess(target.proxy_command)
            route._own(proxy.close)
            proxy.settimeout(target.connect_timeout)
            route.stream = proxy
        elif target.jumps:
            route.stream = _through_jumps(target, route)
        else:
            route.stream = route.tcp = _tcp(target.name, target, target.endpoint)
            route._own(route.tcp.close)
    except BaseException:
        route.close()
        raise
    return route


def connect(target: Target, known_hosts: str) -> tuple[paramiko.SSHClient, Route]:
    """An authenticated client on a route of our own, and that route (close it after the client)."""
    route = open_route(target)
    try:
        assert route.stream is not None
        client = _handshake(target, known_hosts, route.stream, via=_via(target))
    except BaseException:
        route.close()
        raise
    transport = client.get_transport()
    if transport is not None and (target.jumps or target.proxy_command):
        # When the connection ends, however it ends, the bastion sessions or proxy process go with it.
        threading.Thread(target=_close_after, args=(transport, route), name="ssh-route", daemon=True).start()
    return client, route


def _close_after(transport: paramiko.Transport, route: Route) -> None:
    transport.join()
    route.close()


def known_hosts_of(target: Target) -> str:
    """The known_hosts file that `target`'s host key is checked against (jump hosts included)."""
    return target.known_hosts or os.path.expanduser(DEFAULT_KNOWN_HOSTS)


def _tcp(host: str, target: Target, endpoint: str) -> socket.socket:
    """A TCP connection to `target` with TCP_NODELAY; errors name `host` and `endpoint`."""
    timeout = target.connect_timeout
    with translate(SOCKET_FAULTS, host=host, endpoint=endpoint, address=target.address, timeout=timeout):
        sock = socket.create_connection((target.address, target.port), timeout=timeout)
    # Nagle plus delayed ACKs otherwise adds ~40 ms to every command.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _jump_name(hop: Target) -> str:
    return f"jump host {hop.name} ({hop.endpoint})"


def _through_jumps(target: Target, route: Route) -> paramiko.Channel:
    """Log in to each jump host in turn over a channel from the one before; the channel to `target`."""
    first = target.jumps[0]
    route.tcp = _tcp(target.name, first, _jump_name(first))
    route._own(route.tcp.close)
    stream: Stream = route.tcp
    for index, hop in enumerate(target.jumps):
        via = f" to {target.name} via {hop.name}"
        client = _handshake(hop, known_hosts_of(hop), stream, via=via, host=target.name, endpoint=_jump_name(hop))
        route._own(client.close)
        route.jump_clients.append(client)
        following = target.jumps[index + 1] if index + 1 < len(target.jumps) else target
        stream = _forward(target, hop, client, following)
        route._own(stream.close)
    assert isinstance(stream, paramiko.Channel)
    return stream


def _forward(target: Target, hop: Target, client: paramiko.SSHClient, following: Target) -> paramiko.Channel:
    """A `direct-tcpip` channel from jump host `hop` to the next hop (or the host)."""
    transport = client.get_transport()
    with translate(FORWARD_FAULTS, host=target.name, jump=hop.name, endpoint=following.endpoint):
        if transport is None or not transport.is_active():
            raise EOFError
        channel = transport.open_channel(
            "direct-tcpip",
            (following.address, following.port),
            ("127.0.0.1", 0),
            timeout=target.connect_timeout,
        )
    return channel


def _offered_keys(target: Target) -> list[str]:
    """The key files to offer, in order; empty means the agent and ~/.ssh defaults."""
    return list(target.identity_files) or ([target.identity_file] if target.identity_file else [])


def _via(target: Target) -> str:
    """How the error names the path to `target`: empty when direct."""
    if target.jumps:
        return f" to {target.name} via {', '.join(h.name for h in target.jumps)}"
    if target.proxy_command:
        return f" to {target.name} via `{target.proxy_command}`"
    return ""


def _keyscan(target: Target) -> str:
    """The command that fetches `target`'s key: ssh-keyscan, run on the last jump host when there is one."""
    scan = f"ssh-keyscan -p {target.port} {target.address}"
    if not target.jumps:
        return scan
    *before, last = [_hop_spec(h) for h in target.jumps]
    through = f"-J {','.join(before)} " if before else ""
    return f"ssh {through}{last} {scan}"


def _hop_spec(hop: Target) -> str:
    """A jump host as `ssh -J` takes it."""
    return f"{hop.user + '@' if hop.user else ''}{hop.name}{f':{hop.port}' if hop.port != 22 else ''}"


def _transport(sock: paramiko.transport._SocketLike, /, **kwargs: Any) -> paramiko.Transport:
    """paramiko's Transport, made with what SSHClient passes (which varies by version), asking for AEAD first."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    first = tuple(c for c in PREFERRED_CIPHERS if c in offered)
    options.ciphers = first + tuple(c for c in offered if c not in first)
    return transport


def _handshake(
    target: Target,
    known_hosts: str,
    sock: Stream,
    *,
    via: str,
    host: str | None = None,
    endpoint: str | None = None,
) -> paramiko.SSHClient:
    """Key exchange, host-key check and authentication on an open stream; errors name `host` (default target)."""
    if target.known_hosts is not None and not os.path.isfile(known_hosts):
        hop = f" (for jump host {target.name})" if host else ""
        raise ConnectError(f"known_hosts file {known_hosts} does not exist{hop}", host=host or target.name)
    client = paramiko.SSHClient()
    with translate(
        HANDSHAKE_FAULTS,
        host=host or target.name,
        endpoint=endpoint or target.endpoint,
        via=via,
        keyscan=_keyscan(target),
        stderr=_ProxyStderr(sock),
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
                transport_factory=_transport,
            )
        except BaseException:
            client.close()
            raise
    transport = client.get_transport()
    if target.server_alive_interval > 0 and transport is not None:
        transport.set_keepalive(max(1, int(target.server_alive_interval)))
    return client


class _ProxyStderr:
    """Formats as the proxy command and its last stderr lines (read only when an error message is built)."""

    def __init__(self, sock: Stream) -> None:
        self._sock = sock

    def __format__(self, spec: str) -> str:
        if not isinstance(self._sock, ProxyProcess):
            return ""
        # The command may still be writing its complaint as it exits.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._sock.process.wait(timeout=0.5)
        tail = self._sock.stderr_tail()
        said = f", which said: {tail}" if tail else ""
        return f" (through proxy command `{self._sock.command}`{said})"
