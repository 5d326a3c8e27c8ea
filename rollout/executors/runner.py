"""The one command-runner loop: deadline, stop, output capture and the CommandResult.

Every executor runs a command the same way: start it, move stdin and output until the
shell has exited and its output is drained (or a short linger for background children
that hold the pipes), kill its process group when the deadline on the monotonic clock
passes, stop early when a cancel is under way, then describe what happened. `run_process`
owns that loop and builds the result; an executor supplies a `Process` that knows only
what differs between targets: how to wait for and move I/O, how to notice the exit, how
to kill the group and how to clean up (the shape of invoke's Runner, with Local and
Remote subclasses filling in start/read/kill/returncode).

Invariants the loop keeps for every executor:
- it never waits past the deadline (or the linger, or the process's own poll interval);
- after a timeout the process group is killed once, and the result says `timed_out`;
- `close()` runs on every exit path, normal or not, so nothing the command started
  outlives run();
- a dropped connection (`ConnectionLost`) is a result with `connection_lost`, not an error.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

from rollout.executors.base import CommandResult, OutputTail

#: After the shell exits, how long to keep reading pipes still held by its background
#: children before giving up on them (a daemon started without redirecting output
#: would otherwise hold the step until its timeout).
LINGER = 0.25


class ConnectionLost(Exception):
    """The connection to the host dropped mid-command; the text is the result's stderr."""


class Process(ABC):
    """One started command as an executor drives it; the runner calls only these methods."""

    def __init__(self, output_cap: int) -> None:
        self.out = OutputTail(output_cap)
        self.err = OutputTail(output_cap)
        self.cancelled = False

    @contextmanager
    def faults(self) -> Iterator[None]:
        """Context for the whole run: translate library errors, raise ConnectionLost on a drop."""
        yield

    @abstractmethod
    def begin(self) -> None:
        """Report the process group and set up I/O for the loop (the command is already started)."""

    @abstractmethod
    def transfer(self, wait: float | None) -> None:
        """Wait up to `wait` seconds (None: until an event) for readiness, then move stdin and output."""

    @abstractmethod
    def exited(self) -> bool:
        """True once the command's shell has exited (or been killed)."""

    @abstractmethod
    def drained(self) -> bool:
        """True once every output stream has reached end-of-file."""

    @abstractmethod
    def kill(self) -> None:
        """Kill the command's process group: its deadline has passed."""

    def stopping(self, now: float) -> bool | None:
        """None when no kill is under way; else whether the loop may stop waiting now."""
        return None

    def poll_interval(self) -> float | None:
        """The longest wait before looking again without an event, or None for no limit."""
        return None

    @abstractmethod
    def finish(self, *, killed: bool) -> None:
        """After the loop, before close(): collect the exit status, end what the command left."""

    @abstractmethod
    def exit_code(self) -> int | None:
        """The command's exit code, or None when a signal ended it."""

    @abstractmethod
    def close(self) -> None:
        """Release everything the command holds; kill what it left running. Called on every path."""


def run_process(process: Process, *, host: str, command: str, timeout: float | None, started: float) -> CommandResult:
    """Drive a started command to its end and describe it; `process.close()` always runs."""
    deadline = None if timeout is None else started + timeout
    timed_out = False
    try:
        with process.faults():
            process.begin()
            timed_out = _drive(process, deadline)
            process.finish(killed=timed_out or process.cancelled)
    except ConnectionLost as lost:
        return CommandResult(
            host=host,
            command=command,
            exit_code=None,
            stdout="",
            stderr=str(lost),
            duration=time.monotonic() - started,
            connection_lost=True,
        )
    finally:
        process.close()
    killed = timed_out or process.cancelled
    return CommandResult(
        host=host,
        command=command,
        exit_code=None if killed else process.exit_code(),
        stdout=process.out.text(),
        stderr=process.err.text(),
        duration=time.monotonic() - started,
        timed_out=timed_out,
        cancelled=process.cancelled and not timed_out,
        truncated=process.out.truncated or process.err.truncated,
    )


def _drive(process: Process, deadline: float | None) -> bool:
    """Move I/O until the command is over; return True when its deadline killed it."""
    exited_at: float | None = None
    timed_out = False
    # Until the output is drained *and* the shell has exited: a shell that closed its
    # output may still be running (and must then still obey the timeout).
    while True:
        now = time.monotonic()
        stopping = process.stopping(now)
        if stopping:
            return timed_out
        if exited_at is None and process.exited():
            exited_at = now
        if exited_at is not None and ((stopping is None and process.drained()) or now - exited_at >= LINGER):
            return timed_out  # past the linger, background children hold the pipes: stop waiting
        if stopping is None and exited_at is None and not timed_out and deadline is not None and now >= deadline:
            timed_out = True
            process.kill()
            continue
        process.transfer(_next_wake(now, None if timed_out else deadline, exited_at, process.poll_interval()))


def _next_wake(now: float, deadline: float | None, exited_at: float | None, poll: float | None) -> float | None:
    """Seconds until the loop must look again without an event, or None for never."""
    waits = []
    if deadline is not None and exited_at is None:
        waits.append(deadline - now)
    if exited_at is not None:
        waits.append(exited_at + LINGER - now)
    if poll is not None:
        waits.append(poll)
    return max(0.0, min(waits)) if waits else None
