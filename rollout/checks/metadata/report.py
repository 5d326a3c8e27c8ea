"""One validation of a document (schema, invariants, change budget) and the report of all it found."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rollout.checks.metadata.diff import Budget, RecordDiff, check_budget, diff_records
from rollout.checks.metadata.document import document_digest
from rollout.checks.metadata.invariants import Invariants, check_invariants
from rollout.checks.metadata.schema import CompiledSchema, schema_violations
from rollout.checks.metadata.violation import MAX_SHOWN, Violation
from rollout.errors import MetadataError


@dataclass(frozen=True)
class MetadataReport:
    """Everything one validation found; `violations` is complete, `shown` is capped."""

    name: str
    digest: str
    violations: tuple[Violation, ...]
    checks: tuple[str, ...]
    baseline_digest: str | None = None
    diff: RecordDiff | None = None
    max_shown: int = MAX_SHOWN

    @property
    def ok(self) -> bool:
        """True when nothing was violated."""
        return not self.violations

    @property
    def shown(self) -> tuple[Violation, ...]:
        """The first `max_shown` violations, for display."""
        return self.violations[: self.max_shown]

    def by_rule(self) -> dict[str, int]:
        """Violation counts per rule."""
        counts: dict[str, int] = {}
        for v in self.violations:
            counts[v.rule] = counts.get(v.rule, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for `--json` and the journal (violations capped at `max_shown`)."""
        return {
            "name": self.name,
            "ok": self.ok,
            "checks": list(self.checks),
            "digest": self.digest,
            "baseline_digest": self.baseline_digest,
            "violation_count": len(self.violations),
            "by_rule": self.by_rule(),
            "violations": [v.to_dict() for v in self.shown],
            "truncated": len(self.violations) > len(self.shown),
            "diff": self.diff.summary() if self.diff is not None else None,
        }


def validate_document(
    doc: Any,
    *,
    name: str = "document",
    schema: Mapping[str, Any] | CompiledSchema | None = None,
    invariants: Invariants | None = None,
    baseline: Any = None,
    key: str | None = None,
    budget: Budget | None = None,
    max_shown: int = MAX_SHOWN,
) -> MetadataReport:
    """Run schema, invariants and (with a baseline and key) the change budget; report all."""
    violations: list[Violation] = []
    checks: list[str] = []
    if schema is not None:
        checks.append("schema")
        violations.extend(schema_violations(doc, schema))
    if invariants is not None:
        checks.append("invariants")
        violations.extend(check_invariants(doc, invariants, baseline, key=key))
    diff = None
    if baseline is not None and key is not None:
        diff = diff_records(baseline, doc, key)
        found = check_budget(diff, budget, diff.old_total) if budget is not None else diff.problems
        if budget is not None:
            checks.append("budget")
        # A duplicate key is found by both `unique` and the diff; report it once.
        reported = {(v.path, v.rule) for v in violations}
        violations.extend(v for v in found if (v.path, v.rule) not in reported)
    elif budget is not None:
        raise MetadataError("a change budget needs a baseline document and a record key")
    return MetadataReport(
        name=name,
        digest=document_digest(doc),
        violations=tuple(violations),
        checks=tuple(checks),
        baseline_digest=document_digest(baseline) if baseline is not None else None,
        diff=diff,
        max_shown=max_shown,
    )
