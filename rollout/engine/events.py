"""Where events go: sinks, the bus that fans out to them, and secret redaction.

The engine emits every event through one Bus. The bus redacts secrets first (in raw,
base64 and URL-encoded forms), then hands the event to the journal (whose errors stop
the run) and to the other sinks (whose errors never do).
"""

from __future__ import annotations

import base64
import re
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


# A base64 fragment shorter than this is too likely to occur by chance in ordinary text.
MIN_BASE64_FRAGMENT = 6
_LINE_BREAKS = re.compile(r"[\r\n]")


def base64_fragments(raw: bytes) -> set[str]:
    """The base64 characters that `raw` alone decides, at each of the three byte alignments.

    Inside any longer base64 value (`Bearer <secret>`, a JSON document) the secret starts
    at some byte offset; only its offset modulo 3 changes how it is encoded. At offset k
    the secret covers bits [8k, 8k + 8n) of the encoding, so the characters wholly inside
    that span, ceil(8k/6) up to floor((8k + 8n)/6), are the same whatever surrounds it.
    \x00 bytes stand in for the neighbours; the characters taken never depend on them.
    """
    fragments: set[str] = set()
    for k in range(3):
        start = -(-8 * k // 6)
        end = (8 * k + 8 * len(raw)) // 6
        if end - start < MIN_BASE64_FRAGMENT:
            continue
        padded = b"\x00" * k + raw + b"\x00\x00"
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            fragments.add(encode(padded).decode("ascii")[start:end])
    return fragments


def _percent_pattern(secret: str) -> str:
    """A regex for the secret with any of its characters percent-encoded, in either hex case."""
    parts = []
    for char in secret:
        encoded = "".join(f"%{b:02x}" for b in char.encode("utf-8"))
        hexed = re.sub(r"[a-f]", lambda m: f"[{m.group().lower()}{m.group().upper()}]", encoded)
        choices = [re.escape(char), hexed] + (["\\+"] if char == " " else [])
        parts.append(f"(?:{'|'.join(choices)})")
    return "".join(parts)


class Redactor:
    """Replaces secret values, and every way a command is likely to print them, with ***.

    Forms caught: the raw value; base64 at every byte alignment (so also inside a longer
    base64 value), standard or URL-safe, padded or not, and wrapped over lines (GNU
    `base64` wraps at 76 columns); percent-encoding of any of its characters in either hex
    case, `+` for a space.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        patterns: list[str] = []
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
            forms.update(base64_fragments(raw))
            patterns.append(_percent_pattern(secret))
        self._forms = sorted(forms, key=len, reverse=True)
        self._percent = re.compile("|".join(sorted(patterns, key=len, reverse=True))) if patterns else None

    def __bool__(self) -> bool:
        return bool(self._forms)

    def text(self, value: str) -> str:
        """The text with every secret form replaced."""
        for form in self._forms:
            if form in value:
                value = value.replace(form, REDACTED)
        if self._percent is not None and ("%" in value or "+" in value):
            value = self._percent.sub(REDACTED, value)
        if "\n" in value or "\r" in value:
            value = self._across_lines(value)
        return value

    def _across_lines(self, value: str) -> str:
        """Catch forms that a line break splits (wrapped base64): search with the breaks removed."""
        kept = [i for i, char in enumerate(value) if char not in "\r\n"]
        joined = _LINE_BREAKS.sub("", value)
        spans: list[tuple[int, int]] = []
        for form in self._forms:
            at = joined.find(form)
            while at != -1:
                spans.append((kept[at], kept[at + len(form) - 1] + 1))
                at = joined.find(form, at + len(form))
        if not spans:
            return value
        out: list[str] = []
        position = 0
        for first, end in sorted(spans):
            if end <= position:
                continue
            start = max(first, position)
            out.append(value[position:start])
            # the line breaks inside the span are kept so the shape of the output survives
            out.append(REDACTED + "".join(c for c in value[start:end] if c in "\r\n"))
            position = end
        out.append(value[position:])
        return "".join(out)

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
            if failed is not None:
                # The event the journal refused did not become evidence, and the engine acts
                # on the refusal (an intent that is refused never runs; a refused success
                # verdict is not a success): only the side record keeps it, marked as such.
                refused = Event(
                    event.kind,
                    event.wave,
                    event.host,
                    event.step,
                    event.outcome,
                    {**event.data, "not_journaled": str(failed)},
                )
                sinks = [self._fallback] if self._fallback is not None else []
                event = refused
            else:
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
