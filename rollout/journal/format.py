"""The journal's line format: keys, encoding, the genesis hash, events to and from dicts.

A line is ``{"seq","ts","mono","kind","wave","host","step","outcome","data","prev"}``
as compact JSON, keys in that order, UTF-8; ``prev`` is the sha256 of the previous
line's bytes, and line 1 chains to `genesis_hash` of the run id and plan digest. This
module turns events and records into those bytes and back, and does no I/O: reading,
verifying and writing files live beside it (`reader`, `verify`, `writer`).

Depends on the standard library, `rollout.errors` (an event that cannot be encoded is a
`JournalError`, a malformed line a `JournalCorrupt`) and `rollout.event` (the `Event`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from rollout.errors import JournalCorrupt, JournalError
from rollout.event import Event

JOURNAL_KEYS: Final = (
    "seq",
    "ts",
    "mono",
    "kind",
    "wave",
    "host",
    "step",
    "outcome",
    "data",
    "prev",
)
EVENT_FIELDS: Final = ("kind", "wave", "host", "step", "outcome", "data")
RUN_START: Final = "run.start"
RUN_END: Final = "run.end"
RECOVER_START: Final = "recover.start"
_GENESIS_TAG: Final = "rollout-journal-v1"
HEX64: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Record:
    """One verified journal line: the event plus its place in the chain."""

    seq: int
    ts: str
    mono: float
    kind: str
    wave: int | None
    host: str | None
    step: str | None
    outcome: str | None
    data: Mapping[str, Any]
    prev: str
    hash: str
    line_no: int

    @property
    def event(self) -> Event:
        """The event this record holds."""
        return Event(self.kind, self.wave, self.host, self.step, self.outcome, self.data)

    def to_dict(self) -> dict[str, Any]:
        """The journal object of this record, keys in line order (re-encoding gives the line)."""
        return {key: getattr(self, key) for key in JOURNAL_KEYS}


def event_to_dict(event: Event) -> dict[str, Any]:
    """The event's fields as a JSON-ready dict."""
    return {
        "kind": event.kind,
        "wave": event.wave,
        "host": event.host,
        "step": event.step,
        "outcome": event.outcome,
        "data": dict(event.data),
    }


def event_from_dict(obj: Mapping[str, Any]) -> Event:
    """Build an Event from a dict with its fields (extra journal keys such as seq are ignored)."""
    if "kind" not in obj:
        raise ValueError("event has no 'kind'")
    problem = event_type_problem(obj)
    if problem:
        raise ValueError(problem)
    return Event(
        kind=obj["kind"],
        wave=obj.get("wave"),
        host=obj.get("host"),
        step=obj.get("step"),
        outcome=obj.get("outcome"),
        data=dict(obj.get("data") or {}),
    )


def genesis_hash(run_id: str, plan_digest: str) -> str:
    """The hash line 1 chains to: it binds the journal to one run of one plan."""
    return sha256_hex(f"{_GENESIS_TAG}\n{run_id}\n{plan_digest}".encode())


def sha256_hex(data: bytes) -> str:
    """The sha256 hex digest of data: a line's hash in the chain."""
    return hashlib.sha256(data).hexdigest()


def event_type_problem(obj: Mapping[str, Any]) -> str | None:
    """What is wrong with the event fields' types, or None; shared by writer and reader."""
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        return "'kind' must be a non-empty string"
    wave = obj.get("wave")
    if wave is not None and (not isinstance(wave, int) or isinstance(wave, bool)):
        return "'wave' must be an integer or null"
    for key in ("host", "step", "outcome"):
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            return f"{key!r} must be a string or null"
    if not isinstance(obj.get("data", {}), Mapping):
        return "'data' must be an object"
    return None


def utc_ms(t: float) -> str:
    """`2026-11-23T22:30:00.123Z` for a POSIX time (milliseconds truncated, never rounded up)."""
    secs, ms = divmod(int(t * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def encode_line(obj: dict[str, Any]) -> bytes:
    """The line's bytes: compact JSON, keys in order, UTF-8 (ASCII escapes if text is not)."""
    try:
        text = json.dumps(
            obj,
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
            default=_json_default,
        )
    except (TypeError, ValueError) as exc:
        raise JournalError(f"event {obj['kind']!r} cannot be journaled: {exc}") from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (e.g. undecodable command output): keep the event, escape them.
        return json.dumps(obj, separators=(",", ":"), default=_json_default).encode("ascii")


class Unparsable(Exception):
    """A line that is not a JSON object at all (torn when it is the last line)."""


def _parse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every line: json.loads with any keyword builds a new one per call,
# a tenth of the time to read a long journal.
_DECODER = json.JSONDecoder(parse_constant=_parse_constant)


def _loads(text: str) -> Any:
    """json.loads(text, parse_constant=_parse_constant), with its errors, on the shared decoder."""
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


def parse_object(raw: bytes) -> dict[str, Any]:
    """A line's bytes as a JSON object; Unparsable when they are not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unparsable(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if text[:1] == "{":
        # A line as the writer writes it: one object from the first character to the last.
        # Decoding it directly skips the whitespace scans around it (a sixth of reading a
        # line); anything else takes the full path below, which names the problem.
        try:
            obj, end = _DECODER.raw_decode(text)
        except ValueError:
            pass
        else:
            if end == len(text):
                return obj  # type: ignore[no-any-return]
    try:
        obj = _loads(text)
    except ValueError as exc:
        raise Unparsable(f"not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise Unparsable(f"not a JSON object but {type(obj).__name__}")
    return obj


def _well_formed(obj: dict[str, Any]) -> bool:
    """True when the line's keys and types are certainly right (exact JSON types), without saying what is wrong.

    A line the writer wrote passes in one expression; any other goes through the checks
    of `record_from_object` that name its problem.
    """
    wave, host, step, outcome, kind, mono = (
        obj["wave"],
        obj["host"],
        obj["step"],
        obj["outcome"],
        obj["kind"],
        obj["mono"],
    )
    return (
        type(obj["seq"]) is int
        and type(obj["ts"]) is str
        and (type(mono) is float or type(mono) is int)
        and type(kind) is str
        and kind != ""
        and (wave is None or type(wave) is int)
        and (host is None or type(host) is str)
        and (step is None or type(step) is str)
        and (outcome is None or type(outcome) is str)
        and type(obj["data"]) is dict
        and type(obj["prev"]) is str
        and HEX64.fullmatch(obj["prev"]) is not None
    )


def record_from_object(obj: dict[str, Any], raw: bytes, line_no: int) -> Record:
    """The record of line `line_no` (bytes `raw`, parsed to `obj`); JournalCorrupt on wrong keys or types."""
    keys = tuple(obj)
    if keys != JOURNAL_KEYS:
        missing = [k for k in JOURNAL_KEYS if k not in obj]
        extra = [k for k in keys if k not in JOURNAL_KEYS]
        what = f"missing {missing}" if missing else f"unexpected {extra}" if extra else "keys out of order"
        raise JournalCorrupt(f"wrong key set: {what}", line=line_no)
    if not _well_formed(obj):
        problem = _type_problem(obj)
        if problem:
            raise JournalCorrupt(problem, line=line_no)
    # Every field set at once, past the frozen dataclass's __init__, which sets them one
    # object.__setattr__ at a time: a sixth of reading a journal. The record is the same
    # (tests/test_journal.py compares it with Record(...) field by field).
    values = dict(obj)
    values["mono"] = float(obj["mono"])
    values["hash"] = sha256_hex(raw)
    values["line_no"] = line_no
    record: Record = object.__new__(Record)
    record.__dict__.update(values)
    return record


def _type_problem(obj: dict[str, Any]) -> str | None:
    """What is wrong with the types of a line's values (its keys are right), or None."""
    seq, ts, mono, prev = obj["seq"], obj["ts"], obj["mono"], obj["prev"]
    problem = event_type_problem(obj)
    if not isinstance(seq, int) or isinstance(seq, bool):
        problem = "'seq' must be an integer"
    elif not isinstance(ts, str):
        problem = "'ts' must be a string"
    elif not isinstance(mono, int | float) or isinstance(mono, bool):
        problem = "'mono' must be a number"
    elif not isinstance(prev, str) or not HEX64.fullmatch(prev):
        problem = "'prev' must be a sha256 hex digest"
    return problem
