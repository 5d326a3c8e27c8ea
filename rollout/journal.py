"""The run journal: write-ahead, append-only, hash-chained JSON Lines.

The journal is the source of truth for what a run did: every event is one line
``{"seq","ts","mono","kind","wave","host","step","outcome","data","prev"}`` where ``prev``
is the sha256 of the previous line's bytes; line 1 chains to a genesis hash derived
from the run id and the plan digest, which the first event (``run.start``) carries, so
the chain can be re-verified from the run directory alone.

What the chain can and cannot prove:

- an edited, inserted, removed or reordered line anywhere before the last one, and a
  truncated last line, are detected and named by their 1-based line number;
- an edited line N is named as line N when line N+2 still chains to line N+1;
- removed *last* lines and an edited last line cannot be seen in the chain: they are
  caught by an `Anchor`, a head (line number and hash) kept outside the journal. The
  writer keeps one in the ``head`` file beside the journal, rewritten atomically after
  every fsync and marked closed by `Journal.close`; the report, the status notifications
  and the run's last terminal line carry others, and `verify_journal` checks every
  anchor it is given and names the one that disagrees.

This module must never rewrite or drop a complete journal line, never use a torn line
(it is set aside in ``journal.jsonl.broken``, only when recovering), never keep appending
after a failed write or fsync, and never import anything beyond the standard library,
`rollout.errors` and `rollout.atomic`: it is on the CLI start-up path.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from rollout.atomic import fsync_dir, write_all, write_atomic
from rollout.errors import JournalCorrupt, JournalError, Refused
from rollout.event import Event

__all__ = [
    "EVENT_FIELDS",
    "HEAD_FILE",
    "JOURNAL_KEYS",
    "RUN_END",
    "RUN_START",
    "Anchor",
    "Event",
    "Journal",
    "JournalReading",
    "Record",
    "Verification",
    "event_from_dict",
    "event_to_dict",
    "final_run_end",
    "genesis_hash",
    "head_path",
    "parse_head",
    "read_head_file",
    "read_journal",
    "verify_journal",
]

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
HEAD_FILE: Final = "head"
_HEAD_RECORD: Final = 256  # the head file's fixed size while a run goes on: one in-place write
_HEX64 = re.compile(r"[0-9a-f]{64}")


# --- events and records ---------------------------------------------------------------


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
    problem = _event_type_problem(obj)
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
    return _sha256(f"{_GENESIS_TAG}\n{run_id}\n{plan_digest}".encode())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _event_type_problem(obj: Mapping[str, Any]) -> str | None:
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


def _utc_ms(t: float) -> str:
    """`2026-11-23T22:30:00.123Z` for a POSIX time (milliseconds truncated, never rounded up)."""
    secs, ms = divmod(int(t * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _encode_line(obj: dict[str, Any]) -> bytes:
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


# --- reading and verifying ---------------------------------------------------------------


@dataclass(frozen=True)
class JournalReading:
    """A journal read and verified up to its last complete line."""

    records: tuple[Record, ...]
    head: str | None
    torn: str | None
    torn_offset: int | None = None
    run_id: str | None = None
    plan_digest: str | None = None


@dataclass(frozen=True)
class Verification:
    """The verdict of `verify_journal`; `complete` is False when the run has no run.end yet."""

    ok: bool
    records: int
    head: str | None
    first_bad_line: int | None
    reason: str | None
    complete: bool = False
    run_id: str | None = None
    plan_digest: str | None = None
    anchor: str | None = None
    anchors_checked: tuple[str, ...] = ()


@dataclass(frozen=True)
class Anchor:
    """A journal head kept outside the journal: line `seq` must have hash `hash`.

    `final` says the journal ended there (the writer closed it): no line may follow.
    `source` names where it was found, for the message when it disagrees.
    """

    source: str
    seq: int
    hash: str
    final: bool = False


def parse_head(text: str, source: str) -> Anchor:
    """`SEQ:HASH` (as printed at the end of a run) as an anchor; ValueError when malformed."""
    seq_text, sep, digest = text.strip().partition(":")
    if not sep or not seq_text.isdigit() or int(seq_text) < 1 or not _HEX64.fullmatch(digest):
        raise ValueError(f"{source}: expected SEQ:HASH (a line number and a sha256 hex digest), got {text.strip()!r}")
    return Anchor(source, int(seq_text), digest)


def head_path(journal: Path | str) -> Path:
    """The head file kept beside a journal (`head` in a run directory)."""
    journal = Path(journal)
    return journal.with_name(HEAD_FILE if journal.name == "journal.jsonl" else journal.name + ".head")


def _stable_read(path: Path, tries: int = 50) -> bytes:
    """The file's bytes, read until two reads agree: a running journal overwrites it in place."""
    raw = path.read_bytes()
    for _ in range(tries):
        again = path.read_bytes()
        if again == raw:
            break
        raw = again
    return raw


def read_head_file(journal: Path | str) -> Anchor | None:
    """The head file's anchor, None when there is none; a malformed file is JournalCorrupt."""
    path = head_path(journal)
    try:
        raw = _stable_read(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JournalError(f"cannot read head file {path}: {exc.strerror or exc}") from exc
    try:
        obj = json.loads(raw)
        seq, digest, closed = obj["seq"], obj["hash"], obj["closed"]
    except (ValueError, TypeError, KeyError) as exc:
        raise JournalCorrupt(f"head file {path} is malformed: {exc}") from exc
    if not isinstance(seq, int) or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise JournalCorrupt(f"head file {path} is malformed: seq or hash of the wrong type")
    return Anchor(f"head file {path}", seq, digest, final=closed is True)


def _anchor_problem(records: tuple[Record, ...], anchor: Anchor) -> tuple[int, str] | None:
    """(first bad line, reason) when the journal disagrees with the anchor, else None."""
    count = len(records)
    if anchor.seq > count:
        lines = f"line {count + 1}" if anchor.seq == count + 1 else f"lines {count + 1}-{anchor.seq}"
        return (
            count + 1,
            f"the journal ends at line {count}, but the {anchor.source} records line {anchor.seq}: {lines} cut off",
        )
    if anchor.seq >= 1 and records[anchor.seq - 1].hash != anchor.hash:
        return anchor.seq, (
            f"its hash {records[anchor.seq - 1].hash[:16]} is not {anchor.hash[:16]} as the {anchor.source} "
            f"records (line {anchor.seq} edited or replaced)"
        )
    if anchor.final and count > anchor.seq:
        return anchor.seq + 1, (
            f"the {anchor.source} says the journal was closed at line {anchor.seq}, "
            f"but lines {anchor.seq + 1}-{count} follow it (added afterwards)"
        )
    return None


class _Unparsable(Exception):
    """A line that is not a JSON object at all (torn when it is the last line)."""


def _parse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _parse_object(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_parse_constant)
    except UnicodeDecodeError as exc:
        raise _Unparsable(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except ValueError as exc:
        raise _Unparsable(f"not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise _Unparsable(f"not a JSON object but {type(obj).__name__}")
    return obj


def _record_from_object(obj: dict[str, Any], raw: bytes, line_no: int) -> Record:
    keys = tuple(obj)
    if keys != JOURNAL_KEYS:
        missing = [k for k in JOURNAL_KEYS if k not in obj]
        extra = [k for k in keys if k not in JOURNAL_KEYS]
        what = f"missing {missing}" if missing else f"unexpected {extra}" if extra else "keys out of order"
        raise JournalCorrupt(f"wrong key set: {what}", line=line_no)
    seq, ts, mono, prev = obj["seq"], obj["ts"], obj["mono"], obj["prev"]
    problem = _event_type_problem(obj)
    if not isinstance(seq, int) or isinstance(seq, bool):
        problem = "'seq' must be an integer"
    elif not isinstance(ts, str):
        problem = "'ts' must be a string"
    elif not isinstance(mono, int | float) or isinstance(mono, bool):
        problem = "'mono' must be a number"
    elif not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        problem = "'prev' must be a sha256 hex digest"
    if problem:
        raise JournalCorrupt(problem, line=line_no)
    return Record(
        seq=seq,
        ts=ts,
        mono=float(mono),
        kind=obj["kind"],
        wave=obj["wave"],
        host=obj["host"],
        step=obj["step"],
        outcome=obj["outcome"],
        data=obj["data"],
        prev=prev,
        hash=_sha256(raw),
        line_no=line_no,
    )


def _run_identity(record: Record) -> tuple[str, str]:
    """run_id and plan_digest from line 1, which must be run.start carrying both."""
    if record.kind != RUN_START:
        raise JournalCorrupt(f"first event is {record.kind!r}, expected {RUN_START!r}", line=1)
    run_id, plan_digest = record.data.get("run_id"), record.data.get("plan_digest")
    if not isinstance(run_id, str) or not isinstance(plan_digest, str):
        raise JournalCorrupt(f"{RUN_START} data lacks run_id or plan_digest", line=1)
    return run_id, plan_digest


def _read_no_follow(path: Path) -> bytes:
    """The file's bytes; a symbolic link at the journal's path is an error, never followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def final_run_end(records: Sequence[Record]) -> Record | None:
    """The run.end that states the run's outcome: the last one, or None while a later recover has not ended.

    A run that ended rollback_failed can be recovered later in the same journal, which
    then ends with a second run.end: the last one is the truth.
    """
    for record in reversed(records):
        if record.kind == RUN_END:
            return record
        if record.kind == RECOVER_START:
            return None
    return None


def read_journal(path: Path | str, *, expect_genesis: str | None = None, repair: bool = False) -> JournalReading:
    """Read and verify a journal; a torn last line is reported (and set aside when repair)."""
    path = Path(path)
    try:
        data = _read_no_follow(path)
    except OSError as exc:
        raise JournalError(f"cannot read journal {path}: {exc.strerror or exc}") from exc
    lines = data.split(b"\n")
    complete_tail = lines[-1] == b""
    if complete_tail:
        lines.pop()
    records: list[Record] = []
    run_id = plan_digest = None
    prev_hash: str | None = None
    torn: str | None = None
    torn_offset: int | None = None
    offset = 0
    for line_no, raw in enumerate(lines, start=1):
        last = line_no == len(lines)
        try:
            if not complete_tail and last:
                raise _Unparsable("no newline at the end (torn write or truncation)")
            obj = _parse_object(raw)
        except _Unparsable as exc:
            if not last:
                raise JournalCorrupt(str(exc), line=line_no) from None
            torn = raw.decode("utf-8", "replace")
            torn_offset = offset
            break
        record = _record_from_object(obj, raw, line_no)
        if record.seq != line_no:
            raise JournalCorrupt(
                f"seq is {record.seq}, expected {line_no} (removed, inserted or reordered line)",
                line=line_no,
            )
        if line_no == 1:
            run_id, plan_digest = _run_identity(record)
            if record.prev != genesis_hash(run_id, plan_digest):
                raise JournalCorrupt(
                    f"prev is not the genesis hash of run {run_id} with plan digest "
                    f"{plan_digest} (first line edited or replaced)",
                    line=1,
                )
            if expect_genesis is not None and record.prev != expect_genesis:
                raise JournalCorrupt(
                    "prev is not the expected genesis hash (journal of another run or plan)",
                    line=1,
                )
        elif record.prev != prev_hash:
            raise _chain_break(lines, line_no, record)
        records.append(record)
        prev_hash = record.hash
        offset += len(raw) + 1
    reading = JournalReading(
        records=tuple(records),
        head=prev_hash,
        torn=torn,
        torn_offset=torn_offset,
        run_id=run_id,
        plan_digest=plan_digest,
    )
    if repair and torn_offset is not None:
        _set_aside_torn(path, data[torn_offset:], torn_offset)
    return reading


def _chain_break(lines: list[bytes], line_no: int, record: Record) -> JournalCorrupt:
    """Name the edited line when line `line_no`'s prev does not match the line before it.

    Either line N-1's content was edited (its hash changed) or line N itself was (its
    prev forged). The next line tells them apart: if it still chains to line N, line N
    is intact and line N-1 is the edited one. Without a next line, the content edit of
    line N-1 is named, the far more likely change.
    """
    edited_before = True
    if line_no < len(lines):
        try:
            following = _parse_object(lines[line_no])
        except _Unparsable:
            following = {}
        edited_before = following.get("prev") == record.hash
    if edited_before:
        return JournalCorrupt(
            f"its hash does not match the prev of line {line_no} (line {line_no - 1} edited)",
            line=line_no - 1,
        )
    return JournalCorrupt(
        f"prev does not match the hash of line {line_no - 1} (edited, removed or reordered line)",
        line=line_no,
    )


def _broken_path(path: Path) -> Path:
    return path.with_name(path.name + ".broken")


def _set_aside_torn(path: Path, raw: bytes, offset: int) -> None:
    """Copy a torn tail to journal.jsonl.broken (durably), then cut it from the journal."""
    broken = _broken_path(path)
    entry = {
        "journal": path.name,
        "offset": offset,
        "length": len(raw),
        "set_aside": _utc_ms(time.time()),
        "text": raw.decode("utf-8", "replace"),
        "base64": base64.b64encode(raw).decode("ascii"),
    }
    line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    try:
        created = not broken.exists()
        fd = os.open(broken, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise JournalError(f"cannot set aside the torn last line of {path}: {exc}") from exc


def verify_journal(
    path: Path | str,
    *,
    plan_digest: str | None = None,
    expect_head: str | None = None,
    anchors: tuple[Anchor, ...] = (),
) -> Verification:
    """Recompute the hash chain from the genesis, check it against every anchor given, and say whether it can be trusted."""
    try:
        reading = read_journal(path)
    except JournalCorrupt as exc:
        line = exc.line
        return Verification(
            ok=False,
            records=max((line or 1) - 1, 0),
            head=None,
            first_bad_line=line,
            reason=str(exc),
        )
    except JournalError as exc:
        return Verification(ok=False, records=0, head=None, first_bad_line=None, reason=str(exc))
    records = reading.records
    count = len(records)

    def verdict(ok: bool, first_bad_line: int | None, reason: str | None, anchor: str | None = None) -> Verification:
        return Verification(
            ok=ok,
            records=count,
            head=reading.head,
            first_bad_line=first_bad_line,
            reason=reason,
            # Status deliveries are journaled after run.end, so run.end need not be last.
            complete=final_run_end(records) is not None,
            run_id=reading.run_id,
            plan_digest=reading.plan_digest,
            anchor=anchor,
            anchors_checked=tuple(a.source for a in anchors),
        )

    # Anchors first: a head is recorded only once its line is on disk, so a torn line that
    # an anchor covers was cut after the fact, not torn by a crash.
    for anchor in anchors:
        problem = _anchor_problem(records, anchor)
        if problem is not None:
            bad, why = problem
            return verdict(False, bad, f"line {bad}: {why}", anchor.source)
    if reading.torn is not None:
        bad = count + 1
        return verdict(
            False,
            bad,
            f"line {bad}: last line is torn (incomplete or unparsable): {reading.torn!r:.80}",
        )
    if not records:
        return verdict(False, None, f"journal is empty (no {RUN_START})")
    if plan_digest is not None and plan_digest != reading.plan_digest:
        return verdict(
            False,
            None,
            f"plan digest differs: the journal was written for {reading.plan_digest}, expected {plan_digest}",
        )
    if expect_head is not None and expect_head != reading.head:
        earlier = next((r.line_no for r in records if r.hash == expect_head), None)
        if earlier is not None:
            reason = (
                f"head is line {count}, but the expected head is line {earlier}: "
                f"lines {earlier + 1}-{count} were added after it"
            )
            bad = earlier + 1
        else:
            reason = (
                f"line {count}: head hash {reading.head} is not the expected {expect_head} "
                "(last line edited or removed)"
            )
            bad = count
        return verdict(False, bad, reason)
    return verdict(True, None, None)


# --- writing -------------------------------------------------------------------------------


class Journal:
    """An open journal that appends events to the chain; build it with create() or reopen()."""

    def __init__(
        self,
        *,
        path: Path,
        fd: int,
        run_id: str,
        plan_digest: str,
        seq: int,
        head: str,
        mono_base: float,
        clock: Callable[[], float],
        wall: Callable[[], float],
        recovered: JournalReading | None,
    ) -> None:
        self.path = path
        self.run_id = run_id
        self.plan_digest = plan_digest
        self.genesis = genesis_hash(run_id, plan_digest)
        self.recovered = recovered
        self._fd: int | None = fd
        self._seq = seq
        self._head = head
        self._mono_base = mono_base
        self._mono_last = mono_base
        self._clock = clock
        self._wall = wall
        self._t0 = clock()
        self._failed: str | None = None
        self._synced_seq = seq
        # Writers hold _lock only; a syncing thread takes _sync_lock, then _lock briefly,
        # so one fsync covers every line written before it (group commit).
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._head_fd: int | None = None

    @classmethod
    def create(
        cls,
        path: Path | str,
        *,
        run_id: str,
        plan_digest: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> Journal:
        """Create a new journal file (0600, in a 0700 directory); refuse if it exists."""
        path = Path(path)
        try:
            new_dirs = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if new_dirs:
                os.chmod(path.parent, 0o700)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, 0o600)
        except FileExistsError as exc:
            raise JournalError(f"journal {path} already exists; a run's journal is only continued by recover") from exc
        except OSError as exc:
            raise JournalError(f"cannot create journal {path}: {exc}") from exc
        try:
            os.fchmod(fd, 0o600)
            fsync_dir(path.parent)
            for directory in new_dirs:
                if directory.parent.exists():
                    fsync_dir(directory.parent)
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot make journal {path} durable: {exc}") from exc
        return cls(
            path=path,
            fd=fd,
            run_id=run_id,
            plan_digest=plan_digest,
            seq=0,
            head=genesis_hash(run_id, plan_digest),
            mono_base=0.0,
            clock=clock,
            wall=wall,
            recovered=None,
        )

    @classmethod
    def reopen(
        cls,
        path: Path | str,
        *,
        run_id: str,
        plan_digest: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> Journal:
        """Verify an existing journal, set aside a torn last line, and continue its chain."""
        path = Path(path)
        reading = read_journal(path)
        if reading.run_id is not None and reading.run_id != run_id:
            raise JournalError(f"journal {path} belongs to run {reading.run_id}, not {run_id}")
        if reading.plan_digest is not None and reading.plan_digest != plan_digest:
            raise Refused(
                f"plan digest differs: run {run_id} was started with plan {reading.plan_digest}, "
                f"this plan is {plan_digest}; refusing to continue its journal"
            )
        if reading.torn_offset is not None:
            _set_aside_torn(path, _read_no_follow(path)[reading.torn_offset :], reading.torn_offset)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise JournalError(f"cannot open journal {path} for appending: {exc}") from exc
        records = reading.records
        journal = cls(
            path=path,
            fd=fd,
            run_id=run_id,
            plan_digest=plan_digest,
            seq=len(records),
            head=reading.head or genesis_hash(run_id, plan_digest),
            mono_base=records[-1].mono if records else 0.0,
            clock=clock,
            wall=wall,
            recovered=reading,
        )
        # a run continued by recover is open again: the head file must stop saying "closed"
        journal._write_head(journal.seq, journal.head, closed=False)
        return journal

    @property
    def head(self) -> str:
        """Hash of the last line written (the genesis hash while the journal is empty)."""
        return self._head

    @property
    def seq(self) -> int:
        """Sequence number of the last line written (0 while empty)."""
        return self._seq

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._fd is None

    def append(self, event: Event, *, sync: bool = False) -> Record:
        """Write one event as the next line; with sync, it is on disk when this returns."""
        with self._lock:
            fd = self._usable_fd()
            seq = self._seq + 1
            if seq == 1:
                self._check_run_start(event)
            mono = round(self._mono_base + (self._clock() - self._t0), 3)
            mono = max(mono, self._mono_last)
            obj: dict[str, Any] = {
                "seq": seq,
                "ts": _utc_ms(self._wall()),
                "mono": mono,
                "kind": event.kind,
                "wave": event.wave,
                "host": event.host,
                "step": event.step,
                "outcome": event.outcome,
                "data": event.data,
                "prev": self._head,
            }
            problem = _event_type_problem(obj)
            if problem:
                raise JournalError(f"event {event.kind!r} cannot be journaled: {problem}")
            payload = _encode_line(obj)
            digest = _sha256(payload)
            try:
                written = os.write(fd, payload + b"\n")
            except OSError as exc:
                raise self._fail(f"cannot write journal line {seq}: {exc}") from exc
            if written != len(payload) + 1:
                raise self._fail(f"short write of journal line {seq} ({written} of {len(payload) + 1} bytes)")
            prev, self._seq, self._head, self._mono_last = self._head, seq, digest, mono
        if sync:
            self._sync_through(seq)
        data = json.loads(payload)["data"]
        return Record(
            seq=seq,
            ts=obj["ts"],
            mono=mono,
            kind=event.kind,
            wave=event.wave,
            host=event.host,
            step=event.step,
            outcome=event.outcome,
            data=data,
            prev=prev,
            hash=digest,
            line_no=seq,
        )

    def sync(self) -> None:
        """Make every line written so far durable."""
        self._sync_through(self._seq)

    def close(self) -> None:
        """Make every line durable, seal the head file, close the file; safe to call twice."""
        if self._fd is not None and self._failed is None:
            # a failure is recorded in the journal object; the head file keeps the last durable line
            with contextlib.suppress(JournalError):
                self._sync_through(self._seq, closing=True)
        with self._sync_lock, self._lock:
            self._close_head_fd()
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _usable_fd(self) -> int:
        if self._failed is not None:
            raise JournalError(f"journal {self.path} refuses appends after: {self._failed}")
        if self._fd is None:
            raise JournalError(f"journal {self.path} is closed")
        return self._fd

    def _check_run_start(self, event: Event) -> None:
        if (
            event.kind != RUN_START
            or event.data.get("run_id") != self.run_id
            or event.data.get("plan_digest") != self.plan_digest
        ):
            raise JournalError(
                f"the first event must be {RUN_START} with data run_id={self.run_id!r} and "
                f"plan_digest={self.plan_digest!r}, got {event.kind!r}"
            )

    def _fail(self, message: str) -> JournalError:
        self._failed = message
        return JournalError(f"journal {self.path}: {message}")

    def _sync_through(self, seq: int, *, closing: bool = False) -> None:
        with self._sync_lock:
            if self._synced_seq >= seq and not closing:
                return  # an fsync that started after this line was written covered it
            with self._lock:
                fd = self._usable_fd()
                target, head = self._seq, self._head
            try:
                os.fsync(fd)
            except OSError as exc:
                with self._lock:
                    raise self._fail(f"cannot fsync journal up to line {target}: {exc}") from exc
            self._synced_seq = target
            self._write_head(target, head, closed=closing)

    def _write_head(self, seq: int, head: str, *, closed: bool) -> None:
        """Record the durable head outside the journal, so that cutting its tail is seen.

        While the run goes on, the head file is overwritten in place (one fixed-size
        pwrite, no fsync): a temporary file and a rename per synced event made every
        journal fsync commit that metadata too, which doubled the cost of a step. An older
        head after a crash is still true (the journal may only be longer), and the line it
        names is already fsynced. The closing head is written atomically and durably.
        """
        if seq == 0:
            return
        doc = {"run_id": self.run_id, "seq": seq, "hash": head, "closed": closed}
        text = json.dumps(doc, separators=(",", ":"))
        try:
            if closed:
                self._close_head_fd()
                write_atomic(head_path(self.path), text + "\n", sync_dir=False)
                return
            if self._head_fd is None:
                self._head_fd = os.open(
                    head_path(self.path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                )
                os.ftruncate(self._head_fd, _HEAD_RECORD)
            record = text.ljust(_HEAD_RECORD - 1).encode() + b"\n"
            if os.pwrite(self._head_fd, record, 0) != len(record):
                raise OSError(errno.ENOSPC, "short write of the head file")
        except OSError as exc:
            with self._lock:
                raise self._fail(f"cannot write the head file after line {seq}: {exc}") from exc

    def _close_head_fd(self) -> None:
        fd, self._head_fd = self._head_fd, None
        if fd is not None:
            os.close(fd)
