"""The incident report rendered as Markdown, ready to paste into a postmortem.

One function per section of the document; `render_markdown` puts them in order. The HTML
page is built from this text, so a change here shows in both.
"""

from __future__ import annotations

from typing import Any

from rollout.report.clock import clock as _clock
from rollout.report.records import NO_IMPACT, FirstFailure, Impact, IncidentReport, Rollback
from rollout.report.timeline import parity_fact_summary

FOLLOW_UP_ROWS = 3


def _utc(ts: str | None) -> str:
    if ts is None:
        return "-"
    return ts.replace("T", " ").replace("Z", " UTC")


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _summary(report: IncidentReport) -> list[str]:
    s = report.summary
    reached = ", ".join(s.hosts_reached) or "none"
    return [
        "## Summary",
        "",
        "| | |",
        "|---|---|",
        f"| Run | `{s.run_id}` |",
        f"| Plan | {_cell(s.plan)} (`{_cell(s.plan_file)}`) |",
        f"| Plan digest | `{s.plan_digest}` |",
        f"| Environment | {_cell(s.environment)}{' (rehearsal)' if s.rehearsal else ''} |",
        f"| Operator | {_cell(s.operator)} |",
        f"| Start | {_utc(s.start)} |",
        f"| End | {_utc(s.end)} |",
        f"| Duration | {_secs(s.duration_seconds)} |",
        f"| Outcome | **{s.outcome}** |",
        f"| Hosts reached | {len(s.hosts_reached)} of {len(s.hosts)}: {_cell(reached)} |",
    ]


def _rehearsal(report: IncidentReport) -> list[str]:
    """A --rehearse-rollback run's three phases; nothing for a plain run."""
    if not report.rehearsal:
        return []
    out = ["## Rehearsal", "", "| phase | outcome | duration |", "|---|---|---|"]
    for p in report.rehearsal:
        seconds = p.get("seconds")
        out.append(
            f"| {_cell(p.get('phase'))} | **{_cell(p.get('outcome'))}** | {_secs(seconds) if isinstance(seconds, int | float) else 'did not end'} |"
        )
    return out


def _impact(impact: Impact | None) -> list[str]:
    out = ["## Impact", ""]
    if impact is None:
        return [*out, f"{NO_IMPACT.capitalize()}."]
    return [
        *out,
        f"- OUTAGE BEGINS: {_utc(impact.begins)} (first failing guard probe)",
        f"- Detected (guard tripped): {_utc(impact.detected)}",
        f"- Rollback started: {_utc(impact.rollback_started)}",
        f"- MITIGATED (rollback finished): {_utc(impact.mitigated)}",
        f"- ENDS (guards green again): {_utc(impact.ends) if impact.ends else 'NOT RECOVERED'}",
        "",
        "| measure | time |",
        "|---|---|",
        f"| impact window | {_secs(impact.duration_seconds)} |",
        f"| detection (first failing probe to trip) | {_secs(impact.detection_seconds)} |",
        f"| time to rollback start | {_secs(impact.to_rollback_seconds)} |",
        f"| time to recovery | {_secs(impact.to_recovery_seconds)} |",
        "",
        f"- Affected hosts: {', '.join(impact.hosts)}",
        f"- Affected checks: {', '.join(repr(c) for c in impact.checks)}",
    ]


def _timeline(report: IncidentReport) -> list[str]:
    out = ["## Timeline", ""]
    out.append("All times UTC" + (f", {report.summary.start[:10]}" if report.summary.start else "") + ".")
    phase: str | None = None
    for entry in report.timeline:
        if entry.phase != phase:
            phase = entry.phase
            out.extend(["", f"### {phase}", ""])
        text = f"**{entry.text}**" if entry.marker else entry.text
        out.append(f"- {_clock(entry.time)} (UTC): {text}")
    return out


def _first_failure(ff: FirstFailure | None) -> list[str]:
    out = ["## What failed first", ""]
    if ff is None:
        return [*out, "Nothing failed."]
    out += [
        f"{ff.summary}",
        "",
        f"- Kind: {ff.kind}",
        f"- Host: {ff.host or '-'}",
        f"- Step: {ff.step or '-'}",
        f"- Check: {ff.check or '-'}",
        f"- Command: {f'`{ff.command}`' if ff.command else '-'}",
        f"- Exit code: {'-' if ff.exit_code is None else ff.exit_code}",
    ]
    if ff.output_tail:
        out += ["", f"Last {len(ff.output_tail)} line(s) of output:", "", "```text", *ff.output_tail, "```"]
    return out


def _rollback_actions(rb: Rollback) -> list[str]:
    if not rb.actions:
        return []
    out = ["| # | time (UTC) | host | step undone | outcome | exit | duration |", "|---|---|---|---|---|---|---|"]
    for i, a in enumerate(rb.actions, 1):
        exit_code = "-" if a.exit_code is None else a.exit_code
        out.append(
            f"| {i} | {_clock(a.time)} | {_cell(a.host)} | {_cell(a.step)} | {a.outcome} | {exit_code} | "
            f"{_secs(a.duration_seconds)} |"
        )
    return [*out, ""]


def _still_applied(rb: Rollback) -> list[str]:
    if not (rb.remaining or rb.irreversible_left or rb.failed):
        return ["Nothing remains applied."]
    out = [f"- Rollback FAILED on {f.get('host')}, step {f.get('step')}: {f.get('summary')}" for f in rb.failed]
    for host, steps in rb.remaining.items():
        out.append(f"- Still applied on {host} (undo by hand, newest first): {', '.join(steps)}")
    for host, steps in rb.irreversible_left.items():
        out.append(f"- Irreversible steps left applied on {host}: {', '.join(steps)}")
    return out


def _rollback(rb: Rollback | None) -> list[str]:
    out = ["## Rollback", ""]
    if rb is None:
        return [*out, "Nothing was rolled back."]
    return [
        *out,
        f"Started {_utc(rb.started)}, finished {_utc(rb.finished)}: {rb.outcome or 'unfinished'}.",
        "",
        *_rollback_actions(rb),
        f"Verified: {rb.verification}.",
        "",
        *_still_applied(rb),
    ]


def _parity(facts: dict[str, Any] | None) -> list[str]:
    """The parity facts as gathered before the first change (only for plans that declare some)."""
    if facts is None:
        return []
    out = ["## Parity facts", "", "As gathered on every host before the first change.", ""]
    out += ["| fact | expect | values |", "|---|---|---|"]
    for name, fact in facts.items():
        expect = fact.get("expect") or "equal"
        if expect == "template":
            expect = f"template `{_cell(fact.get('template'))}`"
        out.append(f"| {_cell(name)} | {expect} | {_cell(parity_fact_summary({**fact, 'expect': None}))} |")
    return out


def _evidence(report: IncidentReport) -> list[str]:
    e = report.evidence
    return [
        "## Evidence",
        "",
        f"- Plan digest: `{e.plan_digest}`",
        f"- Journal head hash: `{e.journal_head}` ({e.journal_records} events)",
        f"- Tool version: rollout {e.tool_version}",
        f"- Verify the journal: `{e.verify_command}`",
    ]


def _follow_ups() -> list[str]:
    rows = [f"| {i} | | | | |" for i in range(1, FOLLOW_UP_ROWS + 1)]
    return ["## Follow-ups", "", "| # | action item | owner | due | status |", "|---|---|---|---|---|", *rows]


def render_markdown(report: IncidentReport) -> str:
    """The report as Markdown, ready to paste into a postmortem."""
    s = report.summary
    sections = [
        _summary(report),
        *([_rehearsal(report)] if report.rehearsal else []),
        _impact(report.impact),
        _timeline(report),
        _first_failure(report.first_failure),
        _rollback(report.rollback),
        _parity(report.parity),
        _evidence(report),
        _follow_ups(),
    ]
    out = [f"# Incident report: {s.plan} on {s.environment} ({s.outcome})"]
    for section in sections:
        if section:
            out += ["", *section]
    out.append("")  # the document ends with a newline
    return "\n".join(out)
