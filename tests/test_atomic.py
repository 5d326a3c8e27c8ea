"""write_atomic: the whole file or the old file, never a cut one, never a temporary left behind."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from rollout import atomic
from rollout.atomic import write_atomic


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_short_writes_are_continued_until_every_byte_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls: list[int] = []

    def short_write(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data)[:1000])  # at most 1000 bytes a call, like a nearly full disk

    monkeypatch.setattr(atomic.os, "write", short_write)
    target = tmp_path / "report.md"
    payload = bytes(range(256)) * 17  # 4352 bytes: more than one page
    write_atomic(target, payload)
    assert target.read_bytes() == payload
    assert len(calls) == 5
    assert _siblings(target) == ["report.md"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_disk_full_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.md"
    target.write_bytes(b"previous report\n")
    real_write = os.write
    state = {"calls": 0}

    def enospc_after_one_page(fd: int, data: bytes | memoryview) -> int:
        state["calls"] += 1
        if state["calls"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data)[:4096])

    monkeypatch.setattr(atomic.os, "write", enospc_after_one_page)
    with pytest.raises(OSError) as info:
        write_atomic(target, b"x" * 4319)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"previous report\n"
    assert _siblings(target) == ["report.md"]


def test_a_write_that_makes_no_progress_is_an_error_not_a_spin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic.os, "write", lambda fd, data: 0)
    target = tmp_path / "run.json"
    with pytest.raises(OSError) as info:
        write_atomic(target, b"{}")
    assert info.value.errno == errno.ENOSPC
    assert _siblings(target) == []


def test_fsync_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", eio)
    target = tmp_path / "head"
    with pytest.raises(OSError):
        write_atomic(target, b"7 abc\n")
    assert _siblings(target) == []


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_atomic(tmp_path / "private", b"a")
        write_atomic(tmp_path / "junit.xml", b"b", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "junit.xml").stat().st_mode) == 0o644


def test_report_on_a_full_disk_is_not_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The end-to-end shape of the bug: report.md cut to 4096 bytes and report.md.tmp left behind."""
    from rollout.report import incident
    from rollout.runstore import RunDir

    run = RunDir(tmp_path)
    monkeypatch.setattr(incident, "load_report", lambda r: None)
    monkeypatch.setattr(incident, "render_markdown", lambda report: "r" * 4319)
    real_write = os.write

    def page_at_a_time(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data)[:4096])

    monkeypatch.setattr(atomic.os, "write", page_at_a_time)
    incident.write_markdown_report(run)
    assert run.report.read_bytes() == b"r" * 4319
    assert _siblings(run.report) == ["report.md"]
