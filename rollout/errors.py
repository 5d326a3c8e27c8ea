"""The exception tree and the exit codes; imports nothing of ours.

    RolloutError
    ├── PlanError            invalid plan: file:line:column, key path, what was expected   (exit 2)
    │   └── TemplateError    undefined variable or bad template                            (exit 2)
    ├── UsageError           bad command-line arguments or unreadable input                 (exit 2)
    ├── Refused              nothing was changed: lock held, freeze window, plan changed    (exit 3)
    │   └── LockHeld
    ├── ExecutorError        a target could not be reached or a transfer failed
    │   └── ConnectError     ssh connect/auth/host-key failure, naming the host
    ├── MetadataError        a metadata document cannot be read or parsed                    (exit 2)
    └── JournalError         the journal cannot be written or is damaged                     (exit 5)
        └── JournalCorrupt   a line was edited, removed, reordered or truncated

Third-party exceptions are translated into these in the one module that uses the library.
The exit code of each is decided in one place, `rollout.exits.exit_status_for`.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """The CI contract: every command ends with one of these."""

    SUCCESS = 0
    ROLLED_BACK = 1
    USAGE = 2
    REFUSED = 3
    ROLLBACK_FAILED = 4
    JOURNAL = 5
    INTERRUPTED = 130


class RolloutError(Exception):
    """Base of every error rollout raises on purpose."""


class PlanError(RolloutError):
    """A plan is invalid; the message names file:line:column and the key path."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        super().__init__(self.render())

    @property
    def location(self) -> str:
        """`file:line:column`, as far as it is known."""
        parts = [self.file or "<plan>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def render(self) -> str:
        """One line: location, key path, message."""
        where = f" at {self.path}" if self.path else ""
        return f"{self.location}: error{where}: {self.message}"


class TemplateError(PlanError):
    """A template names an undefined variable or is malformed."""


class UsageError(RolloutError):
    """Bad arguments or unreadable input; nothing ran."""


class Refused(RolloutError):
    """Refused before any change."""


class LockHeld(Refused):
    """Another run holds the environment lock."""


class ExecutorError(RolloutError):
    """A target could not be reached, or a command could not be started there."""

    def __init__(self, message: str, *, host: str | None = None) -> None:
        self.host = host
        super().__init__(f"{host}: {message}" if host else message)


class ConnectError(ExecutorError):
    """Connecting or authenticating to a host failed (including host-key refusal)."""


class MetadataError(RolloutError):
    """A metadata document, schema or key path cannot be read or parsed."""


class JournalError(RolloutError):
    """The journal cannot be written, read or trusted: evidence may be incomplete."""


class JournalCorrupt(JournalError):
    """A journal line fails the hash chain; `line` is 1-based."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)
