"""The incident report of a run: read its journal, build the report, write report.md.

The parts live in their own modules: the data (rollout.report.records), building it from
the journal (rollout.report.build), the Markdown (rollout.report.markdown) and the
swimlane geometry the HTML page draws (rollout.report.swimlanes). Their public names are
re-exported here, where callers have always found them.
"""

from __future__ import annotations

from pathlib import Path

from rollout.atomic import write_atomic
from rollout.errors import JournalError
from rollout.journal import read_journal
from rollout.report.build import OUTPUT_TAIL_LINES, build_report
from rollout.report.markdown import FOLLOW_UP_ROWS, render_markdown
from rollout.report.records import (
    NO_IMPACT,
    Bar,
    Evidence,
    FirstFailure,
    GuardSegment,
    Impact,
    IncidentReport,
    Rollback,
    RollbackAction,
    Summary,
    TimelineEntry,
    render_json,
    report_from_dict,
)
from rollout.runstore import RunDir

__all__ = [
    "FOLLOW_UP_ROWS",
    "NO_IMPACT",
    "OUTPUT_TAIL_LINES",
    "Bar",
    "Evidence",
    "FirstFailure",
    "GuardSegment",
    "Impact",
    "IncidentReport",
    "Rollback",
    "RollbackAction",
    "Summary",
    "TimelineEntry",
    "build_report",
    "load_report",
    "render_json",
    "render_markdown",
    "report_from_dict",
    "write_markdown_report",
]


def load_report(run: RunDir) -> IncidentReport:
    """Read a run's journal and build its report."""
    reading = read_journal(run.journal)
    return build_report(reading.records, run_id=run.run_id)


def write_markdown_report(run: RunDir) -> Path:
    """Write report.md into the run directory (owner-only) and return its path."""
    text = render_markdown(load_report(run))
    target = run.report
    try:
        write_atomic(target, text, mode=0o600)
    except OSError as exc:
        raise JournalError(f"cannot write the report {target}: {exc.strerror or exc}") from exc
    return target
