"""Verifying a journal: whether it can be trusted, and if not, the first line that cannot.

`verify_journal` reads the journal (which checks the chain, see `reader`), then checks,
in this order, every anchor it is given, a torn last line, that there is a run at all,
the plan digest and the expected head, and turns the first disagreement into a
`Verification` that names the line and the reason. It never raises for a bad journal
and never changes a file.

Depends on the standard library, `rollout.errors` and the journal's `format`, `reader`
and `anchors` modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rollout.errors import JournalCorrupt, JournalError
from rollout.journal.anchors import Anchor, anchor_problem
from rollout.journal.format import RUN_START, Record
from rollout.journal.reader import JournalReading, final_run_end, read_journal


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
class _Distrust:
    """Why a readable journal cannot be trusted: the first bad line (if one), the reason, the anchor."""

    first_bad_line: int | None
    reason: str
    anchor: str | None = None


def verify_journal(
    path: Path | str,
    *,
    plan_digest: str | None = None,
    expect_head: str | None = None,
    anchors: tuple[Anchor, ...] = (),
    reading: JournalReading | JournalError | None = None,
) -> Verification:
    """Recompute the hash chain from the genesis, check it against every anchor given, and say whether it can be trusted.

    `reading` is what read_journal(path) returned or raised, when the caller already read
    the journal (to find its anchors): reading thousands of lines twice doubled the cost.
    """
    if reading is None:
        try:
            reading = read_journal(path)
        except JournalError as exc:
            reading = exc
    if isinstance(reading, JournalError):
        return _unreadable(reading)
    distrust = (
        # Anchors first: a head is recorded only once its line is on disk, so a torn line
        # that an anchor covers was cut after the fact, not torn by a crash.
        _disagreeing_anchor(reading.records, anchors)
        or _torn_tail(reading)
        or _no_run(reading)
        or _other_plan(reading, plan_digest)
        or _other_head(reading, expect_head)
    )
    return Verification(
        ok=distrust is None,
        records=len(reading.records),
        head=reading.head,
        first_bad_line=distrust.first_bad_line if distrust else None,
        reason=distrust.reason if distrust else None,
        # Status deliveries are journaled after run.end, so run.end need not be last.
        complete=final_run_end(reading.records) is not None,
        run_id=reading.run_id,
        plan_digest=reading.plan_digest,
        anchor=distrust.anchor if distrust else None,
        anchors_checked=tuple(a.source for a in anchors),
    )


def _unreadable(exc: JournalError) -> Verification:
    """The verdict on a journal that cannot be read: corrupt at a line, or not readable at all."""
    if isinstance(exc, JournalCorrupt):
        line = exc.line
        return Verification(
            ok=False,
            records=max((line or 1) - 1, 0),
            head=None,
            first_bad_line=line,
            reason=str(exc),
        )
    return Verification(ok=False, records=0, head=None, first_bad_line=None, reason=str(exc))


def _disagreeing_anchor(records: tuple[Record, ...], anchors: tuple[Anchor, ...]) -> _Distrust | None:
    """The first anchor, in the order given, that the journal disagrees with."""
    for anchor in anchors:
        problem = anchor_problem(records, anchor)
        if problem is not None:
            bad, why = problem
            return _Distrust(bad, f"line {bad}: {why}", anchor.source)
    return None


def _torn_tail(reading: JournalReading) -> _Distrust | None:
    """A last line that is incomplete or unparsable."""
    if reading.torn is None:
        return None
    bad = len(reading.records) + 1
    return _Distrust(bad, f"line {bad}: last line is torn (incomplete or unparsable): {reading.torn!r:.80}")


def _no_run(reading: JournalReading) -> _Distrust | None:
    """A journal without a single complete line."""
    if reading.records:
        return None
    return _Distrust(None, f"journal is empty (no {RUN_START})")


def _other_plan(reading: JournalReading, plan_digest: str | None) -> _Distrust | None:
    """A journal written for another plan than the one expected."""
    if plan_digest is None or plan_digest == reading.plan_digest:
        return None
    return _Distrust(
        None, f"plan digest differs: the journal was written for {reading.plan_digest}, expected {plan_digest}"
    )


def _other_head(reading: JournalReading, expect_head: str | None) -> _Distrust | None:
    """A journal whose head is not the one expected: lines added after it, or the last line edited or removed."""
    if expect_head is None or expect_head == reading.head:
        return None
    count = len(reading.records)
    earlier = next((r.line_no for r in reading.records if r.hash == expect_head), None)
    if earlier is not None:
        return _Distrust(
            earlier + 1,
            f"head is line {count}, but the expected head is line {earlier}: "
            f"lines {earlier + 1}-{count} were added after it",
        )
    return _Distrust(
        count,
        f"line {count}: head hash {reading.head} is not the expected {expect_head} (last line edited or removed)",
    )
