"""The journal's hash chain, on real files and real processes."""

from __future__ import annotations

import errno
import functools
import json
import os
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.errors import JournalCorrupt, JournalError, Refused
from rollout.journal import (
    Event,
    Journal,
    Record,
    event_from_dict,
    event_to_dict,
    final_run_end,
    genesis_hash,
    read_head_file,
    read_journal,
    verify_journal,
)

RUN_ID = "20261123T223000Z-a1b2"
DIGEST = "ab" * 32
REPO = Path(__file__).resolve().parents[1]


def start_event() -> Event:
    return Event("run.start", data={"run_id": RUN_ID, "plan_digest": DIGEST, "env": "prod"})


def write_journal(path: Path, *, lines: int = 6, end: bool = True) -> list[Record]:
    """A journal of `lines` lines: run.start, intents and results, and run.end if `end`."""
    records = []
    with Journal.create(path, run_id=RUN_ID, plan_digest=DIGEST) as journal:
        records.append(journal.append(start_event(), sync=True))
        for i in range(lines - 1 - int(end)):
            kind = "step.intent" if i % 2 == 0 else "step.result"
            records.append(
                journal.append(
                    Event(kind, wave=1, host=f"web-{i}", step="upgrade", data={"exit": 0}),
                    sync=kind == "step.intent",
                )
            )
        if end:
            records.append(journal.append(Event("run.end", outcome="ok"), sync=True))
    return records


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "runs" / RUN_ID / "journal.jsonl"


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# --- writing and reading -----------------------------------------------------------------


def test_appended_events_read_back_identically(journal_path: Path) -> None:
    written = write_journal(journal_path)
    reading = read_journal(journal_path)
    assert reading.records == tuple(written)
    assert reading.head == written[-1].hash
    assert reading.torn is None
    assert (reading.run_id, reading.plan_digest) == (RUN_ID, DIGEST)


def test_line_format_is_compact_json_with_keys_in_order(journal_path: Path) -> None:
    write_journal(journal_path)
    first = lines_of(journal_path)[0]
    obj = json.loads(first)
    assert list(obj) == [
        "seq", "ts", "mono", "kind", "wave", "host", "step", "outcome", "data", "prev",
    ]  # fmt: skip
    assert obj["seq"] == 1
    assert obj["prev"] == genesis_hash(RUN_ID, DIGEST)
    assert b", " not in first
    assert b'": ' not in first
    assert obj["ts"].endswith("Z")
    assert len(obj["ts"]) == len("2026-11-23T22:30:00.123Z")


def test_record_to_dict_reencodes_to_the_exact_line(journal_path: Path) -> None:
    write_journal(journal_path)
    for raw, record in zip(lines_of(journal_path), read_journal(journal_path).records, strict=True):
        again = json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":"))
        assert again.encode() + b"\n" == raw


def test_event_dict_round_trip() -> None:
    event = Event("step.result", wave=2, host="db-1", step="migrate", outcome="failed", data={"a": 1})
    assert event_from_dict(event_to_dict(event)) == event
    assert event_from_dict({"kind": "run.end", "seq": 9}) == Event("run.end")
    with pytest.raises(ValueError, match="wave"):
        event_from_dict({"kind": "x", "wave": "one"})


def test_non_ascii_and_undecodable_output_is_kept(journal_path: Path) -> None:
    with Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST) as journal:
        journal.append(start_event())
        journal.append(Event("step.result", data={"out": "ordre annulé ✓"}))
        journal.append(Event("step.result", data={"out": b"\xff".decode("utf-8", "surrogateescape")}))
    records = read_journal(journal_path).records
    assert records[1].data["out"] == "ordre annulé ✓"
    assert records[2].data["out"] == "\udcff"
    assert "annulé".encode() in journal_path.read_bytes()


def test_mono_is_offset_since_open_and_ts_is_utc_milliseconds(journal_path: Path) -> None:
    ticks = iter([100.0, 100.0, 100.5, 102.25])
    with Journal.create(
        journal_path,
        run_id=RUN_ID,
        plan_digest=DIGEST,
        clock=lambda: next(ticks),
        wall=lambda: 1795473000.1239,
    ) as journal:
        first = journal.append(start_event())
        second = journal.append(Event("step.intent"))
        third = journal.append(Event("step.result"))
    assert (first.mono, second.mono, third.mono) == (0.0, 0.5, 2.25)
    assert first.ts == "2026-11-23T22:30:00.123Z"


def test_first_event_must_be_run_start_of_this_run(journal_path: Path) -> None:
    with Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST) as journal:
        with pytest.raises(JournalError, match=r"run\.start"):
            journal.append(Event("step.intent"))
        with pytest.raises(JournalError, match="plan_digest"):
            journal.append(Event("run.start", data={"run_id": RUN_ID, "plan_digest": "other"}))
        assert journal.append(start_event()).seq == 1


def test_unserialisable_event_is_refused_without_breaking_the_journal(journal_path: Path) -> None:
    with Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST) as journal:
        journal.append(start_event())
        with pytest.raises(JournalError, match="cannot be journaled"):
            journal.append(Event("step.result", data={"path": Path("/etc")}))
        with pytest.raises(JournalError, match="cannot be journaled"):
            journal.append(Event("step.result", data={"value": float("nan")}))
        assert journal.append(Event("step.result")).seq == 2
    assert verify_journal(journal_path).ok


def test_create_refuses_an_existing_journal(journal_path: Path) -> None:
    write_journal(journal_path)
    before = journal_path.read_bytes()
    with pytest.raises(JournalError, match="already exists"):
        Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST)
    assert journal_path.read_bytes() == before


def test_journal_is_private_to_its_owner(journal_path: Path) -> None:
    old = os.umask(0)
    try:
        write_journal(journal_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(journal_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal_path.parent.stat().st_mode) == 0o700


def test_concurrent_appends_form_one_valid_chain(journal_path: Path) -> None:
    threads, per_thread = 8, 200
    with Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST) as journal:
        journal.append(start_event(), sync=True)
        barrier = threading.Barrier(threads)

        def worker(n: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                journal.append(Event("step.intent", host=f"h{n}", data={"i": i}), sync=i % 10 == 0)

        pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        journal.append(Event("run.end", outcome="ok"), sync=True)
    result = verify_journal(journal_path)
    assert result.ok
    assert result.complete
    records = read_journal(journal_path).records
    assert [r.seq for r in records] == list(range(1, threads * per_thread + 3))
    monos = [r.mono for r in records]
    assert monos == sorted(monos)


def test_sync_append_is_fsynced_before_it_returns(journal_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST)
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        # only the journal's own fsyncs (the head file beside it is fsynced too)
        if os.fstat(fd).st_ino == journal_path.stat().st_ino:
            synced.append(journal_path.stat().st_size)
        real_fsync(fd)

    monkeypatch.setattr("rollout.journal.writer.os.fsync", recording_fsync)
    journal.append(start_event())
    assert synced == []
    journal.append(Event("step.intent", host="web-1", step="upgrade"), sync=True)
    assert synced == [journal_path.stat().st_size]
    journal.close()


def test_write_error_raises_and_refuses_further_appends(journal_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST)
    journal.append(start_event(), sync=True)

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("rollout.journal.writer.os.write", disk_full)
    with pytest.raises(JournalError, match="No space left"):
        journal.append(Event("step.intent"), sync=True)
    monkeypatch.undo()
    with pytest.raises(JournalError, match="refuses appends"):
        journal.append(Event("step.intent"))
    journal.close()
    assert verify_journal(journal_path).records == 1


def test_fsync_error_raises_and_refuses_further_appends(journal_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST)
    journal.append(start_event())

    def io_error(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("rollout.journal.writer.os.fsync", io_error)
    with pytest.raises(JournalError, match="fsync"):
        journal.append(Event("step.intent"), sync=True)
    monkeypatch.undo()
    with pytest.raises(JournalError, match="refuses appends"):
        journal.append(Event("step.intent"))
    journal.close()


def test_short_write_is_a_failure(journal_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST)
    journal.append(start_event())
    real_write = os.write
    monkeypatch.setattr("rollout.journal.writer.os.write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(JournalError, match="short write"):
        journal.append(Event("step.intent"))
    monkeypatch.undo()
    with pytest.raises(JournalError, match="refuses appends"):
        journal.append(Event("step.intent"))
    journal.close()
    assert read_journal(journal_path).torn is not None


def test_write_to_a_lost_file_descriptor_raises(journal_path: Path) -> None:
    journal = Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST)
    journal.append(start_event())
    fd = journal._fd
    assert fd is not None
    os.close(fd)
    with pytest.raises(JournalError, match="cannot write journal line 2"):
        journal.append(Event("step.intent"))
    journal._fd = None  # already closed above


def test_close_twice_is_safe_and_appending_after_close_is_refused(journal_path: Path) -> None:
    journal = Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST)
    journal.append(start_event())
    journal.close()
    journal.close()
    assert journal.closed
    with pytest.raises(JournalError, match="closed"):
        journal.append(Event("step.intent"))


# --- tamper detection ----------------------------------------------------------------------


def edit_data_byte(lines: list[bytes], n: int) -> list[bytes]:
    """Change one character inside line n's host name: still valid JSON, same keys."""
    line = lines[n - 1]
    at = line.index(b'"host":') + len(b'"host":"')
    if line[at - 1 : at] != b'"':  # host is null on this line: edit the timestamp instead
        at = line.index(b'"ts":"') + len(b'"ts":"2026-11-2')
    lines[n - 1] = line[:at] + (b"X" if line[at : at + 1] != b"X" else b"Y") + line[at + 1 :]
    return lines


def delete_line(lines: list[bytes], n: int) -> list[bytes]:
    return lines[: n - 1] + lines[n:]


def swap_lines(lines: list[bytes], n: int) -> list[bytes]:
    lines[n - 1], lines[n] = lines[n], lines[n - 1]
    return lines


def insert_copy(lines: list[bytes], n: int) -> list[bytes]:
    return [*lines[: n - 1], lines[1], *lines[n - 1 :]]


def break_json(lines: list[bytes], n: int) -> list[bytes]:
    lines[n - 1] = lines[n - 1].replace(b'"seq":', b'"seq"', 1)
    return lines


@pytest.mark.parametrize(
    ("damage", "n", "bad_line", "reason"),
    [
        (edit_data_byte, 1, 1, "line 1 edited"),
        (edit_data_byte, 3, 3, "line 3 edited"),
        (edit_data_byte, 5, 5, "line 5 edited"),
        (break_json, 4, 4, "not valid JSON"),
        (delete_line, 1, 1, "seq is 2, expected 1"),
        (delete_line, 3, 3, "seq is 4, expected 3"),
        (delete_line, 5, 5, "seq is 6, expected 5"),
        (swap_lines, 2, 2, "seq is 3, expected 2"),
        (swap_lines, 5, 5, "seq is 6, expected 5"),
        (insert_copy, 4, 4, "seq is 2, expected 4"),
        (insert_copy, 7, 7, "seq is 2, expected 7"),
    ],
)
def test_tampering_is_detected_at_the_right_line(
    journal_path: Path, damage: object, n: int, bad_line: int, reason: str
) -> None:
    write_journal(journal_path, lines=6)
    assert callable(damage)
    journal_path.write_bytes(b"".join(damage(lines_of(journal_path), n)))
    result = verify_journal(journal_path)
    assert not result.ok
    assert result.first_bad_line == bad_line
    assert result.reason is not None
    assert reason in result.reason
    assert result.reason.startswith(f"line {bad_line}: ")
    with pytest.raises(JournalCorrupt) as caught:
        read_journal(journal_path)
    assert caught.value.line == bad_line


def test_a_forged_prev_is_named_as_a_chain_break(journal_path: Path) -> None:
    write_journal(journal_path, lines=8)
    lines = lines_of(journal_path)
    obj = json.loads(lines[6])
    obj["prev"] = "0" * 64
    lines[6] = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    journal_path.write_bytes(b"".join(lines))
    result = verify_journal(journal_path)
    assert result.first_bad_line == 7
    assert result.reason == ("line 7: prev does not match the hash of line 6 (edited, removed or reordered line)")


@pytest.mark.parametrize("cut", [1, 2, 40, -1])
def test_truncated_last_line_is_not_ok_and_named(journal_path: Path, cut: int) -> None:
    """Cut `cut` bytes off the end (only the newline, ..., all of line 6 but one byte)."""
    write_journal(journal_path, lines=6)
    data = journal_path.read_bytes()
    if cut < 0:
        cut = len(lines_of(journal_path)[-1]) - 1
    journal_path.write_bytes(data[:-cut])
    result = verify_journal(journal_path)
    assert not result.ok
    assert result.first_bad_line == 6
    assert result.reason is not None
    assert result.reason.startswith("line 6: last line is torn")
    assert read_journal(journal_path).torn is not None


def test_deleted_last_line_shows_as_incomplete_and_fails_the_head_check(
    journal_path: Path,
) -> None:
    records = write_journal(journal_path, lines=6)
    full = verify_journal(journal_path, expect_head=records[-1].hash)
    assert full.ok
    assert full.complete
    assert full.head == records[-1].hash
    journal_path.write_bytes(b"".join(lines_of(journal_path)[:-1]))
    shortened = verify_journal(journal_path)
    assert shortened.ok
    assert not shortened.complete
    checked = verify_journal(journal_path, expect_head=records[-1].hash)
    assert not checked.ok
    assert checked.first_bad_line == 5


def test_edited_last_line_is_caught_by_the_head_check(journal_path: Path) -> None:
    records = write_journal(journal_path, lines=6)
    lines = lines_of(journal_path)
    lines[-1] = lines[-1].replace(b'"outcome":"ok"', b'"outcome":"no"')
    journal_path.write_bytes(b"".join(lines))
    result = verify_journal(journal_path, expect_head=records[-1].hash)
    assert not result.ok
    assert result.first_bad_line == 6


def test_lines_appended_after_the_expected_head_are_named(journal_path: Path) -> None:
    records = write_journal(journal_path, lines=6)
    result = verify_journal(journal_path, expect_head=records[3].hash)
    assert not result.ok
    assert result.reason is not None
    assert "lines 5-6 were added" in result.reason


def test_plan_digest_must_match_when_given(journal_path: Path) -> None:
    write_journal(journal_path)
    assert verify_journal(journal_path, plan_digest=DIGEST).ok
    result = verify_journal(journal_path, plan_digest="cd" * 32)
    assert not result.ok
    assert result.reason is not None
    assert "plan digest differs" in result.reason


def test_journal_of_another_plan_does_not_verify_as_this_one(journal_path: Path) -> None:
    write_journal(journal_path)
    lines = lines_of(journal_path)
    lines[0] = lines[0].replace(DIGEST.encode(), b"cd" * 32)
    journal_path.write_bytes(b"".join(lines))
    result = verify_journal(journal_path)
    assert not result.ok
    assert result.first_bad_line == 1
    assert result.reason is not None
    assert "genesis" in result.reason


def test_the_last_run_end_is_the_outcome_and_a_recover_in_progress_is_not_an_end(journal_path: Path) -> None:
    write_journal(journal_path, lines=4, end=False)
    with Journal.reopen(journal_path, run_id=RUN_ID, plan_digest=DIGEST) as journal:
        journal.append(Event("run.end", outcome="rollback_failed"), sync=True)
        journal.append(Event("notify.delivery", outcome="delivered"), sync=True)
        reading = read_journal(journal_path)
        end = final_run_end(reading.records)
        assert end is not None
        assert end.outcome == "rollback_failed"
        assert verify_journal(journal_path).complete

        journal.append(Event("recover.start", data={"run_id": RUN_ID}), sync=True)
        assert final_run_end(read_journal(journal_path).records) is None
        assert not verify_journal(journal_path).complete  # a recover began and has not ended

        journal.append(Event("run.end", outcome="rolled_back"), sync=True)
    end = final_run_end(read_journal(journal_path).records)
    assert end is not None
    assert end.outcome == "rolled_back"
    assert verify_journal(journal_path).complete


def test_missing_or_empty_journal_is_not_ok(tmp_path: Path) -> None:
    missing = verify_journal(tmp_path / "nope.jsonl")
    assert not missing.ok
    assert missing.reason is not None
    assert "cannot read" in missing.reason
    (tmp_path / "empty.jsonl").write_bytes(b"")
    empty = verify_journal(tmp_path / "empty.jsonl")
    assert not empty.ok
    assert empty.reason == "journal is empty (no run.start)"


@functools.cache
def sample_journal() -> tuple[bytes, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.jsonl"
        head = write_journal(path, lines=5)[-1].hash
        return path.read_bytes(), head


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.floats(min_value=0, max_value=1, exclude_max=True), delta=st.integers(1, 255))
def test_any_single_byte_change_is_detected(position: float, delta: int) -> None:
    data, head = sample_journal()
    at = int(position * len(data))
    changed = bytearray(data)
    changed[at] = (changed[at] + delta) % 256
    line_no = data[:at].count(b"\n") + 1
    last_line = data.count(b"\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.jsonl"
        path.write_bytes(bytes(changed))
        assert not verify_journal(path, expect_head=head).ok
        if line_no < last_line:  # the last line is protected by the head hash only
            result = verify_journal(path)
            assert not result.ok
            assert result.first_bad_line in (line_no, line_no + 1)


# --- recovery ------------------------------------------------------------------------------


def test_reopen_sets_a_torn_line_aside_and_continues_the_chain(journal_path: Path) -> None:
    records = write_journal(journal_path, lines=5, end=False)
    torn = b'{"seq":6,"ts":"2026-11-23T22:3'
    with journal_path.open("ab") as handle:
        handle.write(torn)
    size_before_tear = journal_path.stat().st_size - len(torn)

    ticks = iter([50.0, 50.0, 51.0])
    journal = Journal.reopen(journal_path, run_id=RUN_ID, plan_digest=DIGEST, clock=lambda: next(ticks))
    assert journal.recovered is not None
    assert journal.recovered.torn is not None
    assert journal.head == records[-1].hash
    assert journal.seq == 5
    resumed = journal.append(Event("rollback.intent", host="web-0"), sync=True)
    journal.append(Event("run.end", outcome="rolled_back"), sync=True)
    journal.close()

    assert resumed.seq == 6
    assert resumed.prev == records[-1].hash
    assert resumed.mono >= records[-1].mono
    result = verify_journal(journal_path)
    assert result.ok
    assert result.complete
    assert result.records == 7
    broken = journal_path.with_name("journal.jsonl.broken")
    entry = json.loads(broken.read_bytes())
    assert entry["offset"] == size_before_tear
    assert entry["text"] == torn.decode()
    assert stat.S_IMODE(broken.stat().st_mode) == 0o600


def test_reading_without_repair_never_touches_the_files(journal_path: Path) -> None:
    write_journal(journal_path, lines=4, end=False)
    with journal_path.open("ab") as handle:
        handle.write(b'{"seq":5')
    before = journal_path.read_bytes()
    reading = read_journal(journal_path)
    assert reading.torn == '{"seq":5'
    assert len(reading.records) == 4
    assert journal_path.read_bytes() == before
    assert not journal_path.with_name("journal.jsonl.broken").exists()
    read_journal(journal_path, repair=True)
    assert journal_path.read_bytes() == before[: -len(b'{"seq":5')]


def test_reopen_refuses_a_corrupt_journal(journal_path: Path) -> None:
    write_journal(journal_path, lines=6, end=False)
    journal_path.write_bytes(b"".join(delete_line(lines_of(journal_path), 3)))
    with pytest.raises(JournalCorrupt, match="line 3: seq is 4"):
        Journal.reopen(journal_path, run_id=RUN_ID, plan_digest=DIGEST)


def test_reopen_refuses_another_plan_digest(journal_path: Path) -> None:
    write_journal(journal_path, lines=3, end=False)
    with pytest.raises(Refused, match="plan digest differs"):
        Journal.reopen(journal_path, run_id=RUN_ID, plan_digest="cd" * 32)
    with pytest.raises(JournalError, match="belongs to run"):
        Journal.reopen(journal_path, run_id="other-run", plan_digest=DIGEST)


def test_reopen_of_an_empty_journal_expects_run_start(journal_path: Path) -> None:
    Journal.create(journal_path, run_id=RUN_ID, plan_digest=DIGEST).close()
    with Journal.reopen(journal_path, run_id=RUN_ID, plan_digest=DIGEST) as journal:
        assert journal.head == genesis_hash(RUN_ID, DIGEST)
        journal.append(start_event(), sync=True)
    assert verify_journal(journal_path).ok


def test_a_running_journal_keeps_its_head_file_at_the_last_synced_line(tmp_path: Path) -> None:
    """While a run goes on (before close), the head file names the last fsynced line, so a
    journal cut below it after a crash is caught; and the in-place head reads back whole."""
    path = tmp_path / "journal.jsonl"
    journal = Journal.create(path, run_id=RUN_ID, plan_digest=DIGEST)
    try:
        journal.append(start_event(), sync=True)
        for i in range(5):
            record = journal.append(Event("step.intent", host="h1", step=f"s{i}"), sync=True)
            anchor = read_head_file(path)
            assert anchor is not None
            assert (anchor.seq, anchor.hash) == (record.seq, journal.head)
            assert not anchor.final
        journal.append(Event("step.result", host="h1", step="s4"))  # not synced: the head stays
        assert read_head_file(path).seq == record.seq  # type: ignore[union-attr]
        # the process dies here (no close): someone cuts the last two synced lines
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:-3]))
        result = verify_journal(path, anchors=(read_head_file(path),))  # type: ignore[arg-type]
        assert not result.ok
        assert "head file" in (result.anchor or "")
    finally:
        journal.close()
