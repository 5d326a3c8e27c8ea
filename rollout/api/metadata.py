"""Metadata validation on its own, as `rollout metadata check` and `rollout metadata diff` do it.

Pure functions over parsed documents: nothing here reads files or touches a target, and a
bad document is a report full of violations, not an exception. See `rollout.checks.metadata`
for the key-path language and what each check means.
"""

from rollout.checks.metadata import (
    EACH,
    Budget,
    Invariants,
    MetadataReport,
    RecordDiff,
    Violation,
    compile_schema,
    diff_records,
    parse_document,
    parse_key_path,
    require_match,
    validate_document,
)

__all__ = [
    "EACH",
    "Budget",
    "Invariants",
    "MetadataReport",
    "RecordDiff",
    "Violation",
    "compile_schema",
    "diff_records",
    "parse_document",
    "parse_key_path",
    "require_match",
    "validate_document",
]
