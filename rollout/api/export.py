"""Evidence bundles: pack a verified run for another machine, and unpack one without trusting it.

`export` packs a run directory's evidence (journal, head, plan copy and digest, run.json,
rehearsal.json, report.md, signature) into RUN/... inside a tar.gz with a MANIFEST.json
(sha256 of every member, run id, plan digest, journal head). It refuses a run whose
journal does not verify: a bundle must never launder damaged evidence. It reads only
regular files of the run directory (never a link), and the bundle appears whole or not
at all.

`unpack_bundle` treats the archive as hostile: only regular files and directories under
one top directory, no absolute names, no `..`, no links or devices, bounded member count
and sizes, every member listed in the manifest with its sha256. It writes into a
directory the caller owns; believing what was unpacked is `verify`'s job, not this one's.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rollout.api import dirs
from rollout.api.evidence import report, verify
from rollout.atomic import write_atomic
from rollout.errors import JournalError, UsageError
from rollout.runstore import RunDir, find_run

MANIFEST = "MANIFEST.json"
BUNDLE_FORMAT = 1
# The files of a run directory that are evidence; the plan copy is added below.
EVIDENCE_FILES = ("journal.jsonl", "head", "head.sig", "plan.sha256", "run.json", "rehearsal.json", "report.md")
PLAN_DIR = "plan"
# Bounds on what unpacking a bundle may cost, whoever made it.
MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 256 * 1024 * 1024
MAX_TOTAL_BYTES = 1024 * 1024 * 1024
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Exported:
    """What `export` wrote: the bundle, the run and its manifest."""

    path: Path
    run_id: str
    manifest: dict[str, Any]


def _read_regular(path: Path) -> bytes | None:
    """A regular file's bytes, never through a link; None when it is missing or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(MAX_MEMBER_BYTES + 1)
    finally:
        os.close(fd)


def _plan_copy(rundir: RunDir) -> dict[str, bytes]:
    """The plan copy's regular files, by path relative to the run directory (links are not followed)."""
    found: dict[str, bytes] = {}
    top = rundir.path / PLAN_DIR
    if not top.is_dir() or top.is_symlink():
        return found
    for root, subdirs, files in os.walk(top, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            path = Path(root) / name
            data = _read_regular(path)
            if data is not None:
                found[path.relative_to(rundir.path).as_posix()] = data
    return found


def _members(rundir: RunDir, state: Path) -> dict[str, bytes]:
    """Every evidence file of the run, by relative path; report.md rendered when the run has none."""
    members: dict[str, bytes] = {}
    for name in EVIDENCE_FILES:
        data = _read_regular(rundir.path / name)
        if data is not None:
            members[name] = data
    if "report.md" not in members:
        members["report.md"] = report(rundir.run_id, state_dir=state, fmt="md").encode("utf-8")
    members.update(_plan_copy(rundir))
    return members


def export(run_id: str, out: Path | str, *, state_dir: Path | str | None = None) -> Exported:
    """Pack a run's evidence into a tar.gz bundle; JournalError (exit 5) when its journal does not verify."""
    state = dirs.state_dir(state_dir)
    rundir = find_run(state, run_id)
    checked = verify(rundir.run_id, state_dir=state)
    if not checked.ok:
        where = f" (line {checked.first_bad_line})" if checked.first_bad_line else ""
        why = checked.reason or "the stored plan copy no longer matches its digest"
        raise JournalError(f"run {rundir.run_id}: its journal does not verify{where}: {why}; nothing was exported")
    members = _members(rundir, state)
    manifest = {
        "format": BUNDLE_FORMAT,
        "run_id": rundir.run_id,
        "plan_digest": checked.plan_digest,
        "journal_head": {"seq": checked.records, "hash": checked.head},
        "members": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(members.items())},
    }
    members[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    target = Path(out)
    try:
        # a bundle is for handing on (CI artefacts): readable like any build output, and its
        # directory (`-o evidence/rehearsal.tar.gz`) made like any build output's
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, _tar_gz(rundir.run_id, members), mode=0o644)
    except OSError as exc:
        raise UsageError(f"{target}: cannot write the bundle: {exc.strerror or exc}") from exc
    return Exported(target, rundir.run_id, manifest)


def _tar_gz(run_id: str, members: dict[str, bytes]) -> bytes:
    """The members as RUN_ID/NAME in a gzip'd tar, with fixed owners and times (the same run packs the same)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            data = members[name]
            info = tarfile.TarInfo(f"{run_id}/{name}")
            info.size = len(data)
            info.mode = 0o600
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _safe_name(name: str) -> PurePosixPath:
    """A member name that stays inside the unpacking directory, or UsageError."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise UsageError(f"member {name!r} would land outside the bundle's directory")
    if len(path.parts) < 2 or not _RUN_ID.fullmatch(path.parts[0]):
        raise UsageError(f"member {name!r} is not under a run directory")
    return path


def _read_members(bundle: Path) -> dict[PurePosixPath, bytes]:
    """Every regular file of the archive, by safe name, within the bounds; UsageError naming what is wrong."""
    files: dict[PurePosixPath, bytes] = {}
    total = 0
    try:
        with tarfile.open(bundle, mode="r:gz") as tar:
            for count, info in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise UsageError(f"more than {MAX_MEMBERS} members")
                name = _safe_name(info.name)
                if info.isdir():
                    continue
                if not info.isreg():
                    raise UsageError(f"member {info.name!r} is not a regular file (links and devices are refused)")
                total += info.size
                if info.size > MAX_MEMBER_BYTES or total > MAX_TOTAL_BYTES:
                    raise UsageError(f"member {info.name!r} makes the bundle larger than allowed")
                if name in files:
                    raise UsageError(f"member {info.name!r} appears twice")
                handle = tar.extractfile(info)
                files[name] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UsageError(f"not a readable tar.gz bundle: {exc}") from exc
    return files


def unpack_bundle(bundle: Path, dest: Path) -> Path:
    """Unpack a bundle into `dest` (a directory of ours, used as a state directory) as dest/runs/RUN.

    UsageError naming the problem for anything that is not a well-formed bundle: the
    caller lists it as refused evidence. FileExistsError, before anything is written,
    when `dest` already holds a run of that id (another bundle of the same run).
    """
    files = _read_members(bundle)
    tops = {name.parts[0] for name in files}
    if len(tops) != 1:
        raise UsageError(f"expected one run directory in the bundle, found {len(tops)}")
    run_id = tops.pop()
    raw = files.get(PurePosixPath(run_id, MANIFEST))
    if raw is None:
        raise UsageError(f"no {MANIFEST}")
    try:
        manifest = json.loads(raw)
        listed = dict(manifest["members"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{MANIFEST} is unreadable: {exc}") from exc
    if manifest.get("run_id") != run_id:
        raise UsageError(f"{MANIFEST} names run {manifest.get('run_id')!r}, the bundle holds {run_id!r}")
    present = {PurePosixPath(*name.parts[1:]).as_posix(): data for name, data in files.items()}
    present.pop(MANIFEST)
    if set(present) != set(listed):
        odd = sorted(set(present) ^ set(listed))
        raise UsageError(f"members and {MANIFEST} disagree: {', '.join(odd[:5])}")
    for rel, data in present.items():
        if hashlib.sha256(data).hexdigest() != listed[rel]:
            raise UsageError(f"member {rel} does not match its sha256 in {MANIFEST}")
    rundir = dest / "runs" / run_id
    if os.path.lexists(rundir):
        raise FileExistsError(errno.EEXIST, "a run of that id is already unpacked there", str(rundir))
    try:
        for rel, data in present.items():
            target = rundir / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
    except OSError as exc:
        raise UsageError(f"cannot unpack it into {dest}: {exc.strerror or exc}") from exc
    return rundir
