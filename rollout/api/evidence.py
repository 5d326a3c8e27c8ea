"""Evidence of a run: verify its journal against every head kept outside it, and build its report.

A journal's own hash chain proves nothing against someone who rewrites it whole; the
heads kept elsewhere do: the head file, report.md, the status documents delivered to
files, a head from a CI log (`--head`), a signed head (`head.sig`). `verify` checks the
chain against all of them and recomputes the stored plan copy's digest.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from rollout.api import dirs
from rollout.errors import JournalError, RolloutError, UsageError
from rollout.journal import (
    Anchor,
    JournalReading,
    Record,
    head_path,
    parse_head,
    read_head_file,
    read_journal,
    verify_journal,
)
from rollout.runstore import RunDir, find_run

STATUS_FILE_CAP = 16 * 1024 * 1024
_REPORT_HEAD = re.compile(r"Journal head hash: `([0-9a-f]{64})` \((\d+) events\)")

REPORT_FORMATS = ("md", "json", "html")


@dataclass(frozen=True)
class Verification:
    """What `verify` found: `ok` only when the chain, every anchor, the signature and the plan copy agree."""

    run_id: str
    ok: bool
    records: int = 0
    head: str | None = None
    complete: bool = False
    first_bad_line: int | None = None
    reason: str | None = None
    plan_digest: str | None = None
    plan_copy_matches: bool | None = None
    anchor: str | None = None
    anchors_checked: tuple[str, ...] = ()
    signed_by: str | None = None
    # an anchor or signature that could not be trusted at all: nothing else was checked
    untrusted: bool = False

    def to_dict(self) -> dict[str, object]:
        """For --json."""
        if self.untrusted:
            return {"run": self.run_id, "ok": False, "reason": self.reason}
        return {
            "run": self.run_id,
            "ok": self.ok,
            "records": self.records,
            "head": self.head,
            "complete": self.complete,
            "first_bad_line": self.first_bad_line,
            "reason": self.reason,
            "plan_digest": self.plan_digest,
            "plan_copy_matches": self.plan_copy_matches,
            "anchor": self.anchor,
            "anchors_checked": list(self.anchors_checked),
            "signed_by": self.signed_by,
        }


def verify(
    run_id: str,
    *,
    state_dir: Path | str | None = None,
    head: str | None = None,
    allowed_signers: Path | None = None,
) -> Verification:
    """Check a run's journal, anchors, signature and plan copy (UsageError for a bad --head or an unknown run)."""
    anchors: list[Anchor] = []
    if head is not None:
        try:
            anchors.append(parse_head(head, "--head"))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        rundir = find_run(dirs.state_dir(state_dir), run_id)
    except OSError as exc:
        raise UsageError(str(exc)) from None
    return verify_run_dir(rundir, anchors=tuple(anchors), allowed_signers=allowed_signers)


def verify_run_dir(
    rundir: RunDir,
    *,
    anchors: tuple[Anchor, ...] = (),
    allowed_signers: Path | None = None,
    reading: JournalReading | JournalError | None = None,
) -> Verification:
    """`verify` for a run directory in hand; `reading` is the journal as the caller already read it.

    The gate verifies every run of a state directory: looking each up by id again, and
    reading each journal twice (once to verify, once for its facts), made that quadratic
    and twice as slow.
    """
    found = list(anchors)
    try:
        digest_file = rundir.path / "plan.sha256"
        recorded = digest_file.read_text("utf-8").strip() if digest_file.exists() else None
    except OSError as exc:
        raise UsageError(str(exc)) from None
    signer: str | None = None
    try:
        if allowed_signers is not None:
            from rollout.signing import verify_head_signature

            signer = verify_head_signature(head_path(rundir.journal), allowed_signers)
        if reading is None:
            reading = _reading(rundir)
        found.extend(found_anchors(rundir, reading.records if isinstance(reading, JournalReading) else ()))
    except UsageError:
        raise
    except RolloutError as exc:
        # an anchor or signature that cannot be trusted at all: damaged
        return Verification(rundir.run_id, ok=False, reason=str(exc), untrusted=True)
    result = verify_journal(rundir.journal, plan_digest=recorded, anchors=tuple(found), reading=reading)
    plan_ok = plan_copy_matches(rundir, recorded)
    return Verification(
        run_id=rundir.run_id,
        ok=result.ok and plan_ok is not False,
        records=result.records,
        head=result.head,
        complete=result.complete,
        first_bad_line=result.first_bad_line,
        reason=result.reason,
        plan_digest=result.plan_digest,
        plan_copy_matches=plan_ok,
        anchor=result.anchor,
        anchors_checked=tuple(result.anchors_checked),
        signed_by=signer,
    )


def _reading(rundir: RunDir) -> JournalReading | JournalError | None:
    """The journal read once for anchors and chain: the error when it cannot be (verify_journal names the damage).

    None for any other failure: verify_journal then reads the journal itself.
    """
    try:
        return read_journal(rundir.journal)
    except JournalError as exc:
        return exc
    except RolloutError:
        return None


def found_anchors(rundir: RunDir, records: tuple[Record, ...]) -> tuple[Anchor, ...]:
    """Every journal head recorded outside the journal: head file, report.md, file notifications."""
    anchors: list[Anchor] = []
    head = read_head_file(rundir.journal)
    if head is not None:
        anchors.append(head)
    try:
        report_text = rundir.report.read_text("utf-8")
    except OSError:
        report_text = ""
    match = _REPORT_HEAD.search(report_text)
    if match:
        anchors.append(Anchor(f"report {rundir.report}", int(match.group(2)), match.group(1)))
    anchors.extend(_notification_anchors(rundir, records))
    return tuple(anchors)


def _notification_anchors(rundir: RunDir, records: tuple[Record, ...]) -> list[Anchor]:
    """The newest head in each file the run's status documents were delivered to."""
    files = {
        str(r.data["sink"])[len("file ") :]
        for r in records
        if r.kind == "notify.delivery" and str(r.data.get("sink", "")).startswith("file ")
    }
    anchors = []
    for name in sorted(files):
        newest = _newest_head(rundir.run_id, name)
        if newest is not None:
            anchors.append(newest)
    return anchors


def _newest_head(run_id: str, name: str) -> Anchor | None:
    """The highest journal head this run's status documents in file `name` report."""
    newest: Anchor | None = None
    for line in _read_status_file(Path(name)):
        try:
            doc = json.loads(line)
            if doc.get("run_id") != run_id or "journal_head" not in doc:
                continue
            anchor = parse_head(str(doc["journal_head"]), f"status notification in {name}")
        except (ValueError, AttributeError):
            continue
        if newest is None or anchor.seq > newest.seq:
            newest = anchor
    return newest


def _read_status_file(path: Path) -> list[str]:
    """The lines of a status file named in the journal: only a regular file, only so much of it.

    The name comes from a journal that may have been tampered with: a FIFO, a device or a
    huge file there must not hang or exhaust `verify`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(STATUS_FILE_CAP)
    except OSError:
        return []
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").splitlines()


def plan_copy_matches(rundir: RunDir, recorded: str | None) -> bool | None:
    """Recompute the stored plan copy's digest and compare it (None when there is no copy).

    By digest alone, without validating the copy again: it validated when the run
    started, and any edit to it changes the digest (most of verify's time went into
    re-validating a plan of thousands of steps).
    """
    from rollout.planfile import plan_file_digest

    copy = rundir.path / "plan"
    if recorded is None or not copy.is_dir():
        return None
    try:
        meta = rundir.meta()
        main = Path(str(meta.get("plan_file", "")))
        candidates = sorted(copy.rglob(main.name)) if main.name else []
        if not candidates:
            return None
        return plan_file_digest(candidates[0]) == recorded
    except RolloutError:
        return False


def report(run_id: str, *, state_dir: Path | str | None = None, fmt: str = "md") -> str:
    """The incident report of a run as Markdown ("md"), JSON ("json") or self-contained HTML ("html")."""
    from rollout.report.incident import load_report, render_json, render_markdown

    if fmt not in REPORT_FORMATS:
        raise UsageError(f"report format {fmt!r}: expected one of {', '.join(REPORT_FORMATS)}")
    built = load_report(find_run(dirs.state_dir(state_dir), run_id))
    if fmt == "html":
        from rollout.report.html import render_html

        return render_html(built)
    if fmt == "json":
        return render_json(built)
    return render_markdown(built)
