"""Run directories under the state directory: `runs/RUN/` with the plan, journal and report.

Creates them owner-only (0700 directories, 0600 files) because journals hold command
output, refuses a state directory or `runs/` that is a symlink or someone else's, and
never follows a link at a file's path. A run directory appears complete or not at all
(built under a dot-name, then renamed). Never deletes a run: evidence is kept until an
operator removes it (only this process's own half-built directory is removed, on failure).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout.atomic import fsync_dir, write_atomic
from rollout.errors import JournalError, UsageError
from rollout.statedir import check_private_dir, ensure_private_dir

RUNS = "runs"
JOURNAL = "journal.jsonl"
META = "run.json"
PLAN_COPY = "plan"


def new_run_id(now: dt.datetime | None = None) -> str:
    """An id that sorts by start time: 20261123T223012Z-3f9a2c."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunDir:
    """One run's directory."""

    path: Path

    @property
    def run_id(self) -> str:
        """The run id (the directory name)."""
        return self.path.name

    @property
    def journal(self) -> Path:
        """The journal file."""
        return self.path / JOURNAL

    @property
    def report(self) -> Path:
        """The Markdown report written at the end of the run."""
        return self.path / "report.md"

    def meta(self) -> dict[str, Any]:
        """What the run was started with (plan path, environment, variables)."""
        try:
            fd = os.open(self.path / META, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                raw = os.read(fd, 1 << 22)
            finally:
                os.close(fd)
            data = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise JournalError(f"{self.path / META}: cannot read the run's metadata: {exc}") from exc
        if not isinstance(data, dict):
            raise JournalError(f"{self.path / META}: not a JSON object")
        return data


def create_run_dir(
    state_dir: Path, run_id: str, *, files: dict[str, bytes], digest: str, meta: dict[str, Any]
) -> RunDir:
    """Create runs/RUN with the exact plan bytes, the digest and the run's metadata."""
    runs = ensure_private_dir(state_dir, RUNS)
    final = runs / run_id
    path = runs / f".{run_id}.partial"
    try:
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, "run directory exists", str(final))
        path.mkdir(mode=0o700)
        copy = path / PLAN_COPY
        copy.mkdir(mode=0o700)
        for rel, data in files.items():
            target = copy / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(target, data)
        write_atomic(path / "plan.sha256", f"{digest}\n".encode())
        write_atomic(path / META, json.dumps(meta, indent=2, sort_keys=True).encode("utf-8"))
        fsync_dir(path)
        os.rename(path, final)
        fsync_dir(runs)
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)  # never a complete run: only our own partial copy
        raise JournalError(f"cannot create the run directory under {runs}: {exc.strerror or exc}") from exc
    return RunDir(final)


def check_run_dir(run: RunDir) -> None:
    """Before writing into a run directory: it and its parents up to the state root are ours, no links."""
    for directory in (run.path.parent.parent, run.path.parent, run.path):
        check_private_dir(directory)


def find_run(state_dir: Path, run: str) -> RunDir:
    """A run by id, unique prefix, or `last`."""
    runs = state_dir / RUNS
    candidates = sorted(p.name for p in runs.iterdir() if _is_run(p)) if runs.is_dir() else []
    if run == "last":
        if not candidates:
            raise UsageError(f"no runs under {runs}")
        return RunDir(runs / candidates[-1])
    if run in candidates:
        return RunDir(runs / run)
    matches = [c for c in candidates if c.startswith(run)]
    if len(matches) == 1:
        return RunDir(runs / matches[0])
    if not matches:
        raise UsageError(f"no run '{run}' under {runs} (see `rollout runs`)")
    raise UsageError(f"'{run}' matches several runs: {', '.join(matches[:5])}")


def list_runs(state_dir: Path) -> list[RunDir]:
    """Every run directory, oldest first."""
    runs = state_dir / RUNS
    if not runs.is_dir():
        return []
    return [RunDir(p) for p in sorted(runs.iterdir()) if _is_run(p)]


def _is_run(path: Path) -> bool:
    # a dot-name is a run directory still being built (or left by a crash while it was)
    return not path.name.startswith(".") and path.is_dir()
