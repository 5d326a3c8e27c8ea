"""Upload steps cut short: a dropped connection, an interrupt, a dead orchestrator.

Invariants: nothing cut off before the rename changes dest; the kept previous content is
the one from before the first attempt; restoring is idempotent and a no-op when nothing
was kept; `recover` after the orchestrator died mid-upload or after it leaves dest as it
was before the run.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.engine.uploads import upload_step
from rollout.errors import ExecutorError
from rollout.executors import Executor, Target, open_executor
from rollout.executors.base import backup_paths
from rollout.executors.local import LocalExecutor
from rollout.executors.ssh import SshExecutor
from rollout.planfile import load_plan
from tests.conftest_sshd import SshdServer
from tests.helpers import cli_env, events, rollout, run_args, run_id_of, write_plan

OLD = b"old\x00bytes\xff\n"
NEW = b"new release\n"


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """A local executor, and one over the real sshd."""
    if request.param == "local":
        ex = open_executor(Target(name="local-1"))
    else:
        server: SshdServer = request.getfixturevalue("sshd")
        ex = open_executor(server.target("ssh-1"))
    yield ex
    ex.close()


def _old_file(tmp_path: Path, mode: int = 0o600) -> Path:
    dest = tmp_path / "app.conf"
    dest.write_bytes(OLD)
    dest.chmod(mode)
    return dest


def test_a_retry_keeps_the_content_from_before_the_first_attempt(executor: Executor, tmp_path: Path) -> None:
    dest = _old_file(tmp_path)
    executor.upload(b"first attempt\n", str(dest), mode=0o644, owner=None, key="run-0")
    done = executor.upload(NEW, str(dest), mode=0o644, owner=None, key="run-0")
    assert done.existed
    assert dest.read_bytes() == NEW
    executor.restore_upload(str(dest), "run-0")
    assert dest.read_bytes() == OLD
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_restoring_twice_or_without_an_upload_changes_nothing(executor: Executor, tmp_path: Path) -> None:
    dest = _old_file(tmp_path)
    assert "nothing to restore" in executor.restore_upload(str(dest), "never-uploaded")
    assert dest.read_bytes() == OLD
    new = tmp_path / "new.conf"
    executor.upload(NEW, str(new), mode=0o644, owner=None, key="run-1")
    assert "removed" in executor.restore_upload(str(new), "run-1")
    assert "nothing to restore" in executor.restore_upload(str(new), "run-1")
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf"]


def test_owner_and_mode_are_set_before_dest_is_replaced(executor: Executor, tmp_path: Path) -> None:
    dest = _old_file(tmp_path)
    done = executor.upload(NEW, str(dest), mode=0o640, owner="nobody", key="run-2")
    info = dest.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (65534, 0o640)
    assert done.size == len(NEW)
    with pytest.raises(ExecutorError, match="chown"):
        executor.upload(b"x", str(dest), mode=0o640, owner="no-such-user-here", key="run-2")
    assert dest.read_bytes() == NEW


class _DropsBeforeRename(SshExecutor):
    """Drops its TCP connection where the chown runs: after the content is written, before the rename."""

    def _chown(self, owner: str, path: str) -> None:
        assert self._sock is not None
        self._sock.shutdown(socket.SHUT_RDWR)
        super()._chown(owner, path)


@pytest.mark.ssh
def test_a_connection_dropped_before_the_rename_leaves_dest_intact(sshd: SshdServer, tmp_path: Path) -> None:
    dest = _old_file(tmp_path)
    ex = _DropsBeforeRename(sshd.target("ssh-1"))
    try:
        with pytest.raises(ExecutorError):
            ex.upload(NEW * 100_000, str(dest), mode=0o644, owner="nobody", key="run-3")
        assert dest.read_bytes() == OLD
        # The next connection rolls back cleanly: the kept copy (the same bytes) goes back.
        ex.restore_upload(str(dest), "run-3")
    finally:
        ex.close()
    assert dest.read_bytes() == OLD
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert not any(Path(p).exists() for p in backup_paths(str(dest), "run-3"))


def test_an_interrupt_before_the_rename_leaves_dest_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = _old_file(tmp_path)
    real_fsync = os.fsync

    def interrupted(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", interrupted)
    ex = open_executor(Target(name="local-1"))
    with pytest.raises(KeyboardInterrupt):
        ex.upload(NEW, str(dest), mode=0o644, owner=None, key="run-4")
    assert dest.read_bytes() == OLD
    assert not list(tmp_path.glob("*.tmp"))


# Runs the real CLI and SIGKILLs itself at one point of the upload: "rename" just before
# the new content replaces dest, "result" right after the step's result is journaled.
LAUNCHER = """
import os, signal, sys
where = os.environ["UPLOAD_CRASH_AT"]
if where == "rename":
    real = os.replace
    def replace(src, dst, *a, **k):
        if str(src).endswith(".tmp") and str(dst).endswith("app.conf"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **k)
    os.replace = replace
else:
    import rollout.journal as journal
    original = journal.Journal.append
    def append(self, event, *, sync=False):
        record = original(self, event, sync=sync)
        if record.kind == "step.result":
            os.kill(os.getpid(), signal.SIGKILL)
        return record
    journal.Journal.append = append
from rollout.cli import run_cli
sys.exit(run_cli(sys.argv[1:]))
"""


@pytest.mark.parametrize("where", ["rename", "result"])
def test_recover_after_the_orchestrator_died_in_an_upload_leaves_the_old_file(tmp_path: Path, where: str) -> None:
    dest = _old_file(tmp_path)
    (tmp_path / "src.conf").write_bytes(NEW)
    plan: dict[str, Any] = {
        "name": "upload-crash",
        "environments": {"demo": {"rehearsal": True, "connection": "local", "hosts": {"h1": {}}}},
        "steps": [{"name": "config", "upload": {"src": "src.conf", "dest": str(dest), "mode": "0644"}}],
    }
    path = write_plan(tmp_path / "plan.yaml", plan)
    state = tmp_path / "state"
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *run_args(path, state)],
        env=cli_env(UPLOAD_CRASH_AT=where),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr[-500:]
    assert dest.read_bytes() == (OLD if where == "rename" else NEW)
    recovered = rollout("recover", run_id_of(state), "--state-dir", state)
    assert recovered.returncode in (0, 1), recovered.stdout[-800:] + recovered.stderr[-400:]
    assert dest.read_bytes() == OLD
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    kinds = [e["kind"] for e in events(state)]
    assert "rollback.result" in kinds


class _Corrupts(LocalExecutor):
    """Writes one byte more than it was given: what a broken disk or a tampering target would do."""

    def _replace(self, data: bytes, dest: str, *, mode: int, owner: str | None) -> None:
        super()._replace(data + b"!", dest, mode=mode, owner=owner)


def test_a_sha256_read_back_that_differs_fails_the_step(tmp_path: Path) -> None:
    (tmp_path / "src.conf").write_bytes(NEW)
    dest = _old_file(tmp_path)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: corrupt\nenvironments: { lab: { connection: local, hosts: { local-1: {} } } }\n"
        f"steps:\n  - {{ name: config, upload: {{ src: src.conf, dest: {dest} }} }}\n"
    )
    loaded = load_plan(plan)
    step = loaded.plan.steps[0]
    result, facts = upload_step(_Corrupts(Target(name="local-1")), step, loaded=loaded, variables={}, key="run-5")
    assert not result.ok
    assert f"{dest} on local-1 has sha256" in result.stderr
    assert facts["sha256"] == hashlib.sha256(NEW).hexdigest()
