"""Where events go: sinks, the bus that fans out to them, and secret redaction.

The engine emits every event through one Bus. The bus redacts secrets first (in raw,
base64 and URL-encoded forms), then hands the event to the journal (whose errors stop
the run) and to the other sinks (whose errors never do).
"""

from __future__ import annotations

import base64
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from rollout.errors import JournalError
from rollout.event import Event

REDACTED = "***"


class Sink(Protocol):
    """Receives every event of a run, in order."""

    def emit(self, event: Event, *, sync: bool) -> None:
        """Take one event; `sync` asks for it to be durable before returning."""


class Redactor:
    """Replaces secret values (and their base64 and URL-encoded forms) with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) < 3:  # replacing 1-2 characters would shred every line
                continue
            raw = secret.encode("utf-8")
            forms.update(
                {
                    secret,
                    base64.b64encode(raw).decode("ascii"),
                    base64.b64encode(raw).decode("ascii").rstrip("="),
                    base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="),
                    urllib.parse.quote(secret, safe=""),
                    urllib.parse.quote_plus(secret),
                }
            )
        self._forms = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def text(self, value: str) -> str:
        """The text with every secret form replaced."""
        for form in self._forms:
            if form in value:
                value = value.replace(form, REDACTED)
        return value

    def data(self, value: Any) -> Any:
        """A copy of a JSON-like structure with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value

    def event(self, event: Event) -> Event:
        """The event with secrets removed from every field."""
        if not self._forms:
            return event
        return Event(
            kind=event.kind,
            wave=event.wave,
            host=event.host,
            step=event.step,
            outcome=event.outcome,
            data=self.data(dict(event.data)),
        )


class Bus:
    """Fans events out: journal first (its failure is fatal), then the other sinks.

    Once the journal has failed, every later event goes to the `fallback` sink instead (a
    side file and stderr, wired by the caller): the rollback that follows a journal
    failure must still leave a record. Only the first failure raises.
    """

    def __init__(
        self,
        journal: Sink | None,
        sinks: Iterable[Sink] = (),
        redactor: Redactor | None = None,
        *,
        fallback: Sink | None = None,
    ) -> None:
        self._journal = journal
        self._sinks = list(sinks)
        self._redactor = redactor or Redactor(())
        self._fallback = fallback
        self._lock = threading.Lock()
        self.sink_errors: list[str] = []
        self.journal_error: JournalError | None = None

    def add(self, sink: Sink) -> None:
        """Add a sink that sees every later event."""
        with self._lock:
            self._sinks.append(sink)

    def emit(self, event: Event, *, sync: bool = False) -> Event:
        """Redact, journal, then tell the other sinks; JournalError propagates."""
        event = self._redactor.event(event)
        failed: JournalError | None = None
        with self._lock:
            if self._journal is not None and self.journal_error is None:
                try:
                    self._journal.emit(event, sync=sync)
                except JournalError as exc:
                    self.journal_error = failed = exc
            sinks = list(self._sinks)
            if self.journal_error is not None and self._fallback is not None:
                sinks.insert(0, self._fallback)
            for sink in sinks:
                try:
                    sink.emit(event, sync=sync)
                except Exception as exc:  # a display or notifier bug must never stop a rollback
                    self.sink_errors.append(f"{type(sink).__name__}: {exc!r}")
        if failed is not None:
            raise failed
        return event


class ListSink:
    """Keeps events in memory (tests, and the final summary)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event, *, sync: bool) -> None:
        """Remember the event."""
        self.events.append(event)
