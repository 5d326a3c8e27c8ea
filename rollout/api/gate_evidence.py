"""The evidence a gate may believe: runs whose journals verify, found in the state dir, bundles and directories.

Invariant: a piece of evidence is believed only when `verify` says its journal's chain and
every anchor hold and its stored plan copy recomputes to the digest the journal carries;
what the gate reads from it (outcome, phases, parity facts) is recomputed from that
verified journal by `rehearsal_record`, never taken from rehearsal.json or run.json.
Anything else is listed as refused, with why, so an operator sees what was ignored.

Bundles are unpacked (safely, `export.unpack_bundle`) into a temporary directory that
lives as long as the `EvidenceSet`; nothing is ever written next to the evidence given.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.api import dirs
from rollout.api.evidence import verify_run_dir
from rollout.errors import JournalError, RolloutError
from rollout.journal import JournalReading, read_journal
from rollout.runstore import JOURNAL, RUNS, RunDir

# Directories walked for evidence are bounded: a CI artefact tree, not a file system.
MAX_WALK_ENTRIES = 100_000
BUNDLE_SUFFIXES = (".tar.gz", ".tgz")


@dataclass(frozen=True)
class Evidence:
    """A believed run: where it came from and its rehearsal record, recomputed from its verified journal."""

    source: str
    run_id: str
    record: dict[str, Any]

    @property
    def digest(self) -> str | None:
        """The run's plan digest."""
        return (self.record.get("plan") or {}).get("digest")

    @property
    def environment(self) -> str | None:
        """The environment the run changed."""
        env = self.record.get("environment")
        return str(env) if env is not None else None

    @property
    def ended(self) -> dt.datetime | None:
        """When the run ended (UTC), None while it has no run.end."""
        return parse_ts(self.record.get("ended"))

    def to_dict(self) -> dict[str, Any]:
        """For --json."""
        return {"source": self.source, "run": self.run_id, "record": self.record}


@dataclass(frozen=True)
class RefusedEvidence:
    """Evidence that was not believed, and why."""

    source: str
    reason: str
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """For --json."""
        return {"source": self.source, "run": self.run_id, "reason": self.reason}


@dataclass
class EvidenceSet:
    """Everything found: believed and refused; `close()` removes the unpacked bundles."""

    believed: list[Evidence] = field(default_factory=list)
    refused: list[RefusedEvidence] = field(default_factory=list)
    _scratch: list[Path] = field(default_factory=list)

    def scratch(self, *, fresh: bool = False) -> Path:
        """A private temporary state directory to unpack bundles into (one for all, unless `fresh`).

        One directory for every bundle: creating and removing a tree per bundle was most
        of the time a gate over a hundred bundles took.
        """
        if fresh or not self._scratch:
            self._scratch.append(Path(tempfile.mkdtemp(prefix="rollout-evidence-")))
        return self._scratch[-1]

    def close(self) -> None:
        """Remove the temporary directories bundles were unpacked into."""
        for path in self._scratch:
            shutil.rmtree(path, ignore_errors=True)
        self._scratch.clear()

    def __enter__(self) -> EvidenceSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_ts(value: object) -> dt.datetime | None:
    """A journal timestamp (2026-11-25T06:29:26.866Z) as an aware UTC datetime, None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def believe_run(state: Path, run_id: str, source: str) -> Evidence | RefusedEvidence:
    """Verify one run under `state` and recompute its record from the journal; refused with why otherwise."""
    from rollout.report.rehearsal import rehearsal_record

    rundir = RunDir(state / RUNS / run_id)
    reading: JournalReading | JournalError | None
    try:
        reading = read_journal(rundir.journal)
    except JournalError as exc:
        reading = exc  # verify names the damage
    except RolloutError:
        reading = None
    try:
        checked = verify_run_dir(rundir, reading=reading)
    except RolloutError as exc:
        return RefusedEvidence(source, str(exc), run_id)
    if not checked.ok:
        where = f"line {checked.first_bad_line}: " if checked.first_bad_line else ""
        return RefusedEvidence(source, f"journal does not verify: {where}{checked.reason}", run_id)
    if checked.plan_copy_matches is not True:
        why = "the plan copy is missing" if checked.plan_copy_matches is None else "the plan copy does not match"
        return RefusedEvidence(source, f"{why} (digest {checked.plan_digest})", run_id)
    try:
        records = reading.records if isinstance(reading, JournalReading) else read_journal(rundir.journal).records
        record = rehearsal_record(records)
    except (RolloutError, ValueError, KeyError, TypeError) as exc:
        return RefusedEvidence(source, f"cannot read the verified journal: {exc}", run_id)
    return Evidence(source, run_id, dict(record))


def _state_runs(state: Path, source: str) -> Iterator[Evidence | RefusedEvidence]:
    """Every run directory of a state directory, each believed or refused."""
    runs = state / RUNS
    if not runs.is_dir():
        return
    for entry in sorted(runs.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir() or entry.is_symlink():
            continue
        yield believe_run(state, entry.name, f"{source} {entry}")


def _bundle(path: Path, evidence: EvidenceSet) -> Evidence | RefusedEvidence:
    """Unpack a bundle into the set's private scratch directory and believe its run, or refuse it."""
    from rollout.api.export import unpack_bundle

    try:
        dest = evidence.scratch()
        try:
            rundir = unpack_bundle(path, dest)
        except FileExistsError:
            # the same run id in another bundle (a copy, or a forged one): a state directory of its own
            dest = evidence.scratch(fresh=True)
            rundir = unpack_bundle(path, dest)
    except RolloutError as exc:
        return RefusedEvidence(f"bundle {path}", f"not a well-formed bundle: {exc}")
    return believe_run(dest, rundir.name, f"bundle {path}")


def _walk(top: Path) -> Iterator[tuple[str, Path]]:
    """("bundle", file) and ("state", directory holding runs/) found under `top`, links not followed."""
    seen = 0
    for root, subdirs, files in os.walk(top, followlinks=False):
        seen += len(subdirs) + len(files)
        if seen > MAX_WALK_ENTRIES:
            return
        here = Path(root)
        if (here / JOURNAL).is_file() and here.parent.name == RUNS:
            subdirs[:] = []  # a run directory: _state_runs reads it through its state directory
            continue
        if RUNS in subdirs:
            yield "state", here
        subdirs.sort()
        for name in sorted(files):
            if name.endswith(BUNDLE_SUFFIXES) and not os.path.islink(here / name):
                yield "bundle", here / name


def _from_path(path: Path, evidence: EvidenceSet) -> Iterable[Evidence | RefusedEvidence]:
    """The evidence at one --evidence path: a bundle, a run directory, or a tree holding them."""
    if path.is_file():
        return [_bundle(path, evidence)]
    if not path.is_dir():
        return [RefusedEvidence(str(path), "no such file or directory")]
    if (path / JOURNAL).is_file() and path.parent.name == RUNS:
        return [believe_run(path.parent.parent, path.name, f"run directory {path}")]
    found: list[Evidence | RefusedEvidence] = []
    for kind, where in _walk(path):
        if kind == "bundle":
            found.append(_bundle(where, evidence))
        else:
            found.extend(_state_runs(where, "state directory"))
    return found


def load_evidence(paths: Iterable[Path | str] = (), *, state_dir: Path | str | None = None) -> EvidenceSet:
    """The runs of the state directory and of each evidence path, each believed or refused (close() it after)."""
    evidence = EvidenceSet()
    found: list[Evidence | RefusedEvidence] = list(_state_runs(dirs.state_dir(state_dir), "state directory"))
    try:
        for path in paths:
            found.extend(_from_path(Path(path), evidence))
    except BaseException:
        evidence.close()
        raise
    seen: set[tuple[str, str]] = set()
    for piece in found:
        if isinstance(piece, RefusedEvidence):
            evidence.refused.append(piece)
            continue
        # the same run restored twice (state dir and artefact) counts once
        key = (piece.run_id, str(piece.record.get("journal_head")))
        if key not in seen:
            seen.add(key)
            evidence.believed.append(piece)
    return evidence
