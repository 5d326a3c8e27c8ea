"""`rollout metadata check` and `rollout metadata diff`: metadata validation on its own, for CI.

Documents come from local files only; nothing here touches a target. The validation
library (and through it jsonschema, ~100 ms to import) is imported inside the commands:
registering them must cost `rollout --help` nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from rollout.cli.app import app, fail, terminal

if TYPE_CHECKING:
    from rollout.checks.metadata import MetadataReport, RecordDiff, Violation
    from rollout.errors import RolloutError

# Only typer and the app are imported here: the validation library (and jsonschema) and
# even the error classes are imported inside the commands, so `rollout --help` stays lean.

metadata_app = typer.Typer(
    name="metadata",
    help="Validate metadata documents (schema, invariants, change budget) and diff two versions, for CI.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(metadata_app, name="metadata")

Format = Literal["json", "yaml", "auto"]
DEFAULT_LIMIT = 20
_COUNT_OR_PERCENT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*\Z")


# --------------------------------------------------------------------------- input


def _usage(message: str) -> RolloutError:
    from rollout.errors import UsageError

    return UsageError(message)


def _read_document(path: Path, fmt: Format) -> Any:
    """Parse one document file; UsageError/MetadataError (exit 2) naming the file."""
    from rollout.checks.metadata import parse_document
    from rollout.errors import MetadataError, UsageError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return parse_document(data, fmt=fmt, name=str(path))
    except MetadataError as exc:
        if str(path) in str(exc):
            raise
        raise MetadataError(f"{path}: {exc}") from exc


def _format(value: str) -> Format:
    if value not in ("json", "yaml", "auto"):
        raise typer.BadParameter(f"expected json, yaml or auto, got {value!r}", param_hint="--format")
    return value  # type: ignore[return-value]


def _check_path(option: str, path: str) -> None:
    """A malformed key path is a bad argument: say which option carried it."""
    from rollout.checks.metadata import parse_key_path
    from rollout.errors import MetadataError

    try:
        parse_key_path(path)
    except MetadataError as exc:
        raise MetadataError(f"{option}: {exc}") from exc


def _check_key(key: str) -> None:
    """A record key names one list and a field of its records: `instruments[].symbol`."""
    from rollout.checks.metadata import EACH, parse_key_path

    _check_path("--key", key)
    tokens = parse_key_path(key)
    if sum(1 for t in tokens if t is EACH) != 1 or tokens[-1] is EACH:
        raise _usage(f"--key {key!r}: a record key needs exactly one [] followed by a field, like instruments[].symbol")


def _record_list_present(doc: Any, key: str) -> bool:
    """Whether the list part of a record key (`instruments` of `instruments[].symbol`) exists in `doc`."""
    from rollout.checks.metadata import EACH, parse_key_path

    value = doc
    for token in parse_key_path(key):
        if token is EACH:
            return isinstance(value, list)
        if not isinstance(value, dict) or token not in value:
            return False
        value = value[token]
    return False


def _require_records(key: str, docs: list[tuple[Path, Any]]) -> None:
    """A key that reaches no list in any document is a typo, not an empty collection."""
    if not any(_record_list_present(doc, key) for _, doc in docs):
        names = " or ".join(str(p) for p, _ in docs)
        collection = key.partition("[]")[0]
        raise _usage(f"--key {key!r}: no list at {collection!r} in {names}")


def parse_max_changed(value: str) -> tuple[int | None, float | None]:
    """`--max-changed 5%` -> (None, 5.0); `--max-changed 3` -> (3, None)."""
    match = _COUNT_OR_PERCENT.match(value)
    if match is None:
        raise typer.BadParameter(
            f"expected a record count (3) or a percentage (5%), got {value!r}", param_hint="--max-changed"
        )
    number, percent = match.groups()
    if percent:
        pct = float(number)
        if not 0 <= pct <= 100:
            raise typer.BadParameter(f"percentage {value!r} is out of range 0%..100%", param_hint="--max-changed")
        return None, pct
    if "." in number:
        raise typer.BadParameter(f"a record count is a whole number, got {value!r}", param_hint="--max-changed")
    return int(number), None


def parse_reference(value: str) -> tuple[str, str]:
    """`markets[].instrument=instruments[].symbol` -> (source, target)."""
    source, sep, target = value.partition("=")
    if not sep or not source.strip() or not target.strip():
        raise typer.BadParameter(
            f"expected FROM=TO (like markets[].instrument=instruments[].symbol), got {value!r}",
            param_hint="--references",
        )
    return source.strip(), target.strip()


# --------------------------------------------------------------------------- output


def _kind(v: Violation) -> str:
    """Which check found a violation: schema, invariants or budget."""
    if v.rule.startswith("schema"):
        return "schema"
    if v.rule in ("budget", "key"):
        return "budget"
    return "invariants"


def _line(v: Violation) -> str:
    return f"{v.path}: {v.message} [{v.rule}]"


def _print_report(report: MetadataReport, baseline: Path | None) -> None:
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


def _junit_cases(report: MetadataReport, classname: str) -> list[Any]:
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


# --------------------------------------------------------------------------- check


@metadata_app.command(
    "check",
    # \b keeps click from re-wrapping the examples, so they can be copied as they are.
    epilog="Examples:\n\n\b\n"
    "  rollout metadata check release.json --schema schema.json --unique 'instruments[].symbol'\n\n\b\n"
    "  rollout metadata check v2.json --schema schema.json --baseline v1.json \\\n"
    "      --key 'instruments[].symbol' --max-changed 10% \\\n"
    "      --references 'markets[].instrument=instruments[].symbol'\n\n\b\n"
    "  rollout metadata check v2.json --schema schema.json --json --junit metadata.xml",
)
def check_command(
    doc: Annotated[Path, typer.Argument(help="The document to validate.", show_default=False)],
    schema: Annotated[
        Path, typer.Option("--schema", help="JSON Schema (draft 2020-12) file, JSON or YAML.", show_default=False)
    ],
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", help="The live version: enables the change budget (needs --key)."),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Record key path for the budget and diff, like instruments[].symbol.")
    ] = None,
    max_changed: Annotated[
        str | None,
        typer.Option("--max-changed", help="Most records that may be touched: a count (5) or a percentage (10%)."),
    ] = None,
    allow_removed: Annotated[
        bool, typer.Option("--allow-removed", help="Let records of the baseline disappear.")
    ] = False,
    allow_added: Annotated[
        bool, typer.Option("--allow-added/--no-allow-added", help="Whether new records may appear.")
    ] = True,
    unique: Annotated[
        list[str] | None, typer.Option("--unique", help="Key path whose values must be distinct (repeatable).")
    ] = None,
    references: Annotated[
        list[str] | None,
        typer.Option(
            "--references", help="FROM=TO: every value at FROM must occur at TO (repeatable).", show_default=False
        ),
    ] = None,
    non_empty: Annotated[
        list[str] | None, typer.Option("--non-empty", help="Key path that must be present and not empty (repeatable).")
    ] = None,
    immutable: Annotated[
        list[str] | None,
        typer.Option("--immutable", help="Key path that must not change against the baseline (repeatable)."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Format of DOC and the baseline: json, yaml or auto.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write JUnit XML to this file.")] = None,
) -> None:
    """Validate a metadata document: schema, invariants, change budget (exit 0 valid, 3 violations, 2 bad input)."""
    from rollout.checks import metadata as md
    from rollout.errors import ExitStatus, MetadataError, RolloutError

    doc_format = _format(fmt)
    refs = [parse_reference(r) for r in references or []]
    limit = parse_max_changed(max_changed) if max_changed is not None else (None, None)
    try:
        if baseline is not None and key is None:
            raise _usage("--baseline needs --key to match records (like --key 'instruments[].symbol')")
        if max_changed is not None and baseline is None:
            raise _usage("--max-changed needs --baseline (the version the change is measured against)")
        if immutable and baseline is None:
            raise _usage("--immutable needs --baseline (the version that must not change)")
        for option, paths in (
            ("--unique", unique),
            ("--non-empty", non_empty),
            ("--immutable", immutable),
            ("--references", [p for pair in refs for p in pair]),
        ):
            for path in paths or []:
                _check_path(option, path)
        if key is not None:
            _check_key(key)
        data = _read_document(doc, doc_format)
        schema_doc = _read_document(schema, "auto")
        try:
            compiled = md.compile_schema(schema_doc)
        except MetadataError as exc:
            raise MetadataError(f"{schema}: {exc}") from exc
        base_doc = _read_document(baseline, doc_format) if baseline is not None else None
        if baseline is not None and key is not None:
            _require_records(key, [(baseline, base_doc), (doc, data)])
            md.require_match(key, data, base_doc, role="--key")
        # a path that matches nothing checks nothing: a typo must not read as "valid"
        for option, paths in (("--unique", unique), ("--references", [p for pair in refs for p in pair])):
            for path in paths or []:
                md.require_match(path, data, role=option)
        for path in immutable or []:
            md.require_match(path, data, base_doc, role="--immutable")
        invariants = md.Invariants(
            unique=tuple(unique or ()),
            references=tuple(refs),
            non_empty=tuple(non_empty or ()),
            immutable=tuple(immutable or ()),
        )
        has_invariants = bool(unique or refs or non_empty or immutable)
        report = md.validate_document(
            data,
            name=str(doc),
            schema=compiled,
            invariants=invariants if has_invariants else None,
            baseline=base_doc,
            key=key if baseline is not None else None,
            budget=md.Budget(
                max_changed=limit[0],
                max_changed_pct=limit[1],
                allow_added=allow_added,
                allow_removed=allow_removed,
            )
            if baseline is not None
            else None,
        )
        if junit is not None:
            from rollout.cli.junit import write_junit

            write_junit(junit, "rollout metadata check", _junit_cases(report, str(doc)))
    except RolloutError as exc:
        fail(exc)
    if as_json:
        data = {
            **report.to_dict(),
            "file": str(doc),
            "schema_file": str(schema),
            "baseline_file": str(baseline) if baseline is not None else None,
        }
        terminal.print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        _print_report(report, baseline)
    raise typer.Exit(int(ExitStatus.SUCCESS if report.ok else ExitStatus.REFUSED))


# --------------------------------------------------------------------------- diff


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


@metadata_app.command(
    "diff",
    epilog="Examples:\n\n\b\n"
    "  rollout metadata diff v1.json v2.json --key 'instruments[].symbol'\n\n\b\n"
    "  rollout metadata diff live.json release.json --key 'instruments[].symbol' --json --limit 100",
)
def diff_command(
    old: Annotated[Path, typer.Argument(help="The old version (A).", show_default=False)],
    new: Annotated[Path, typer.Argument(help="The new version (B).", show_default=False)],
    key: Annotated[str, typer.Option("--key", help="Record key path, like instruments[].symbol.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the diff as JSON.")] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="Show at most this many records of each kind (and notes).")
    ] = DEFAULT_LIMIT,
    fmt: Annotated[str, typer.Option("--format", help="Format of both documents: json, yaml or auto.")] = "auto",
) -> None:
    """Records added, removed and changed between two versions, matched by key (exit 0; 2 on bad input)."""
    from rollout.checks import metadata as md
    from rollout.errors import RolloutError

    doc_format = _format(fmt)
    try:
        _check_key(key)
        old_doc = _read_document(old, doc_format)
        new_doc = _read_document(new, doc_format)
        _require_records(key, [(old, old_doc), (new, new_doc)])
        md.require_match(key, new_doc, old_doc, role="--key")
        diff = md.diff_records(old_doc, new_doc, key)
    except RolloutError as exc:
        fail(exc)
    if as_json:
        data = {**diff.to_dict(limit), "old_file": str(old), "new_file": str(new)}
        terminal.print(json.dumps(data, indent=2, ensure_ascii=False))
        raise typer.Exit(0)
    s = diff.summary()
    terminal.print(
        f"{old} -> {new} by {key}: {s['added']} added, {s['removed']} removed, {s['changed']} changed, "
        f"{s['unchanged']} unchanged ({s['old_total']} -> {s['new_total']} records)"
    )
    for line in diff_lines(diff, limit):
        terminal.print(line)
    raise typer.Exit(0)
