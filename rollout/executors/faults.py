"""Translating library and OS exceptions into ours: one table per operation, one context manager.

The executors talk to subprocess, the OS and paramiko, whose exceptions mean nothing to the
engine. Each operation (spawning a shell, connecting, opening a channel, reading a file...)
declares a table from exception type to our error type and message template, and runs
inside `translate(table, ...)`. The most specific table entry along the exception's class
hierarchy wins, the way httpx maps httpcore's exceptions. An exception the table does not
name, or one of ours, passes through unchanged.

This module imports no third-party library: the SSH tables, which name paramiko's classes,
live in the SSH modules so that paramiko is imported only when an SSH target is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from rollout.errors import ExecutorError, RolloutError

#: Our error class and the message template for one exception type. The template is
#: filled with str.format: `exc` is the exception, `detail` is an OSError's strerror (or
#: the exception itself), plus the fields given to translate() (endpoint, path...).
Rule = tuple[type[ExecutorError], str]
FaultTable = Mapping[type[BaseException], Rule]

#: Spawning the local shell.
SPAWN_FAULTS: FaultTable = {OSError: (ExecutorError, "cannot start /bin/sh: {exc}")}
#: Reading a file on the target (local; the SSH table extends it).
READ_FAULTS: FaultTable = {OSError: (ExecutorError, "cannot read {path}: {detail}")}
#: Writing a file on the target (local; the SSH table extends it).
WRITE_FAULTS: FaultTable = {OSError: (ExecutorError, "cannot write {path}: {detail}")}


def rule_for(table: FaultTable, exc: BaseException) -> Rule | None:
    """The entry for the most specific class of `exc` that the table names, if any."""
    for cls in type(exc).__mro__:
        rule = table.get(cls)
        if rule is not None:
            return rule
    return None


def describe(exc: BaseException) -> str:
    """An OSError's strerror when it has one, else the exception's own text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def translated(table: FaultTable, exc: BaseException, *, host: str, **fields: object) -> ExecutorError | None:
    """Our error for `exc` under `table`, or None when the table does not name it."""
    if isinstance(exc, RolloutError):
        return None
    rule = rule_for(table, exc)
    if rule is None:
        return None
    error_type, template = rule
    return error_type(template.format(exc=exc, detail=describe(exc), **fields), host=host)


@contextmanager
def translate(table: FaultTable, *, host: str, **fields: object) -> Iterator[None]:
    """Re-raise exceptions named by `table` as our errors (chained), naming the host."""
    try:
        yield
    except Exception as exc:
        error = translated(table, exc, host=host, **fields)
        if error is None:
            raise
        raise error from exc
