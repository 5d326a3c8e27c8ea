"""Upload steps: the content for one host, the upload through the executor, and its undo.

The content is read from the plan's directory (rendered with the host's variables when
`template: true`, never shell-quoted: it is a file) at the moment the step runs. What the
journal learns is src, dest, size and sha256, never the content. The key that names the
kept previous content on the target is the run id and the step's index, so `recover`
finds it again, and two uploads to one dest in one run each keep their own.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rollout.errors import ConnectError, ExecutorError
from rollout.executors.base import CommandResult, Executor
from rollout.model import Step
from rollout.planfile import LoadedPlan
from rollout.planfile.loading import MAX_UPLOAD_BYTES
from rollout.template import TemplateProblem, render

#: Largest file an upload step sends: bounded like read_file, it is held in memory.
MAX_UPLOAD = MAX_UPLOAD_BYTES


def upload_key(run_id: str, index: int) -> str:
    """The name under which an upload keeps the previous content of dest on the target."""
    return f"{run_id}-{index}"


def source_path(plan_dir: Path, src: str) -> Path:
    """Where `src` is: inside the plan's directory, like an include (ValueError when it leaves it)."""
    rel = Path(src)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError("must be a path inside the plan's directory (no leading '/', no '..')")
    path = plan_dir / rel
    if not path.resolve().is_relative_to(plan_dir.resolve()):
        raise ValueError("resolves outside the plan's directory (through a symlink)")
    return path


def upload_content(step: Step, loaded: LoadedPlan, variables: Mapping[str, Any]) -> bytes:
    """The bytes this host receives: src as is, or rendered with its variables (strict undefined).

    The source is the one read when the plan was loaded (its sha256 is in the plan's digest),
    so an edit to the file after `validate`, a lock or the start of the run never reaches a host.
    """
    assert step.upload is not None
    plan_dir = loaded.path.parent
    path = source_path(plan_dir, step.upload.src)
    kept = loaded.files.get(os.path.relpath(path, plan_dir))
    data = kept if kept is not None else path.read_bytes()
    if len(data) > MAX_UPLOAD:
        raise ValueError(f"{path} is larger than {MAX_UPLOAD} bytes")
    if not step.upload.template:
        return data
    return render(data.decode("utf-8"), variables, shell=False, limit=MAX_UPLOAD).encode("utf-8")


def check_upload_sources(
    loaded: LoadedPlan, steps: Sequence[Step], variables: Mapping[str, Any], *, env_name: str, host_name: str
) -> None:
    """Every upload's src is readable and renders for this host, or a PlanError at its file:line:col.

    Checked when the plan is prepared, so a missing file or an undefined variable in a
    template stops `validate`, `plan` and `run` before anything changes, not halfway through.
    """
    for i, step in enumerate(steps):
        if step.upload is None:
            continue
        try:
            upload_content(step, loaded, variables)
        except (OSError, ValueError, TemplateProblem) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise loaded.error(
                ("steps", i, "upload", "src"),
                f"upload source {step.upload.src!r}: {detail} (in environment '{env_name}', host '{host_name}')",
            ) from None


def upload_step(
    ex: Executor, step: Step, *, loaded: LoadedPlan, variables: Mapping[str, Any], key: str
) -> tuple[CommandResult, dict[str, Any]]:
    """Upload the step's file and check the sha256 read back: the result, and the facts for the journal.

    The facts are src, dest, mode, and once the content is known its size and sha256 (never
    the content). ConnectError passes through: the host could not be reached, nothing changed.
    """
    assert step.upload is not None
    up = step.upload
    started = time.monotonic()
    host = ex.target.name
    facts: dict[str, Any] = {"src": up.src, "dest": up.dest, "mode": f"{up.mode:04o}"}

    def failed(why: str) -> tuple[CommandResult, dict[str, Any]]:
        return CommandResult(host, step.command, 1, "", why, time.monotonic() - started), facts

    try:
        data = upload_content(step, loaded, variables)
    except (OSError, ValueError, TemplateProblem) as exc:
        return failed(f"cannot prepare {up.src}: {exc}")
    intended = hashlib.sha256(data).hexdigest()
    facts.update(size=len(data), sha256=intended)
    try:
        done = ex.upload(data, up.dest, mode=up.mode, owner=up.owner, key=key)
    except ExecutorError as exc:
        if isinstance(exc, ConnectError):
            raise
        return failed(str(exc))
    if done.sha256 != intended:
        return failed(f"{up.dest} on {host} has sha256 {done.sha256} after the upload, not {intended}")
    said = f"{up.dest}: {done.size} bytes, sha256 {done.sha256}"
    return CommandResult(host, step.command, 0, said, "", time.monotonic() - started), facts


def restore_step(ex: Executor, step: Step, *, key: str) -> CommandResult:
    """Undo an upload: the previous content back, byte for byte and mode, or dest removed; idempotent."""
    assert step.upload is not None
    started = time.monotonic()
    command = step.rollback_command
    try:
        said = ex.restore_upload(step.upload.dest, key)
    except ExecutorError as exc:
        return CommandResult(ex.target.name, command, None, "", str(exc), time.monotonic() - started)
    return CommandResult(ex.target.name, command, 0, said, "", time.monotonic() - started)
