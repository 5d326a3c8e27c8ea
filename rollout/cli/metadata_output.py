"""What `rollout metadata check` and `rollout metadata diff` print: report lines, JUnit cases, diff lines.

Pure text from the validation results; the commands in `metadata_cmds` decide when.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.cli.app import terminal

if TYPE_CHECKING:
    from rollout.api.metadata import MetadataReport, RecordDiff, Violation


def _kind(v: Violation) -> str:
    """Which check found a violation: schema, invariants or budget."""
    if v.rule.startswith("schema"):
        return "schema"
    if v.rule in ("budget", "key"):
        return "budget"
    return "invariants"


def _line(v: Violation) -> str:
    return f"{v.path}: {v.message} [{v.rule}]"


def print_report(report: MetadataReport, baseline: Path | None) -> None:
    """The report as `metadata check` prints it: a verdict line, the violations shown, the diff counts."""
    out = terminal.print
    checks = ", ".join(report.checks) or "parse only"
    if report.ok:
        out(f"ok       {report.name}: valid ({checks}); digest {report.digest[:12]}")
    else:
        total = len(report.violations)
        rules = ", ".join(f"{rule} {n}" for rule, n in report.by_rule().items())
        out(f"invalid  {report.name}: {total} violation{'s' if total != 1 else ''} ({rules})")
        for v in report.shown:
            out(f"  {_line(v)}")
        if total > len(report.shown):
            out(f"  ... {total - len(report.shown)} more not shown ({total} violations in all)")
    if report.diff is not None and baseline is not None:
        s = report.diff.summary()
        out(
            f"  against {baseline} by {s['key']}: {s['added']} added, {s['removed']} removed, "
            f"{s['changed']} changed, {s['unchanged']} unchanged ({s['old_total']} -> {s['new_total']} records)"
        )


def junit_cases(report: MetadataReport, classname: str) -> list[Any]:
    """One JUnit test case per check that ran (or found something), failed when it found violations."""
    from rollout.cli.junit import Case

    kinds = list(report.checks)
    kinds += sorted({_kind(v) for v in report.violations} - set(kinds))
    cases = []
    for kind in kinds:
        found = [v for v in report.violations if _kind(v) == kind]
        failure = None
        if found:
            n = len(found)
            lines = [f"{n} {kind} violation{'s' if n != 1 else ''}", *(_line(v) for v in found[: report.max_shown])]
            if n > report.max_shown:
                lines.append(f"... {n - report.max_shown} more not shown")
            failure = "\n".join(lines)
        cases.append(Case(name=kind, classname=classname, failure=failure))
    return cases


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _record_name(key: Any, field: str) -> str:
    # A bare number would read as a list index: `instruments[2]`; say which field it is.
    return key if isinstance(key, str) else f"{field}={json.dumps(key, ensure_ascii=False)}"


def diff_lines(diff: RecordDiff, limit: int) -> list[str]:
    """Added and removed records, field-level changes and notes, each list capped at `limit`."""
    collection, _, field = diff.key.removeprefix("$.").partition("[].")

    def name(key: Any) -> str:
        return f"{collection}[{_record_name(key, field)}]"

    lines = [f"added ({len(diff.added)}):"]
    lines += [f"  + {name(r.key)} at {r.path}" for r in diff.added[:limit]]
    if len(diff.added) > limit:
        lines.append(f"  ... {len(diff.added) - limit} more added records (raise --limit to see them)")
    lines.append(f"removed ({len(diff.removed)}):")
    lines += [f"  - {name(r.key)} (was {r.path})" for r in diff.removed[:limit]]
    if len(diff.removed) > limit:
        lines.append(f"  ... {len(diff.removed) - limit} more removed records (raise --limit to see them)")
    lines.append(f"changed ({len(diff.changed)}):")
    for change in diff.changed[:limit]:
        record = name(change.key)
        for f in change.fields:
            where = record if f.field == "." else f"{record}.{f.field}"
            before = "(absent)" if f.kind == "added" else _show(f.old)
            after = "(absent)" if f.kind == "removed" else _show(f.new)
            lines.append(f"  ~ {where}: {before} -> {after}")
    if len(diff.changed) > limit:
        lines.append(f"  ... {len(diff.changed) - limit} more changed records (raise --limit to see them)")
    lines += [f"note: {p.path}: {p.message}" for p in diff.problems[:limit]]
    if len(diff.problems) > limit:
        lines.append(f"note: ... {len(diff.problems) - limit} more notes (raise --limit to see them)")
    return lines
