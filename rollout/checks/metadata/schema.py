"""A JSON Schema (draft 2020-12) checked once and applied to many documents.

jsonschema is imported inside `CompiledSchema`, so importing rollout stays fast. Valid
documents are settled by the generated checker of `fastschema`; only a document it cannot
prove valid pays for jsonschema's `iter_errors`, which names every violation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollout.checks.metadata.fastschema import compile_fast_check
from rollout.checks.metadata.keypath import Loc, json_path
from rollout.checks.metadata.violation import MAX_MESSAGE_CHARS, Violation
from rollout.errors import MetadataError


class CompiledSchema:
    """A checked JSON Schema (draft 2020-12), compiled once and reused across documents.

    `violations()` reports what `Draft202012Validator.iter_errors` reports. Documents are
    first run through a fast checker compiled from the common keywords; when it proves a
    document valid, iter_errors (some 40 µs a record) is skipped. Schemas that use any
    other keyword always go through jsonschema alone.
    """

    def __init__(self, schema: Mapping[str, Any] | bool) -> None:
        # Deferred: jsonschema costs ~100 ms to import and only metadata checks need it.
        from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
        from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            where = json_path(exc.absolute_path) if exc.absolute_path else "$"
            raise MetadataError(f"invalid JSON Schema at {where}: {exc.message}") from exc
        self.schema = schema
        self._validator: Any = Draft202012Validator(schema)
        self._fast = compile_fast_check(schema)

    def violations(self, doc: Any) -> list[Violation]:
        """All schema violations of `doc`, sorted by path then keyword."""
        if self._fast is not None and self._fast(doc):
            return []
        found = []
        for error in self._validator.iter_errors(doc):
            loc = tuple(error.absolute_path)
            message = error.message
            if len(message) > MAX_MESSAGE_CHARS:
                message = message[: MAX_MESSAGE_CHARS - 3] + "..."
            found.append((_sort_key(loc), str(error.validator), json_path(loc), message))
        found.sort(key=lambda f: (f[0], f[1]))
        return [Violation(path, f"schema:{keyword}", message) for _, keyword, path, message in found]


def _sort_key(loc: Loc) -> tuple[tuple[int, int, str], ...]:
    # Index 2 sorts before index 10, and indexes before names.
    return tuple((0, s, "") if isinstance(s, int) else (1, 0, s) for s in loc)


def compile_schema(schema: Mapping[str, Any] | bool) -> CompiledSchema:
    """Check and compile a schema once; MetadataError if the schema itself is invalid."""
    return CompiledSchema(schema)


def schema_violations(doc: Any, schema: Mapping[str, Any] | CompiledSchema) -> list[Violation]:
    """All JSON Schema (draft 2020-12) violations of `doc`, sorted by JSON path."""
    compiled = schema if isinstance(schema, CompiledSchema) else CompiledSchema(schema)
    return compiled.violations(doc)
