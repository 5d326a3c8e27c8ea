"""Reading a journal: every complete line parsed, checked and chained, and a torn tail set aside.

`read_journal` recomputes the hash chain from the genesis hash and raises `JournalCorrupt`
naming the first bad line: an edited, inserted, removed or reordered line anywhere
before the last one; an edited line N is named as line N when line N+2 still chains to
line N+1. A last line without its newline or not parsable is torn (a crash mid-write):
it is reported, never used, and set aside only when repairing (recover), into
``journal.jsonl.broken``, durably, before it is cut from the journal. No complete line is
ever rewritten or dropped. A symbolic link at the journal's path is never followed.

Depends on the standard library, `rollout.atomic` (writing the set-aside copy),
`rollout.errors` (`JournalError`, `JournalCorrupt`) and `rollout.journal.format`.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rollout.atomic import fsync_dir, write_all
from rollout.errors import JournalCorrupt, JournalError
from rollout.journal.format import (
    RECOVER_START,
    RUN_END,
    RUN_START,
    Record,
    Unparsable,
    genesis_hash,
    parse_object,
    record_from_object,
    utc_ms,
)


@dataclass(frozen=True)
class JournalReading:
    """A journal read and verified up to its last complete line."""

    records: tuple[Record, ...]
    head: str | None
    torn: str | None
    torn_offset: int | None = None
    run_id: str | None = None
    plan_digest: str | None = None


def _run_identity(record: Record) -> tuple[str, str]:
    """run_id and plan_digest from line 1, which must be run.start carrying both."""
    if record.kind != RUN_START:
        raise JournalCorrupt(f"first event is {record.kind!r}, expected {RUN_START!r}", line=1)
    run_id, plan_digest = record.data.get("run_id"), record.data.get("plan_digest")
    if not isinstance(run_id, str) or not isinstance(plan_digest, str):
        raise JournalCorrupt(f"{RUN_START} data lacks run_id or plan_digest", line=1)
    return run_id, plan_digest


def read_no_follow(path: Path) -> bytes:
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
        data = read_no_follow(path)
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
                raise Unparsable("no newline at the end (torn write or truncation)")
            obj = parse_object(raw)
        except Unparsable as exc:
            if not last:
                raise JournalCorrupt(str(exc), line=line_no) from None
            torn = raw.decode("utf-8", "replace")
            torn_offset = offset
            break
        record = record_from_object(obj, raw, line_no)
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
        set_aside_torn(path, data[torn_offset:], torn_offset)
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
            following = parse_object(lines[line_no])
        except Unparsable:
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


def set_aside_torn(path: Path, raw: bytes, offset: int) -> None:
    """Copy a torn tail to journal.jsonl.broken (durably), then cut it from the journal."""
    broken = _broken_path(path)
    entry = {
        "journal": path.name,
        "offset": offset,
        "length": len(raw),
        "set_aside": utc_ms(time.time()),
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
