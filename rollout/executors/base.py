"""The executor contract: where commands run, what a run returns, and the protocol.

Pure data and a Protocol only: this module never starts a process or opens a socket,
so the engine and the checks can depend on it without pulling in any I/O library.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict, runtime_checkable

#: Default cap on each captured stream: enough for a useful tail, bounded for 1000 hosts.
DEFAULT_OUTPUT_CAP = 64 * 1024

#: Default limit for read_file: metadata documents are small; a huge file is a mistake.
DEFAULT_READ_LIMIT = 64 * 1024 * 1024

#: Seconds between SIGTERM and SIGKILL when a command's process group must die.
KILL_GRACE = 0.3

#: Called once per command, on the thread that called run(), with the process group id
#: of everything the command starts (on the target), as soon as the executor knows it.
#: If it raises, the executor kills that process group and run() re-raises.
OnStart = Callable[[int], None]


@dataclass(frozen=True)
class Target:
    """Where commands run; built by the engine from the plan."""

    name: str
    connection: Literal["local", "ssh"] = "local"
    address: str = "127.0.0.1"
    port: int = 22
    user: str | None = None
    identity_file: str | None = None
    # None means ~/.ssh/known_hosts. Unknown or changed host keys are refused, never added.
    known_hosts: str | None = None
    connect_timeout: float = 10.0
    # Resolved from the OpenSSH client config (see ssh_config.resolve_target).
    identities_only: bool = False
    server_alive_interval: float = 0.0
    #: every key to offer, in order (identity_file first when set); empty means agent and ~/.ssh defaults
    identity_files: tuple[str, ...] = ()
    #: ProxyJump: the hosts to tunnel through, first hop first; each hop's own `jumps` are the hops before it
    jumps: tuple[Target, ...] = ()
    #: ProxyCommand, tokens expanded: its stdin/stdout carry the connection (exclusive with `jumps`)
    proxy_command: str | None = None

    @property
    def endpoint(self) -> str:
        """`address:port` as an operator would type it."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{address}:{self.port}"


@dataclass(frozen=True)
class Become:
    """Run a command through sudo as `user`; with a password, sudo reads it from stdin (never argv)."""

    user: str = "root"
    # Kept out of repr: an exception or a log line that prints a Become must not print the password.
    password: str | None = field(default=None, repr=False)

    def argv(self) -> list[str]:
        """The sudo prefix: `-n` never prompts; `-S -p ''` reads the password as stdin's first line.

        `-k` makes sudo ignore (and not refresh) a cached credential, so it always reads that
        first line: a cached credential would otherwise hand the password to the command's stdin.
        """
        if self.password is None:
            return ["sudo", "-n", "-u", self.user, "--"]
        return ["sudo", "-k", "-S", "-p", "", "-u", self.user, "--"]

    def stdin(self, data: bytes | None) -> bytes | None:
        """What the command's stdin becomes: the password line first, when there is one."""
        if self.password is None:
            return data
        return self.password.encode("utf-8") + b"\n" + (data or b"")

    def command(self, command: str, env: Mapping[str, str]) -> list[str]:
        """argv of `command` under sudo; `env` is exported inside (sudo's env_reset would drop it)."""
        if env:
            exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in env.items())
            command = f"{exports}exec /bin/sh -c {shlex.quote(command)}"
        return [*self.argv(), "/bin/sh", "-c", command]

    def shell(self, command: str, env: Mapping[str, str]) -> str:
        """The same as one shell command line, for a remote shell."""
        return " ".join(shlex.quote(arg) for arg in self.command(command, env))


class BecomeArg(TypedDict, total=False):
    """The `become=` keyword of Executor.run, present only when set."""

    become: Become


def become_arg(become: Become | None) -> BecomeArg:
    """`become=` for Executor.run only when set, so executors that predate it keep working for plain commands."""
    return {"become": become} if become is not None else {}


@dataclass(frozen=True)
class CommandResult:
    """What one command did on one host: a plain record, no behaviour beyond reading it."""

    host: str
    command: str
    exit_code: int | None  # None when killed (timeout, cancel) or ended by a signal
    stdout: str  # the last `cap` bytes, decoded as UTF-8 with replacement
    stderr: str
    duration: float  # seconds on the monotonic clock
    timed_out: bool = False
    cancelled: bool = False
    truncated: bool = False  # at least one stream lost its head to the cap
    # The connection to the host dropped while the command ran: how it ended is unknown.
    connection_lost: bool = False

    @property
    def ok(self) -> bool:
        """True when the command ran to completion and exited 0."""
        return self.exit_code == 0 and not self.timed_out and not self.cancelled and not self.connection_lost

    @property
    def failed(self) -> bool:
        """True when the command did not succeed, for whatever reason."""
        return not self.ok

    def tail(self, stream: Literal["stdout", "stderr"] = "stdout", lines: int = 10) -> str:
        """The last `lines` lines of one stream, for error messages and reports."""
        text = self.stdout if stream == "stdout" else self.stderr
        if lines <= 0:
            return ""
        return "\n".join(text.rstrip("\n").split("\n")[-lines:])


@dataclass(frozen=True)
class Uploaded:
    """What an upload left on the target: the sha256 read back from dest, never the content."""

    dest: str
    size: int
    sha256: str
    backup: str  # where the previous content was kept (or the marker that there was none)
    existed: bool  # dest existed before the first attempt


def backup_paths(dest: str, key: str) -> tuple[str, str]:
    """Beside dest: the copy of its previous content, and the marker that it did not exist."""
    base = f"{dest}.rollout-prev-{key}"
    return base, f"{base}.absent"


@runtime_checkable
class Executor(Protocol):
    """Runs shell commands and moves files on one target."""

    target: Target

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
        """Run `command` with /bin/sh on the target and wait for it (or the timeout).

        Everything the command starts in its process group ends when run() returns,
        whatever the reason. `on_start` learns that group's id as soon as it exists.
        With `become`, the command runs through sudo as that user, and the kills that end
        its group go through the same sudo (the group is not the login user's to signal).
        """
        ...

    def read_file(self, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT) -> bytes:
        """Return the content of `path` on the target; refuse files over `max_bytes`."""
        ...

    def put_file(self, data: bytes, path: str, *, mode: int = 0o644) -> None:
        """Replace `path` on the target atomically with `data`, with permissions `mode`."""
        ...

    def upload(self, data: bytes, dest: str, *, mode: int, owner: str | None, key: str) -> Uploaded:
        """Keep dest's previous content beside it (once per key), then replace dest atomically with `data`.

        The new content goes to a temporary file in dest's directory, gets its mode and
        owner, and is renamed over dest; the sha256 of dest is then read back from the target.
        A failure before the rename leaves dest as it was.
        """
        ...

    def restore_upload(self, dest: str, key: str) -> str:
        """Undo upload(..., key=key): put the kept content back (or remove dest); idempotent. Says what it did."""
        ...

    def cancel(self) -> None:
        """Kill every in-flight command now; safe from any thread; later runs still work."""
        ...

    def close(self) -> None:
        """Release connections and kill what is still running; safe to call twice."""
        ...


@runtime_checkable
class Reconnectable(Protocol):
    """An executor with a kept connection that can be opened ahead of its next command (SSH)."""

    def ensure_connected(self) -> None:
        """Open the connection now if it is not open (never opened, or dropped); raise ConnectError if it cannot."""
        ...

    def check_ready(self, timeout: float) -> str | None:
        """Connect and prove that commands can run, as `true` would: None, or why not."""
        ...


class OutputTail:
    """Keeps the last `cap` bytes of a stream in bounded memory."""

    __slots__ = ("_buf", "cap", "dropped")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._buf = bytearray()
        self.dropped = False

    def feed(self, chunk: bytes) -> None:
        """Append a chunk, forgetting the oldest bytes beyond twice the cap."""
        self._buf += chunk
        # Trimming only past 2x cap keeps the amortised cost linear in the output size.
        if len(self._buf) > 2 * self.cap:
            del self._buf[: len(self._buf) - self.cap]
            self.dropped = True

    @property
    def truncated(self) -> bool:
        """True when bytes before the kept tail were dropped."""
        return self.dropped or len(self._buf) > self.cap

    def text(self) -> str:
        """The kept tail decoded as UTF-8, without a split character at its start."""
        data = bytes(self._buf[-self.cap :]) if self.cap else b""
        if self.truncated:
            # The cut can land inside a multi-byte character: skip its continuation bytes
            # rather than start the tail with a replacement character.
            skip = 0
            while skip < min(3, len(data)) and 0x80 <= data[skip] <= 0xBF:
                skip += 1
            data = data[skip:]
        return data.decode("utf-8", errors="replace")


def validate_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Reject environment names a shell cannot export, so both executors agree."""
    if not env:
        return {}
    for name in env:
        if not name or not (name[0].isalpha() or name[0] == "_") or not all(c.isalnum() or c == "_" for c in name):
            raise ValueError(f"invalid environment variable name: {name!r}")
        if not name.isascii():
            raise ValueError(f"invalid environment variable name: {name!r}")
    return dict(env)
