"""`rollout report`: the incident report of a run as Markdown, JSON or HTML.

Imported at start-up to register the command: the API (and the report modules) inside it.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from rollout.atomic import write_atomic
from rollout.cli.app import StateDirOption, app, fail, terminal
from rollout.errors import RolloutError, UsageError


class ReportFormat(StrEnum):
    """The report's output formats."""

    md = "md"
    json = "json"
    html = "html"


@app.command(
    epilog="Examples:\n\n  rollout report last\n\n  rollout report 20261123T223012Z --format html -o incident.html",
)
def report(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN", help="The run id (or a unique prefix, or 'last').", show_default=False)
    ],
    fmt: Annotated[ReportFormat, typer.Option("--format", "-f", help="Output format.")] = ReportFormat.md,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.", show_default=False)
    ] = None,
    state_dir_opt: StateDirOption = None,
) -> None:
    """Incident report: summary, impact window, timeline, first failure, rollback, evidence."""
    from rollout import api

    try:
        text = api.report(run_id, state_dir=state_dir_opt, fmt=fmt.value)
    except RolloutError as exc:
        fail(exc)
    if output is None:
        terminal.out.file.write(text)
        terminal.out.file.flush()
        return
    try:
        # reports quote command output: keep them as private as the journal they come from
        write_atomic(output, text, mode=0o600)
    except OSError as exc:
        fail(UsageError(f"cannot write {output}: {exc.strerror or exc}"))
    terminal.error(f"wrote {output}")
