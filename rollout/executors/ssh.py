"""Run commands on an SSH host with paramiko: the connection, commands and files.

One connection per target, opened lazily (see ssh_connect) and reopened after a drop.
A command runs by the kept shell's supervisor when it can (see ssh_kept, ssh_agent), else
on a channel of its own (see ssh_process); both are driven by the shared runner loop. The
process groups of commands cut off by a dropped connection are killed first thing after
reconnecting, before any other command (a rollback) runs on the host. Every paramiko
and socket exception is translated into ConnectError or ExecutorError naming the host,
through the tables in ssh_connect, ssh_process and here. paramiko is imported only by
these SSH modules, which are imported only when an SSH target is opened.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Mapping

import paramiko

from rollout.errors import ConnectError, ExecutorError
from rollout.executors.base import (
    DEFAULT_OUTPUT_CAP,
    DEFAULT_READ_LIMIT,
    KILL_GRACE,
    Become,
    CommandResult,
    OnStart,
    Target,
    Uploaded,
    backup_paths,
    validate_env,
)
from rollout.executors.faults import READ_FAULTS, WRITE_FAULTS, FaultTable, translate
from rollout.executors.runner import run_process
from rollout.executors.ssh_connect import Route, connect
from rollout.executors.ssh_control import ControlShell, ShellKeeper
from rollout.executors.ssh_kept import KeptCommand, NotTaken
from rollout.executors.ssh_process import (
    RemoteCommand,
    RemoteHooks,
    RemoteProcess,
    kill_runs,
    kill_script,
    run_control,
    unexpected_output,
    wrap,
)

#: How soon to ask again for a session that sshd refused while the kept shell's was closing.
_SESSION_RETRY = 0.02

_SFTP_ERRORS = (paramiko.SSHException, paramiko.SFTPError, EOFError)

#: Opening a channel for a command or a kill script.
_CHANNEL_FAULTS: FaultTable = {
    paramiko.SSHException: (ExecutorError, "cannot open a session on {endpoint}: {exc}"),
    OSError: (ExecutorError, "connection to {endpoint} lost: {detail}"),
}
#: Starting the SFTP subsystem.
_SFTP_START_FAULTS: FaultTable = dict.fromkeys(
    (*_SFTP_ERRORS, OSError), (ExecutorError, "cannot start SFTP on {endpoint}: {exc}")
)
#: Reading and writing remote files: the local tables, plus paramiko's errors.
_SFTP_READ_FAULTS: FaultTable = {**READ_FAULTS, **dict.fromkeys(_SFTP_ERRORS, READ_FAULTS[OSError])}
_SFTP_WRITE_FAULTS: FaultTable = {**WRITE_FAULTS, **dict.fromkeys(_SFTP_ERRORS, WRITE_FAULTS[OSError])}


class SshExecutor:
    """Runs commands on one SSH target over a single kept connection."""

    def __init__(self, target: Target, *, output_cap: int = DEFAULT_OUTPUT_CAP) -> None:
        self.target = target
        self.output_cap = output_cap
        self._connect_lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        # Everything the connection runs over (a socket, or jump hosts, or a proxy process),
        # and the TCP socket under it, if we opened one (directly or to the first jump host).
        self._route: Route | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._in_flight: set[RemoteCommand] = set()
        # Process groups of commands whose connection dropped: they may still run, and
        # are killed on the next connection before anything else runs there (through the
        # sudo that started them, if one did).
        self._orphans: dict[int, Become | None] = {}
        # The kept shell for commands and kill scripts (see ssh_control, ssh_kept), started
        # on first need, and not tried again on a transport it could not start on.
        self._shells = ShellKeeper(target.connect_timeout)
        self._hooks = RemoteHooks(target, output_cap, self._control, self._add_orphan, self._forget)

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
            client, route = connect(self.target, self.known_hosts_path)
            try:
                self._end_orphans(client)
            except BaseException:
                client.close()
                route.close()
                raise
            self._client, self._route, self._sock = client, route, route.tcp
            transport = client.get_transport()
            assert transport is not None
            return transport

    def ensure_connected(self) -> None:
        """Open the connection now if it is not open (never opened, or dropped), as the next command would."""
        self._transport()

    def check_ready(self, timeout: float) -> str | None:
        """Connect (host key checked) and start the kept shell (and its supervisor): what `true` proves, in one session.

        None when commands can run, else why not. The kept shell starts through the login
        shell as every command does, so a start-up file that prints, or a missing /bin/sh,
        shows here as it would for `true`. Where the kept shell cannot start or answer,
        `true` runs on a channel of its own and says why.
        """
        try:
            self._transport()
        except ExecutorError as exc:
            return str(exc)
        shell = self._shells.acquire(self._client)
        if shell is not None:
            try:
                answered = shell.probe(timeout=timeout)
                noise = shell.noise
            finally:
                shell.release()
            if noise is not None:
                return str(ExecutorError(unexpected_output(noise), host=self.target.name))
            if answered:
                return None
        try:
            result = self.run("true", timeout=timeout)
        except ExecutorError as exc:
            return str(exc)
        return None if result.ok else (result.stderr.strip() or f"`true` exited {result.exit_code}")

    def _end_orphans(self, client: paramiko.SSHClient) -> None:
        """Kill the process groups of commands cut off by a dropped connection; raise if we cannot."""
        with self._lock:
            orphans = dict(self._orphans)
        if not orphans:
            return
        by_become: dict[Become | None, list[int]] = {}
        for pgid, become in sorted(orphans.items()):
            by_become.setdefault(become, []).append(pgid)
        pgids = sorted(orphans)
        transport = client.get_transport()
        status = 0
        detail = ""
        for become, groups in by_become.items():
            status, detail = self._kill_on(transport, groups, become)
            if status != 0:
                break
        if status != 0:
            # Nothing may run on this host while the cut-off command might still be running.
            raise ConnectError(
                f"reconnected to {self.target.endpoint} but could not kill process group(s) "
                f"{', '.join(map(str, pgids))} of the command(s) cut off by the dropped connection{detail}",
                host=self.target.name,
            )
        with self._lock:
            for pgid in pgids:
                self._orphans.pop(pgid, None)

    def _kill_on(
        self, transport: paramiko.Transport | None, pgids: list[int], become: Become | None
    ) -> tuple[int, str]:
        """Run the kill script for `pgids` on a fresh channel of `transport`: its exit status and why."""
        try:
            assert transport is not None
            channel = transport.open_session(timeout=self.target.connect_timeout)
            status = run_control(channel, kill_script(pgids), become, KILL_GRACE + self.target.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            return -1, f": {exc}"
        return status, f" (exit {status})"

    def _disconnect(self) -> None:
        self._shells.drop(None)
        if self._client is not None:
            # Through a jump host whose session is gone, closing the channel under the client
            # fails too; the route below is closed all the same.
            with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
                self._client.close()
        if self._route is not None:
            self._route.close()
        self._client = None
        self._route = None
        self._sock = None

    def _open_channel(self) -> paramiko.Channel:
        transport = self._transport()
        with translate(_CHANNEL_FAULTS, host=self.target.name, endpoint=self.target.endpoint):
            try:
                return transport.open_session(timeout=self.target.connect_timeout)
            except paramiko.ChannelException:
                # sshd's MaxSessions: the kept shell holds one session; commands come first.
                if not self._shells.drop(transport) and not self._shells.closing():
                    raise
            # sshd frees the shell's session once it has read the close: ask again, briefly.
            deadline = time.monotonic() + self.target.connect_timeout
            while True:
                try:
                    return transport.open_session(timeout=self.target.connect_timeout)
                except paramiko.ChannelException:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(_SESSION_RETRY)

    # -- commands -------------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_start: OnStart | None = None,
        become: Become | None = None,
    ) -> CommandResult:
        """Run `command` with /bin/sh on the host (through sudo with `become`) and wait for it, the timeout, or a cancel.

        By the kept shell's supervisor when it runs there, is free, and the command needs
        no stdin and no sudo (see ssh_kept), else on a session of its own.
        """
        env = validate_env(env)
        started = time.monotonic()
        shell = self._command_shell() if become is None and not stdin else None
        if shell is not None:
            kept = KeptCommand(shell, self._hooks, command=command, env=env, on_start=on_start)
            with self._lock:
                self._in_flight.add(kept)
            try:
                return run_process(kept, host=self.target.name, command=command, timeout=timeout, started=started)
            except NotTaken:
                pass  # the supervisor ended before it let the command start: run it on a session
        wrapped = wrap(command, env, become)
        if become is not None:
            stdin = become.stdin(stdin)
        channel = self._open_channel()
        entry = RemoteProcess(
            channel, self._hooks, remote_command=wrapped, stdin=stdin, on_start=on_start, become=become
        )
        with self._lock:
            self._in_flight.add(entry)
        return run_process(entry, host=self.target.name, command=command, timeout=timeout, started=started)

    def _command_shell(self) -> ControlShell | None:
        """The kept shell, locked for one command, where it can run commands; None to take a session."""
        self._transport()  # (re)connect first, ending what a dropped connection cut off, as a session would
        shell = self._shells.acquire(self._client)
        if shell is None:
            return None
        if shell.commands is None:
            shell.probe(timeout=self.target.connect_timeout)
        if shell.commands and shell.usable:
            return shell
        shell.release()
        return None

    def _forget(self, entry: RemoteCommand) -> None:
        with self._lock:
            self._in_flight.discard(entry)

    def _add_orphan(self, pgid: int, become: Become | None) -> None:
        with self._lock:
            self._orphans[pgid] = become

    def _control(self, script: str, become: Become | None = None) -> bool:
        """Run a kill script (through sudo for `become`) and wait for it; False if the connection is gone.

        On the kept shell when it is free (a become script needs sudo's stdin: always a
        channel of its own); on a channel of its own otherwise, or if the kept shell failed.
        """
        if become is None:
            shell = self._shells.acquire(self._client)
            if shell is not None:
                try:
                    if shell.run(script, timeout=KILL_GRACE + self.target.connect_timeout):
                        return True
                finally:
                    shell.release()
        try:
            run_control(self._open_channel(), script, become, KILL_GRACE + self.target.connect_timeout)
        except (ExecutorError, paramiko.SSHException, OSError):
            return False
        return True

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
        # as soon as the report arrives (see RemoteProcess._learn_pgid).
        kill_runs(ready, self._control)

    # -- files ----------------------------------------------------------------------------

    def _sftp(self) -> paramiko.SFTPClient:
        transport = self._transport()
        try:
            with translate(_SFTP_START_FAULTS, host=self.target.name, endpoint=self.target.endpoint):
                sftp = paramiko.SFTPClient.from_transport(transport)
        except ExecutorError as exc:
            if not isinstance(exc.__cause__, EOFError | OSError):
                raise
            # The connection dropped and its reader has not noticed yet (is_active() still said
            # yes): an EOF here means the transport is dead, so start over on a new connection.
            with self._connect_lock:
                if self._client is not None and self._client.get_transport() is transport:
                    self._disconnect()
            transport = self._transport()
            with translate(_SFTP_START_FAULTS, host=self.target.name, endpoint=self.target.endpoint):
                sftp = paramiko.SFTPClient.from_transport(transport)
        if sftp is None:
            raise ExecutorError(f"cannot start SFTP on {self.target.endpoint}", host=self.target.name)
        return sftp

    def read_file(self, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT) -> bytes:
        """Return the content of a remote file over SFTP; refuse files over `max_bytes`."""
        sftp = self._sftp()
        try:
            with translate(_SFTP_READ_FAULTS, host=self.target.name, path=path), sftp.open(path, "rb") as handle:
                size = handle.stat().st_size
                if size is not None and size > max_bytes:
                    raise ExecutorError(f"{path} is larger than {max_bytes} bytes", host=self.target.name)
                handle.prefetch(size)
                data = handle.read(max_bytes + 1)
        finally:
            _close_sftp(sftp)
        if len(data) > max_bytes:
            raise ExecutorError(f"{path} is larger than {max_bytes} bytes", host=self.target.name)
        return data

    def put_file(self, data: bytes, path: str, *, mode: int = 0o644) -> None:
        """Replace a remote file atomically over SFTP: temp file in place, chmod, rename."""
        directory, name = posixpath.split(path)
        tmp = posixpath.join(directory, f".{name}.rollout-{uuid.uuid4().hex}.tmp")
        sftp = self._sftp()
        try:
            with translate(_SFTP_WRITE_FAULTS, host=self.target.name, path=path):
                try:
                    with sftp.open(tmp, "wb") as handle:
                        handle.set_pipelined(True)
                        handle.write(data)
                    sftp.chmod(tmp, mode)
                    # posix-rename replaces the target in one step (plain SFTP rename refuses to).
                    sftp.posix_rename(tmp, path)
                except (OSError, *_SFTP_ERRORS):
                    # The temp file may never have been created, or the connection is gone.
                    with contextlib.suppress(OSError, *_SFTP_ERRORS):
                        sftp.remove(tmp)
                    raise
        finally:
            _close_sftp(sftp)

    def upload(self, data: bytes, dest: str, *, mode: int, owner: str | None, key: str) -> Uploaded:
        """Keep dest's previous content beside it, replace dest atomically over SFTP, read back its sha256."""
        from rollout.executors import ssh_upload

        sftp = self._sftp()
        try:
            with translate(_SFTP_WRITE_FAULTS, host=self.target.name, path=dest):
                existed = ssh_upload.keep_previous(sftp, dest, key)
                digest = ssh_upload.replace(sftp, data, dest, mode, owner, self._chown)
        finally:
            _close_sftp(sftp)
        backup, absent = backup_paths(dest, key)
        return Uploaded(dest, len(data), digest, backup if existed else absent, existed)

    def _chown(self, owner: str, path: str) -> None:
        result = self.run(f"chown {shlex.quote(owner)} {shlex.quote(path)}", timeout=self.target.connect_timeout + 10)
        if not result.ok:
            raise ExecutorError(f"cannot chown {path} to {owner}: {result.tail('stderr', 3)}", host=self.target.name)

    def restore_upload(self, dest: str, key: str) -> str:
        """Put the kept copy back over dest (or remove dest if it did not exist); idempotent."""
        from rollout.executors import ssh_upload

        sftp = self._sftp()
        try:
            with translate(_SFTP_WRITE_FAULTS, host=self.target.name, path=dest):
                return ssh_upload.restore(sftp, dest, key)
        finally:
            _close_sftp(sftp)

    def close(self) -> None:
        """Kill in-flight commands and drop the connection; idempotent."""
        self.cancel()
        with self._connect_lock:
            self._disconnect()


def _close_sftp(sftp: paramiko.SFTPClient) -> None:
    """Close an SFTP session; on a connection that just died this fails too, and must not hide why it died."""
    with contextlib.suppress(OSError, *_SFTP_ERRORS):
        sftp.close()
