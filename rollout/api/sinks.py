"""The sinks a run is wired to besides the caller's: the journal, its fallback, a plain callback."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path

from rollout.event import Event
from rollout.journal import Journal

FALLBACK_FILE = "journal.fallback.jsonl"

Warn = Callable[[str], None]


class JournalSink:
    """The journal as a sink: appends every event, durable when asked."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def emit(self, event: Event, *, sync: bool) -> None:
        """Append the event (raises JournalError on a write or fsync failure)."""
        self.journal.append(event, sync=sync)


class FallbackSink:
    """Where events go once the journal cannot be written: a side file and the warning channel, best effort.

    The rollback after a journal failure still deserves a record; this one is not
    hash-chained, so it is evidence of what was done, not proof.
    """

    def __init__(self, path: Path, warn: Warn) -> None:
        self.path = path
        self.warn = warn
        self.announced = False

    def emit(self, event: Event, *, sync: bool) -> None:
        """Append the event as a JSON line to the side file and pass it to the warning channel."""
        from rollout.atomic import write_all
        from rollout.journal import event_to_dict

        line = json.dumps({"ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), **event_to_dict(event)})
        if not self.announced:
            self.announced = True
            self.warn(f"journal unavailable: recording the rest of the run in {self.path} and here")
        self.warn(f"journal-fallback: {line}")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                write_all(fd, line.encode() + b"\n")
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass  # the warning channel already has it; a full disk must not stop the rollback


class CallbackSink:
    """A plain function as a sink: called with every (redacted) event, in order."""

    def __init__(self, callback: Callable[[Event], None]) -> None:
        self.callback = callback

    def emit(self, event: Event, *, sync: bool) -> None:
        """Hand the event to the callback; its errors are the bus's to contain, like any sink's."""
        self.callback(event)
