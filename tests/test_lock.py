"""The environment lock on real files and real processes: one run of a plan per environment."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.errors import JournalError, LockHeld
from rollout.lock import EnvironmentLock, LockHolder, force_unlock, read_lock_holder

REPO = Path(__file__).resolve().parents[1]

# --- the environment lock ------------------------------------------------------------------

HOLDER_SCRIPT = """
import sys, time
from rollout.lock import EnvironmentLock, LockHolder
lock = EnvironmentLock(sys.argv[1], "plan", "prod")
lock.acquire(LockHolder.current("run-in-child"))
print("locked", flush=True)
hold = float(sys.argv[2])
if hold < 0:
    sys.stdin.readline()
else:
    time.sleep(hold)
lock.release()
print("released", flush=True)
"""

CONTENDER_SCRIPT = """
import sys
from rollout.errors import LockHeld
from rollout.exits import exit_status_for
from rollout.lock import EnvironmentLock, LockHolder
try:
    EnvironmentLock(sys.argv[1], "plan", "prod").acquire(LockHolder.current("run-2"))
except LockHeld as exc:
    print(exc)
    sys.exit(int(exit_status_for(exc)))
"""


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture
def lock_holder_process(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the prod lock until its stdin gets a line."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(tmp_path), "-1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "locked\n"
    yield child
    child.kill()
    child.wait()


def test_second_acquire_in_another_process_fails_fast_naming_the_holder(tmp_path: Path) -> None:
    with EnvironmentLock(tmp_path, "plan", "prod") as lock:
        lock.acquire(LockHolder.current("run-1"))
        started = time.monotonic()
        contender = subprocess.run(
            [sys.executable, "-c", CONTENDER_SCRIPT, str(tmp_path)],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=30,
            check=False,
        )
        assert contender.returncode == 3, contender.stderr
        assert f"pid {os.getpid()}" in contender.stdout
        assert "run run-1" in contender.stdout
        assert "held for" in contender.stdout
        assert time.monotonic() - started < 10


def test_lock_held_by_a_live_process_is_refused_with_its_details(
    tmp_path: Path, lock_holder_process: subprocess.Popen[str]
) -> None:
    with pytest.raises(LockHeld) as caught:
        EnvironmentLock(tmp_path, "plan", "prod").acquire(LockHolder.current("run-2"))
    message = str(caught.value)
    assert f"pid {lock_holder_process.pid}" in message
    assert "run run-in-child" in message
    assert "lock id" in message


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path: Path, lock_holder_process: subprocess.Popen[str]) -> None:
    lock_holder_process.send_signal(signal.SIGKILL)
    lock_holder_process.wait()
    holder = LockHolder.current("run-after-crash")
    with EnvironmentLock(tmp_path, "plan", "prod") as lock:
        lock.acquire(holder)
        assert read_lock_holder(tmp_path, "plan", "prod") == holder


def test_acquire_with_timeout_waits_for_the_holder_to_release(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(tmp_path), "0.5"],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "locked\n"
        started = time.monotonic()
        with EnvironmentLock(tmp_path, "plan", "prod") as lock:
            lock.acquire(LockHolder.current("patient-run"), timeout=20, poll=0.02)
            waited = time.monotonic() - started
            assert lock.held
        assert 0.1 < waited < 20
    finally:
        child.kill()
        child.wait()


def test_acquire_with_a_short_timeout_gives_up(tmp_path: Path, lock_holder_process: subprocess.Popen[str]) -> None:
    started = time.monotonic()
    with pytest.raises(LockHeld):
        EnvironmentLock(tmp_path, "plan", "prod").acquire(LockHolder.current("r"), timeout=0.2, poll=0.05)
    assert 0.2 <= time.monotonic() - started < 5


def test_read_lock_holder_reports_the_live_holder_and_none_when_free(
    tmp_path: Path, lock_holder_process: subprocess.Popen[str]
) -> None:
    holder = read_lock_holder(tmp_path, "plan", "prod")
    assert holder is not None
    assert holder.pid == lock_holder_process.pid
    assert holder.run_id == "run-in-child"
    assert lock_holder_process.stdin is not None
    assert lock_holder_process.stdout is not None
    lock_holder_process.stdin.write("release\n")
    lock_holder_process.stdin.flush()
    assert lock_holder_process.stdout.readline() == "released\n"
    assert read_lock_holder(tmp_path, "plan", "prod") is None
    assert read_lock_holder(tmp_path, "plan", "staging") is None


def test_lock_file_is_private_and_release_is_idempotent(tmp_path: Path) -> None:
    lock = EnvironmentLock(tmp_path, "plan", "prod")
    holder = LockHolder.current("run-1")
    lock.acquire(holder)
    assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600
    assert json.loads(lock.path.read_text())["run_id"] == "run-1"
    lock.release()
    lock.release()
    # release never truncates: the file keeps who held it and says it was released, once
    lines = [json.loads(line) for line in lock.path.read_text().splitlines()]
    assert lines[0]["lock_id"] == holder.lock_id
    assert [line.get("released") for line in lines[1:]] == [holder.lock_id]
    assert read_lock_holder(tmp_path, "plan", "prod") is None


def test_two_lock_objects_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    with EnvironmentLock(tmp_path, "plan", "prod") as first:
        first.acquire(LockHolder.current("run-1"))
        with pytest.raises(LockHeld, match="run run-1"):
            EnvironmentLock(tmp_path, "plan", "prod").acquire(LockHolder.current("run-2"))
    EnvironmentLock(tmp_path, "plan", "prod").acquire(LockHolder.current("run-2"))


def test_environment_name_cannot_escape_the_locks_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid environment name"):
        EnvironmentLock(tmp_path, "plan", "../prod")


# --- readers never race takers; release keeps evidence; a failed re-open is clean ----------------

READER_SCRIPT = """
import json, sys, time
from rollout.errors import JournalError
from rollout.lock import read_lock_holder
lock_dir, iterations, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
free = 0
holders = []
errors = []
deadline = time.monotonic() + seconds
done = 0
while done < iterations and time.monotonic() < deadline:
    try:
        holder = read_lock_holder(lock_dir, "plan", "prod")
    except JournalError as exc:
        errors.append(str(exc))
    else:
        if holder is None:
            free += 1
        else:
            holders.append(holder.lock_id)
    done += 1
print(json.dumps({"done": done, "free": free, "holders": holders, "errors": errors}))
"""

TAKER_SCRIPT = """
import json, sys, time
from rollout.errors import LockHeld
from rollout.lock import EnvironmentLock, LockHolder
lock_dir, cycles, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
refused = []
lock_ids = []
deadline = time.monotonic() + seconds
done = 0
while done < cycles and time.monotonic() < deadline:
    lock = EnvironmentLock(lock_dir, "plan", "prod")
    holder = LockHolder.current("cycler")
    try:
        lock.acquire(holder)
    except LockHeld as exc:
        refused.append(str(exc))
    else:
        lock_ids.append(holder.lock_id)
        lock.release()
    done += 1
print(json.dumps({"done": done, "refused": refused, "lock_ids": lock_ids}))
"""


def _spawn(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


def _report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_concurrent_readers_never_see_a_free_lock_as_held(tmp_path: Path) -> None:
    with EnvironmentLock(tmp_path, "plan", "prod") as lock:  # the file exists and names a released holder
        lock.acquire(LockHolder.current("earlier"))
    readers = [_spawn(READER_SCRIPT, tmp_path, 3000, 30) for _ in range(3)]
    reports = [_report(r) for r in readers]
    for report in reports:
        assert report["errors"] == []
        assert report["holders"] == []
        assert report["free"] == report["done"]
    assert sum(r["done"] for r in reports) >= 1000


def test_readers_never_make_a_taker_fail_nor_name_a_holder_that_is_not_the_current_one(tmp_path: Path) -> None:
    readers = [_spawn(READER_SCRIPT, tmp_path, 10**6, 8) for _ in range(2)]
    taker = _spawn(TAKER_SCRIPT, tmp_path, 3000, 8)
    taken = _report(taker)
    reports = [_report(r) for r in readers]
    assert taken["refused"] == [], taken["refused"][:3]  # only readers touched the lock: nothing may refuse
    assert taken["done"] >= 200
    known = set(taken["lock_ids"])
    for report in reports:
        assert report["errors"] == [], report["errors"][:3]  # never "held but names no holder"
        assert set(report["holders"]) <= known
    assert sum(len(r["holders"]) for r in reports) > 0  # the readers did see it held at times


def test_release_after_a_forced_unlock_keeps_the_evidence(tmp_path: Path) -> None:
    lock = EnvironmentLock(tmp_path, "plan", "prod")
    holder = LockHolder.current("stuck-run")
    lock.acquire(holder)
    force_unlock(tmp_path, "plan", "prod", holder.lock_id)
    lock.release()  # the stuck holder finally lets go, on the renamed file
    aside = tmp_path / f"plan@prod.lock.forced-{holder.lock_id}"
    lines = aside.read_text().splitlines()
    assert json.loads(lines[0])["run_id"] == "stuck-run"
    assert json.loads(lines[-1])["released"] == holder.lock_id


def _fds_open_on(path: Path) -> int:
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd) == str(path)
    return count


def test_a_failed_reopen_after_a_forced_unlock_is_a_clean_error_naming_the_path(tmp_path: Path) -> None:
    first = EnvironmentLock(tmp_path, "plan", "prod")
    holder = LockHolder.current("stuck-run")
    first.acquire(holder)
    errors: list[BaseException] = []

    def wait_for_the_lock() -> None:
        try:
            EnvironmentLock(tmp_path, "plan", "prod").acquire(LockHolder.current("waiting"), timeout=30, poll=0.01)
        except BaseException as exc:  # the test inspects whatever it was
            errors.append(exc)

    waiter = threading.Thread(target=wait_for_the_lock)
    waiter.start()
    try:
        deadline = time.monotonic() + 20
        while _fds_open_on(first.path) < 2:  # the waiter has the lock file open and polls
            assert time.monotonic() < deadline
            time.sleep(0.01)
        force_unlock(tmp_path, "plan", "prod", holder.lock_id)
        first.path.mkdir()  # what is at the path now cannot be opened as a lock file
        first.release()  # the waiter locks the orphan, sees it was forced, and re-opens: that fails
        waiter.join(30)
    finally:
        first.release()
    assert not waiter.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], JournalError), repr(errors[0])  # not EBADF from closing a closed fd
    assert str(first.path) in str(errors[0])


def test_a_symlink_at_the_lock_path_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "plan@prod.lock").symlink_to(victim)
    with pytest.raises(JournalError, match="symbolic link"):
        EnvironmentLock(tmp_path, "plan", "prod").acquire(LockHolder.current("r"))
    with pytest.raises(JournalError, match="symbolic link"):
        read_lock_holder(tmp_path, "plan", "prod")
    assert victim.read_text() == "precious\n"
