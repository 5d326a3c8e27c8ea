"""Anchors: a journal's head (line number and hash) kept outside the journal.

The hash chain cannot show removed *last* lines or an edited last line; an anchor can.
The writer keeps one in the ``head`` file beside the journal (see `writer`); the report,
the status notifications and the run's last terminal line (``SEQ:HASH``) carry others.
This module names the head file, reads anchors from it and from text, and says whether
a journal's records agree with an anchor. It never writes.

Depends on the standard library, `rollout.errors` (a malformed head file is a
`JournalCorrupt`) and `rollout.journal.format` (records and the digest pattern).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rollout.errors import JournalCorrupt, JournalError
from rollout.journal.format import HEX64, Record

HEAD_FILE: Final = "head"


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
    if not sep or not seq_text.isdigit() or int(seq_text) < 1 or not HEX64.fullmatch(digest):
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
    if not isinstance(seq, int) or not isinstance(digest, str) or not HEX64.fullmatch(digest):
        raise JournalCorrupt(f"head file {path} is malformed: seq or hash of the wrong type")
    return Anchor(f"head file {path}", seq, digest, final=closed is True)


def anchor_problem(records: tuple[Record, ...], anchor: Anchor) -> tuple[int, str] | None:
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
