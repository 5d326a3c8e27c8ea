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

from rollout.cli.app import app, fail, gc_paused, terminal
from rollout.cli.metadata_output import diff_lines, junit_cases, print_report

if TYPE_CHECKING:
    from rollout.api.metadata import Budget, Invariants, MetadataReport
    from rollout.errors import RolloutError

# Only typer, the app and the output module (itself plain text on the app) are imported here:
# the validation library (and jsonschema) and even the error classes are imported inside
# the commands, so `rollout --help` stays lean.

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
    from rollout.api.metadata import parse_document
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
    from rollout.api.metadata import parse_key_path
    from rollout.errors import MetadataError

    try:
        parse_key_path(path)
    except MetadataError as exc:
        raise MetadataError(f"{option}: {exc}") from exc


def _check_key(key: str) -> None:
    """A record key names one list and a field of its records: `instruments[].symbol`."""
    from rollout.api.metadata import EACH, parse_key_path

    _check_path("--key", key)
    tokens = parse_key_path(key)
    if sum(1 for t in tokens if t is EACH) != 1 or tokens[-1] is EACH:
        raise _usage(f"--key {key!r}: a record key needs exactly one [] followed by a field, like instruments[].symbol")


def _record_list_present(doc: Any, key: str) -> bool:
    """Whether the list part of a record key (`instruments` of `instruments[].symbol`) exists in `doc`."""
    from rollout.api.metadata import EACH, parse_key_path

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
    from rollout.api import metadata as md
    from rollout.errors import ExitStatus, RolloutError

    doc_format = _format(fmt)
    refs = [parse_reference(r) for r in references or []]
    limit = parse_max_changed(max_changed) if max_changed is not None else (None, None)
    invariants = md.Invariants(
        unique=tuple(unique or ()),
        references=tuple(refs),
        non_empty=tuple(non_empty or ()),
        immutable=tuple(immutable or ()),
    )
    budget = md.Budget(
        max_changed=limit[0],
        max_changed_pct=limit[1],
        allow_added=allow_added,
        allow_removed=allow_removed,
    )
    try:
        _check_options(baseline, key, max_changed, invariants)
        with gc_paused():
            report = _validate(doc, schema, baseline, key, doc_format, invariants, budget)
        if junit is not None:
            from rollout.cli.junit import write_junit

            write_junit(junit, "rollout metadata check", junit_cases(report, str(doc)))
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
        print_report(report, baseline)
    raise typer.Exit(int(ExitStatus.SUCCESS if report.ok else ExitStatus.REFUSED))


def _check_options(baseline: Path | None, key: str | None, max_changed: str | None, invariants: Invariants) -> None:
    """Options that need each other, and every key path well formed, before any file is read."""
    if baseline is not None and key is None:
        raise _usage("--baseline needs --key to match records (like --key 'instruments[].symbol')")
    if max_changed is not None and baseline is None:
        raise _usage("--max-changed needs --baseline (the version the change is measured against)")
    if invariants.immutable and baseline is None:
        raise _usage("--immutable needs --baseline (the version that must not change)")
    for option, paths in (
        ("--unique", invariants.unique),
        ("--non-empty", invariants.non_empty),
        ("--immutable", invariants.immutable),
        ("--references", [p for pair in invariants.references for p in pair]),
    ):
        for path in paths:
            _check_path(option, path)
    if key is not None:
        _check_key(key)


def _validate(
    doc: Path,
    schema: Path,
    baseline: Path | None,
    key: str | None,
    doc_format: Format,
    invariants: Invariants,
    budget: Budget,
) -> MetadataReport:
    """Read the files and run every check the options ask for."""
    from rollout.api import metadata as md
    from rollout.errors import MetadataError

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
    for option, paths in (
        ("--unique", invariants.unique),
        ("--references", [p for pair in invariants.references for p in pair]),
    ):
        for path in paths:
            md.require_match(path, data, role=option)
    for path in invariants.immutable:
        md.require_match(path, data, base_doc, role="--immutable")
    has_invariants = bool(invariants.unique or invariants.references or invariants.non_empty or invariants.immutable)
    return md.validate_document(
        data,
        name=str(doc),
        schema=compiled,
        invariants=invariants if has_invariants else None,
        baseline=base_doc,
        key=key if baseline is not None else None,
        budget=budget if baseline is not None else None,
    )


# --------------------------------------------------------------------------- diff


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
    from rollout.api import metadata as md
    from rollout.errors import RolloutError

    doc_format = _format(fmt)
    try:
        _check_key(key)
        with gc_paused():
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
