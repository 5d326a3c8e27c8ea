"""Every verdict `verify_journal` can give, field by field, in the order its checks run.

The verdict is what `rollout verify` prints and what decides exit code 5, so each branch
is pinned whole (not just `ok`): the line named, the exact reason, which anchor disagreed,
and whether the run counts as complete.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.journal import Anchor, Record, Verification, verify_journal
from tests.test_journal import DIGEST, RUN_ID, lines_of, write_journal

OTHER = "cd" * 32


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, list[Record]]:
    path = tmp_path / "journal.jsonl"
    return path, write_journal(path, lines=6)


def test_an_intact_journal_verifies_with_every_anchor_it_was_given(written: tuple[Path, list[Record]]) -> None:
    path, records = written
    anchors = (Anchor("report", 6, records[5].hash, final=True), Anchor("status", 3, records[2].hash))

    result = verify_journal(path, plan_digest=DIGEST, expect_head=records[5].hash, anchors=anchors)

    assert result == Verification(
        ok=True,
        records=6,
        head=records[5].hash,
        first_bad_line=None,
        reason=None,
        complete=True,
        run_id=RUN_ID,
        plan_digest=DIGEST,
        anchor=None,
        anchors_checked=("report", "status"),
    )


def test_an_anchor_beyond_the_end_names_the_lines_cut_off(written: tuple[Path, list[Record]]) -> None:
    path, records = written
    path.write_bytes(b"".join(lines_of(path)[:4]))

    result = verify_journal(path, anchors=(Anchor("head file h", 6, records[5].hash),))

    assert (result.ok, result.records, result.first_bad_line, result.anchor) == (False, 4, 5, "head file h")
    assert result.reason == "line 5: the journal ends at line 4, but the head file h records line 6: lines 5-6 cut off"
    assert not result.complete
    assert result.anchors_checked == ("head file h",)


def test_an_anchor_one_past_the_end_names_the_single_line_cut_off(written: tuple[Path, list[Record]]) -> None:
    path, records = written
    path.write_bytes(b"".join(lines_of(path)[:5]))

    result = verify_journal(path, anchors=(Anchor("report", 6, records[5].hash),))

    assert result.reason == "line 6: the journal ends at line 5, but the report records line 6: line 6 cut off"


def test_an_anchor_with_another_hash_names_its_line_as_replaced(written: tuple[Path, list[Record]]) -> None:
    path, records = written

    result = verify_journal(path, anchors=(Anchor("ok", 2, records[1].hash), Anchor("status", 3, "0" * 64)))

    assert (result.ok, result.first_bad_line, result.anchor) == (False, 3, "status")
    assert result.reason == (
        f"line 3: its hash {records[2].hash[:16]} is not {'0' * 16} as the status records (line 3 edited or replaced)"
    )
    assert result.complete
    assert result.head == records[5].hash


def test_lines_after_a_final_anchor_are_named_as_added(written: tuple[Path, list[Record]]) -> None:
    path, records = written

    result = verify_journal(path, anchors=(Anchor("head file h", 4, records[3].hash, final=True),))

    assert (result.ok, result.first_bad_line, result.anchor) == (False, 5, "head file h")
    assert result.reason == (
        "line 5: the head file h says the journal was closed at line 4, but lines 5-6 follow it (added afterwards)"
    )


def test_an_anchor_is_checked_before_the_torn_tail(written: tuple[Path, list[Record]]) -> None:
    path, records = written
    path.write_bytes(path.read_bytes()[:-5])

    cut = verify_journal(path, anchors=(Anchor("report", 6, records[5].hash),))
    torn = verify_journal(path)

    assert cut.anchor == "report"
    assert cut.reason == "line 6: the journal ends at line 5, but the report records line 6: line 6 cut off"
    assert (torn.ok, torn.records, torn.first_bad_line, torn.anchor) == (False, 5, 6, None)
    assert torn.reason is not None
    assert torn.reason.startswith("line 6: last line is torn (incomplete or unparsable): '{")
    assert torn.head == records[4].hash


def test_a_torn_tail_is_reported_before_a_plan_digest_mismatch(written: tuple[Path, list[Record]]) -> None:
    path, _ = written
    path.write_bytes(path.read_bytes()[:-1])

    result = verify_journal(path, plan_digest=OTHER)

    assert result.reason is not None
    assert result.reason.startswith("line 6: last line is torn")


def test_a_journal_of_only_a_torn_line_is_torn_not_empty(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"seq":1')

    result = verify_journal(path)

    assert result == Verification(
        ok=False,
        records=0,
        head=None,
        first_bad_line=1,
        reason="line 1: last line is torn (incomplete or unparsable): '{\"seq\":1'",
    )


def test_an_empty_journal_names_no_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b"")

    result = verify_journal(path, plan_digest=DIGEST, anchors=(Anchor("report", 0, "0" * 64),))

    assert result == Verification(
        ok=False,
        records=0,
        head=None,
        first_bad_line=None,
        reason="journal is empty (no run.start)",
        anchors_checked=("report",),
    )


def test_another_plan_digest_is_named_before_the_expected_head(written: tuple[Path, list[Record]]) -> None:
    path, _ = written

    result = verify_journal(path, plan_digest=OTHER, expect_head="0" * 64)

    assert (result.ok, result.first_bad_line, result.complete) == (False, None, True)
    assert result.reason == f"plan digest differs: the journal was written for {DIGEST}, expected {OTHER}"


def test_an_expected_head_found_earlier_names_the_lines_added_after_it(written: tuple[Path, list[Record]]) -> None:
    path, records = written

    result = verify_journal(path, expect_head=records[1].hash)

    assert (result.ok, result.first_bad_line, result.anchor) == (False, 3, None)
    assert result.reason == "head is line 6, but the expected head is line 2: lines 3-6 were added after it"


def test_an_expected_head_found_nowhere_names_the_last_line(written: tuple[Path, list[Record]]) -> None:
    path, records = written

    result = verify_journal(path, expect_head="0" * 64)

    assert (result.ok, result.first_bad_line) == (False, 6)
    assert result.reason == (
        f"line 6: head hash {records[5].hash} is not the expected {'0' * 64} (last line edited or removed)"
    )


def test_a_corrupt_line_counts_the_lines_before_it(written: tuple[Path, list[Record]]) -> None:
    path, _ = written
    lines = lines_of(path)
    lines[2] = b"not json\n"
    path.write_bytes(b"".join(lines))

    result = verify_journal(path, anchors=(Anchor("report", 1, "0" * 64),))

    assert result == Verification(
        ok=False,
        records=2,
        head=None,
        first_bad_line=3,
        reason="line 3: not valid JSON (Expecting value: line 1 column 1 (char 0))",
    )


def test_an_unreadable_journal_names_no_line(tmp_path: Path) -> None:
    result = verify_journal(tmp_path / "missing.jsonl")

    assert (result.ok, result.records, result.head, result.first_bad_line) == (False, 0, None, None)
    assert result.reason is not None
    assert result.reason.startswith(f"cannot read journal {tmp_path / 'missing.jsonl'}: ")
