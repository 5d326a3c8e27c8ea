"""Run commands on an SSH host with paramiko; the only module that imports paramiko.

One connection per target, opened lazily on a socket we create ourselves with
TCP_NODELAY (Nagle plus delayed ACKs otherwise adds ~40 ms to every command), and one
channel per command. Host keys are checked against known_hosts: unknown or changed
keys are refused, never added. Every paramiko and socket exception is translated here
into ConnectError or ExecutorError naming the host.

Remote commands run as `echo $$; exec /bin/sh -c '<command>'` through the login
shell. sshd starts each no-pty session with setsid(), so the login shell's pid is the
process group of everything the command starts; the first stdout line reports it, and a
timeout or cancel kills that group over a second channel (closing a channel alone
leaves the remote processes running). When the command exits, what it left in that group
is killed the same way. When the connection drops mid-command, the result says so
(`connection_lost`) and the group is killed first thing after reconnecting, before any
other command (a rollback) runs on the host.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import select
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import paramiko

from rollout.errors import ConnectError, ExecutorError
from rollout.executors.base import (
    DEFAULT_OUTPUT_CAP,
    DEFAULT_READ_LIMIT,
    KILL_GRACE,
    CommandResult,
    OnStart,
    OutputTail,
    Target,
    validate_env,
)

_READ_CHUNK = 32 * 1024
#: After the remote shell exits, how long to wait for background children that still
#: hold its stdout/stderr (the same policy as the local executor).
_LINGER = 0.25
_STATUS_POLL = 0.1


class _UnknownHostKey(paramiko.SSHException):
    """The server's host key is not in known_hosts."""

    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        self.hostname = hostname
        self.key = key
        super().__init__(f"{hostname} not found in known_hosts")


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """paramiko's RejectPolicy, with the key kept so the error can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


@dataclass(eq=False)
class _RemoteRun:
    """One in-flight command: its channel and, once reported, its remote process group."""

    channel: paramiko.Channel
    pgid: int | None = None
    cancelled: bool = False
    kill_requested_at: float | None = None  # timeout or cancel: kill once pgid is known
    killed: bool = False
    on_start: OnStart | None = None
    lost: bool = False  # the connection dropped before the command's exit status arrived
    lock: threading.Lock = field(default_factory=threading.Lock)


def _wrap(command: str, env: Mapping[str, str]) -> str:
    """The remote command line: report the process group, then exec /bin/sh -c COMMAND."""
    exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in env.items())
    # /bin/sh, not the login shell, so that commands mean the same as on local targets.
    return f"echo $$; {exports}exec /bin/sh -c {shlex.quote(command)}"


def _kill_script(pgids: list[int]) -> str:
    """Shell that SIGTERMs the groups, waits up to the grace, then SIGKILLs survivors."""
    groups = " ".join(str(p) for p in pgids)
    rounds = max(1, int(KILL_GRACE / 0.05))
    # A group is alive while it has a non-zombie member: orphans re-parented to an init
    # that reaps slowly (containers) stay zombies, and `kill -0` alone would wait out the
    # whole grace for them. The group id equals the session id (sshd's setsid), which
    # procps `ps -s` selects by; where ps cannot do that, fall back to `kill -0`.
    # `kill -SIG -PGID` without `--`: dash rejects `--`, and both dash and bash accept this.
    return (
        f"g='{groups}'; "
        "alive() { s=$(ps -o stat= -s $1 2>/dev/null) || { kill -0 -$1 2>/dev/null; return; }; "
        "printf '%s\\n' \"$s\" | grep -qv '^Z'; }; "
        "for p in $g; do kill -TERM -$p; done 2>/dev/null; n=0; "
        f"while [ $n -lt {rounds} ]; do a=; for p in $g; do alive $p && a=1; done; "
        '[ -z "$a" ] && exit 0; sleep 0.05; n=$((n+1)); done; '
        "for p in $g; do kill -KILL -$p; done 2>/dev/null; exit 0"
    )


def _leftovers_script(pgid: int) -> str:
    """Shell that ends what an exited command left in its group: nothing to do costs one kill(2)."""
    rounds = max(1, int(KILL_GRACE / 0.05))
    # TERM fails when the group is empty: the common case ends there, with no ps and no wait.
    return (
        f"kill -TERM -{pgid} 2>/dev/null || exit 0; n=0; "
        f"while [ $n -lt {rounds} ] && kill -0 -{pgid} 2>/dev/null; do sleep 0.05; n=$((n+1)); done; "
        f"kill -KILL -{pgid} 2>/dev/null; exit 0"
    )


class SshExecutor:
    """Runs commands on one SSH target over a single kept connection."""

    def __init__(self, target: Target, *, output_cap: int = DEFAULT_OUTPUT_CAP) -> None:
        self.target = target
        self.output_cap = output_cap
        self._connect_lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._in_flight: set[_RemoteRun] = set()
        # Process groups of commands whose connection dropped: they may still run, and
        # are killed on the next connection before anything else runs there.
        self._orphans: set[int] = set()

    # -- connection ---------------------------------------------------------------------

    @property
    def known_hosts_path(self) -> str:
        """The known_hosts file this executor trusts."""
        return self.target.known_hosts or os.path.expanduser("~/.ssh/known_hosts")

    def _transport(self) -> paramiko.Transport:
        """The live transport, connecting (or reconnecting after a drop) on first use."""
        with self._connect_lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return transport
                self._disconnect()
            client, sock = self._connect()
            try:
                self._end_orphans(client)
            except BaseException:
                client.close()
                sock.close()
                raise
            self._client, self._sock = client, sock
            transport = client.get_transport()
            assert transport is not None
            return transport

    def _end_orphans(self, client: paramiko.SSHClient) -> None:
        """Kill the process groups of commands cut off by a dropped connection; raise if we cannot."""
        with self._lock:
            pgids = sorted(self._orphans)
        if not pgids:
            return
        transport = client.get_transport()
        try:
            assert transport is not None
            channel = transport.open_session(timeout=self.target.connect_timeout)
            try:
                channel.settimeout(KILL_GRACE + self.target.connect_timeout)
                channel.exec_command(_kill_script(pgids))
                status = channel.recv_exit_status()
            finally:
                channel.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            status = -1
            detail = f": {exc}"
        else:
            detail = f" (exit {status})"
        if status != 0:
            # Nothing may run on this host while the cut-off command might still be running.
            raise ConnectError(
                f"reconnected to {self.target.endpoint} but could not kill process group(s) "
                f"{', '.join(map(str, pgids))} of the command(s) cut off by the dropped connection{detail}",
                host=self.target.name,
            )
        with self._lock:
            self._orphans.difference_update(pgids)

    def _connect(self) -> tuple[paramiko.SSHClient, socket.socket]:
        target = self.target
        timeout = target.connect_timeout
        try:
            sock = socket.create_connection((target.address, target.port), timeout=timeout)
        except TimeoutError as exc:
            raise ConnectError(
                f"timed out after {timeout:g}s connecting to {target.endpoint}", host=target.name
            ) from exc
        except ConnectionRefusedError as exc:
            raise ConnectError(
                f"connection refused by {target.endpoint} (is sshd running on that port?)",
                host=target.name,
            ) from exc
        except socket.gaierror as exc:
            raise ConnectError(f"cannot resolve {target.address}: {exc.strerror}", host=target.name) from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {target.endpoint}: {exc.strerror or exc}", host=target.name) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = self._handshake(sock)
        except BaseException:
            sock.close()
            raise
        return client, sock

    def _handshake(self, sock: socket.socket) -> paramiko.SSHClient:
        """Key exchange, host-key check and authentication on an open socket."""
        target = self.target
        known_hosts = self.known_hosts_path
        if target.known_hosts is not None and not os.path.isfile(known_hosts):
            raise ConnectError(f"known_hosts file {known_hosts} does not exist", host=target.name)
        client = paramiko.SSHClient()
        try:
            if os.path.isfile(known_hosts):
                # "System" host keys are only read, never written back.
                client.load_system_host_keys(known_hosts)
            client.set_missing_host_key_policy(_RefuseUnknownHost())
            client.connect(
                hostname=target.address,
                port=target.port,
                username=target.user,
                key_filename=target.identity_file,
                allow_agent=True,
                look_for_keys=target.identity_file is None,
                timeout=target.connect_timeout,
                banner_timeout=target.connect_timeout,
                auth_timeout=target.connect_timeout,
                channel_timeout=target.connect_timeout,
                sock=sock,
            )
        except _UnknownHostKey as exc:
            client.close()
            raise ConnectError(
                f"refusing to connect: the host key of {target.endpoint} "
                f"({exc.key.get_name()} {exc.key.fingerprint}) is not in {known_hosts}. "
                f"Verify it out of band, then add it with: "
                f"ssh-keyscan -p {target.port} {target.address} >> {known_hosts}",
                host=target.name,
            ) from exc
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise ConnectError(
                f"refusing to connect: the host key of {target.endpoint} CHANGED "
                f"(known_hosts {known_hosts} has {exc.expected_key.fingerprint}, the server "
                f"offered {exc.key.fingerprint}); this may be an attack. If the change is "
                f"expected: ssh-keygen -R '{exc.hostname}' -f {known_hosts} && "
                f"ssh-keyscan -p {target.port} {target.address} >> {known_hosts}",
                host=target.name,
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise ConnectError(
                f"authentication to {target.endpoint} as {target.user or 'the current user'} "
                f"failed ({exc}); key: {target.identity_file or 'agent or ~/.ssh defaults'}",
                host=target.name,
            ) from exc
        except paramiko.SSHException as exc:
            client.close()
            raise ConnectError(f"SSH handshake with {target.endpoint} failed: {exc}", host=target.name) from exc
        except EOFError as exc:
            client.close()
            raise ConnectError(
                f"{target.endpoint} closed the connection during the SSH handshake",
                host=target.name,
            ) from exc
        except TimeoutError as exc:
            client.close()
            raise ConnectError(
                f"timed out after {target.connect_timeout:g}s in the SSH handshake with {target.endpoint}",
                host=target.name,
            ) from exc
        except OSError as exc:
            client.close()
            raise ConnectError(
                f"connection to {target.endpoint} failed: {exc.strerror or exc}", host=target.name
            ) from exc
        return client

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._sock is not None:
            self._sock.close()
        self._client = None
        self._sock = None

    def _open_channel(self) -> paramiko.Channel:
        transport = self._transport()
        try:
            return transport.open_session(timeout=self.target.connect_timeout)
        except paramiko.SSHException as exc:
            raise ExecutorError(
                f"cannot open a session on {self.target.endpoint}: {exc}", host=self.target.name
            ) from exc
        except OSError as exc:
            raise ExecutorError(
                f"connection to {self.target.endpoint} lost: {exc.strerror or exc}",
                host=self.target.name,
            ) from exc

    # -- commands -------------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_start: OnStart | None = None,
    ) -> CommandResult:
        """Run `command` with /bin/sh on the host and wait for it, the timeout, or a cancel."""
        wrapped = _wrap(command, validate_env(env))
        started = time.monotonic()
        channel = self._open_channel()
        entry = _RemoteRun(channel, on_start=on_start)
        with self._lock:
            self._in_flight.add(entry)
        try:
            try:
                channel.exec_command(wrapped)
                out, err, exit_code, timed_out = self._pump(entry, stdin, timeout, started)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if not self._transport_alive(channel):
                    return self._lost(entry, command, started, f"{type(exc).__name__}: {exc}")
                if isinstance(exc, OSError):
                    raise ExecutorError(
                        f"connection to {self.target.endpoint} lost: {exc.strerror or exc}",
                        host=self.target.name,
                    ) from exc
                raise ExecutorError(f"command failed on {self.target.endpoint}: {exc}", host=self.target.name) from exc
            if entry.lost:
                return self._lost(entry, command, started, "the connection closed before the exit status arrived")
            # The command is done: what it left running in its group must not outlive it.
            self._end_leftovers(entry)
        finally:
            with self._lock:
                self._in_flight.discard(entry)
            channel.close()
        return CommandResult(
            host=self.target.name,
            command=command,
            exit_code=None if timed_out or entry.cancelled else exit_code,
            stdout=out.text(),
            stderr=err.text(),
            duration=time.monotonic() - started,
            timed_out=timed_out,
            cancelled=entry.cancelled and not timed_out,
            truncated=out.truncated or err.truncated,
        )

    def _pump(
        self, entry: _RemoteRun, stdin: bytes | None, timeout: float | None, started: float
    ) -> tuple[OutputTail, OutputTail, int | None, bool]:
        """Feed stdin and read both streams until exit, timeout or cancel."""
        channel = entry.channel
        out, err = OutputTail(self.output_cap), OutputTail(self.output_cap)
        header = bytearray()  # the first stdout line: the remote process group id
        pending = memoryview(stdin or b"")
        if not pending:
            channel.shutdown_write()
        wake = channel.fileno()  # becomes readable on stdout, stderr, EOF or close
        deadline = None if timeout is None else started + timeout
        exited_at: float | None = None
        timed_out = False
        while True:
            while channel.recv_ready():
                chunk = channel.recv(_READ_CHUNK)
                if not chunk:
                    break  # EOF, or the channel was closed under us
                if entry.pgid is None:
                    header += chunk
                    line, newline, rest = bytes(header).partition(b"\n")
                    if not newline:
                        continue
                    self._learn_pgid(entry, line)
                    chunk = rest
                out.feed(chunk)
            while channel.recv_stderr_ready():
                chunk = channel.recv_stderr(_READ_CHUNK)
                if not chunk:
                    break
                err.feed(chunk)
            now = time.monotonic()
            if entry.kill_requested_at is not None:
                # Wait for the group id if it has not arrived yet, but not forever.
                waited = now - entry.kill_requested_at
                if entry.killed or channel.closed or waited > self.target.connect_timeout:
                    break
            elif channel.eof_received and channel.exit_status_ready():
                break
            elif deadline is not None and now >= deadline:
                timed_out = True
                entry.kill_requested_at = now
                self._kill([entry])
                continue
            if exited_at is None and channel.exit_status_ready():
                exited_at = now
            if exited_at is not None and now - exited_at >= _LINGER:
                break  # background children hold the remote pipes; stop waiting for them
            if pending and channel.send_ready():
                try:
                    pending = pending[channel.send(bytes(pending[:_READ_CHUNK])) :]
                except OSError:
                    pending = pending[:0]  # the command exited without reading it all
                if not pending and not channel.closed:
                    channel.shutdown_write()
            waits = [] if deadline is None or timed_out else [deadline - now]
            if entry.kill_requested_at is not None:
                waits.append(0.05)
            if exited_at is not None:
                waits.append(exited_at + _LINGER - now)
            if pending:
                waits.append(0.005)  # no writability event from paramiko: look again soon
            # paramiko signals data, EOF and close on the wake pipe but not exit-status,
            # so look again now and then to notice a shell that exited before its
            # background children closed the pipes.
            waits.append(_STATUS_POLL)
            wait = max(0.0, min(waits))
            if channel.eof_received:
                # The wake pipe stays readable after EOF; a command that closed its
                # output but still runs would make select() spin. Wait for the exit.
                channel.status_event.wait(wait)
            else:
                select.select([wake], [], [], wait)
        if timed_out or entry.cancelled or not channel.exit_status_ready():
            return out, err, None, timed_out
        if channel.exit_status < 0 and not self._transport_alive(channel):
            # paramiko marks a channel closed by a dead transport "exit status ready"
            # with status -1: that is a dropped connection, not a command that died.
            entry.lost = True
            return out, err, None, timed_out
        status = channel.recv_exit_status()
        # -1: no exit-status message, i.e. the remote shell died of a signal.
        return out, err, None if status < 0 else status, timed_out

    def _transport_alive(self, channel: paramiko.Channel) -> bool:
        transport = channel.get_transport()
        return transport is not None and transport.is_active()

    def _lost(self, entry: _RemoteRun, command: str, started: float, why: str) -> CommandResult:
        """The result of a command cut off by a dropped connection; its group is killed on reconnect."""
        with entry.lock:
            pgid = None if entry.killed else entry.pgid
        if pgid is not None and pgid > 1:
            with self._lock:
                self._orphans.add(pgid)
            fate = f"its remote process group {pgid} may still run and is killed on reconnect, before anything else"
        else:
            fate = "it may have started on the host, but its process group was not yet reported"
        return CommandResult(
            host=self.target.name,
            command=command,
            exit_code=None,
            stdout="",
            stderr=f"connection to {self.target.endpoint} lost during the command ({why}); {fate}",
            duration=time.monotonic() - started,
            connection_lost=True,
        )

    def _learn_pgid(self, entry: _RemoteRun, line: bytes) -> None:
        """Record the reported process group; kill it now if a cancel came first."""
        try:
            pgid = int(line.strip())
        except ValueError:
            raise ExecutorError(
                f"unexpected output from the remote shell before the command: {line[:200]!r} "
                "(does a shell start-up file print something?)",
                host=self.target.name,
            ) from None
        with entry.lock:
            entry.pgid = pgid
            late_kill = entry.kill_requested_at is not None
        if late_kill:
            self._kill([entry])
        elif entry.on_start is not None:
            try:
                entry.on_start(pgid)
            except BaseException:
                # Whoever asked could not record the command: it must not run unrecorded.
                with entry.lock:
                    entry.kill_requested_at = time.monotonic()
                self._kill([entry])
                raise

    def _end_leftovers(self, entry: _RemoteRun) -> None:
        """Kill what an exited command left in its remote process group; best effort."""
        with entry.lock:
            pgid = None if entry.killed or entry.pgid is None or entry.pgid <= 1 else entry.pgid
            entry.killed = True
        if pgid is not None:
            # if the connection is gone, the command itself completed, which is what it reports
            self._control(_leftovers_script(pgid))

    def _control(self, script: str) -> bool:
        """Run a kill script on a channel of its own and wait for it; False if the connection is gone."""
        try:
            channel = self._open_channel()
            try:
                channel.settimeout(KILL_GRACE + self.target.connect_timeout)
                channel.exec_command(script)
                channel.recv_exit_status()
            finally:
                channel.close()
        except (ExecutorError, paramiko.SSHException, OSError):
            return False
        return True

    def _kill(self, entries: list[_RemoteRun]) -> None:
        """Kill the remote process groups (TERM, grace, KILL), then close their channels."""
        pgids = []
        for entry in entries:
            with entry.lock:
                if entry.pgid is not None and not entry.killed and entry.pgid > 1:
                    entry.killed = True
                    pgids.append(entry.pgid)
        if pgids:
            # If the connection is gone, so is any way to reach those processes. The result
            # still says timed_out/cancelled, which is what the caller acts on.
            self._control(_kill_script(pgids))
        for entry in entries:
            if entry.killed:
                entry.channel.close()

    def cancel(self) -> None:
        """Kill every in-flight command's remote process group and close its channel."""
        with self._lock:
            entries = list(self._in_flight)
        ready = []
        for entry in entries:
            with entry.lock:
                entry.cancelled = True
                if entry.kill_requested_at is None:
                    entry.kill_requested_at = time.monotonic()
                if entry.pgid is not None:
                    ready.append(entry)
        # Commands that have not reported their group yet are killed by their own run()
        # as soon as the report arrives (see _learn_pgid).
        self._kill(ready)

    # -- files ----------------------------------------------------------------------------

    def _sftp(self) -> paramiko.SFTPClient:
        transport = self._transport()
        try:
            sftp = paramiko.SFTPClient.from_transport(transport)
        except (paramiko.SSHException, paramiko.SFTPError, OSError, EOFError) as exc:
            raise ExecutorError(f"cannot start SFTP on {self.target.endpoint}: {exc}", host=self.target.name) from exc
        if sftp is None:
            raise ExecutorError(f"cannot start SFTP on {self.target.endpoint}", host=self.target.name)
        return sftp

    def read_file(self, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT) -> bytes:
        """Return the content of a remote file over SFTP; refuse files over `max_bytes`."""
        sftp = self._sftp()
        try:
            with sftp.open(path, "rb") as handle:
                size = handle.stat().st_size
                if size is not None and size > max_bytes:
                    raise ExecutorError(f"{path} is larger than {max_bytes} bytes", host=self.target.name)
                handle.prefetch(size)
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise ExecutorError(f"cannot read {path}: {exc.strerror or exc}", host=self.target.name) from exc
        except (paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
            raise ExecutorError(f"cannot read {path}: {exc}", host=self.target.name) from exc
        finally:
            sftp.close()
        if len(data) > max_bytes:
            raise ExecutorError(f"{path} is larger than {max_bytes} bytes", host=self.target.name)
        return data

    def put_file(self, data: bytes, path: str, *, mode: int = 0o644) -> None:
        """Replace a remote file atomically over SFTP: temp file in place, chmod, rename."""
        directory, name = posixpath.split(path)
        tmp = posixpath.join(directory, f".{name}.rollout-{uuid.uuid4().hex}.tmp")
        sftp = self._sftp()
        try:
            with sftp.open(tmp, "wb") as handle:
                handle.set_pipelined(True)
                handle.write(data)
            sftp.chmod(tmp, mode)
            # posix-rename replaces the target in one step (plain SFTP rename refuses to).
            sftp.posix_rename(tmp, path)
        except (OSError, paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
            # The temp file may never have been created, or the connection is gone.
            with contextlib.suppress(OSError, paramiko.SSHException, paramiko.SFTPError, EOFError):
                sftp.remove(tmp)
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ExecutorError(f"cannot write {path}: {detail}", host=self.target.name) from exc
        finally:
            sftp.close()

    def close(self) -> None:
        """Kill in-flight commands and drop the connection; idempotent."""
        self.cancel()
        with self._connect_lock:
            self._disconnect()
