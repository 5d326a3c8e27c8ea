"""Metadata validation: schema, invariants, change budget and read-back, as pure functions.

A metadata document (instruments, markets, feature flags...) is plain JSON-shaped data.
Before a change it is checked against a JSON Schema, invariants between its records
(unique keys, references between collections, non-empty values, immutable fields, value
bounds) and a change budget against the live version; after the change, a read-back
compares what the live system serves with what was intended.

Key paths name values: `version` is a field, `instruments[].symbol` is the field `symbol`
of every element of the list `instruments`, `a.b[].c` nests. Violations are located by
JSON paths of the concrete value: `$.instruments[17].tick_size`.

This package never does I/O and never raises for a bad document: every problem of the
document is a `Violation`, including a rule whose key path matches no value at all (a typo
like `instruments[].symbl`, or a field the whole document lacks), which would otherwise
check nothing and pass. It raises `MetadataError` only when the input cannot be read at
all, a schema or key path is itself malformed, or a record key is found in no record of
either version. jsonschema is imported inside the functions that need it, so importing
rollout stays fast; YAML goes through `rollout.planfile`, the one module that imports yaml.

One concern per module: `keypath` (the path language), `document` (parse, canonical form,
digest), `schema` (compiled JSON Schema) with `fastschema` (its generated fast path),
`invariants`, `diff` (record diff and change budget), `readback`, `report` (one whole
validation), on `violation` and `values` (JSON equality).
"""

from rollout.checks.metadata.diff import (
    Budget,
    FieldChange,
    RecordChange,
    RecordDiff,
    RecordRef,
    check_budget,
    diff_records,
)
from rollout.checks.metadata.document import canonical_bytes, document_digest, parse_document
from rollout.checks.metadata.invariants import Bound, Invariants, check_invariants
from rollout.checks.metadata.keypath import (
    EACH,
    Loc,
    Token,
    format_key_path,
    json_path,
    parse_key_path,
    require_match,
    unmatched_path_error,
)
from rollout.checks.metadata.readback import MAX_DIFF_LINES, ReadBack, read_back
from rollout.checks.metadata.report import MetadataReport, validate_document
from rollout.checks.metadata.schema import CompiledSchema, compile_schema, schema_violations
from rollout.checks.metadata.violation import MAX_MESSAGE_CHARS, MAX_SHOWN, Violation

__all__ = [
    "EACH",
    "MAX_DIFF_LINES",
    "MAX_MESSAGE_CHARS",
    "MAX_SHOWN",
    "Bound",
    "Budget",
    "CompiledSchema",
    "FieldChange",
    "Invariants",
    "Loc",
    "MetadataReport",
    "ReadBack",
    "RecordChange",
    "RecordDiff",
    "RecordRef",
    "Token",
    "Violation",
    "canonical_bytes",
    "check_budget",
    "check_invariants",
    "compile_schema",
    "diff_records",
    "document_digest",
    "format_key_path",
    "json_path",
    "parse_document",
    "parse_key_path",
    "read_back",
    "require_match",
    "schema_violations",
    "unmatched_path_error",
    "validate_document",
]
