"""Two versions of a record list matched by key (added, removed, changed) and the change budget.

`diff_records` classifies every record; `check_budget` turns a diff into violations of
how much one change may touch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Literal

from rollout.checks.metadata.keypath import (
    _MISSING,
    Loc,
    Token,
    _field,
    _split_record_path,
    _walk,
    _where,
    json_path,
    parse_key_path,
    unmatched_path_error,
)
from rollout.checks.metadata.values import _hashable, _same, _show
from rollout.checks.metadata.violation import MAX_SHOWN, Violation


@dataclass(frozen=True)
class RecordRef:
    """A record by its key value and JSON path (in the document it belongs to)."""

    key: Any
    path: str


@dataclass(frozen=True)
class FieldChange:
    """One field of a record that differs: dotted path inside the record, old and new value."""

    field: str
    old: Any
    new: Any
    kind: Literal["changed", "added", "removed"] = "changed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (an absent side is left out)."""
        out: dict[str, Any] = {"field": self.field, "kind": self.kind}
        if self.kind != "added":
            out["old"] = self.old
        if self.kind != "removed":
            out["new"] = self.new
        return out


@dataclass(frozen=True)
class RecordChange:
    """A record present on both sides whose content differs."""

    key: Any
    path: str
    fields: tuple[FieldChange, ...]


@dataclass(frozen=True)
class RecordDiff:
    """Records of two versions matched by key: what was added, removed, changed, kept.

    `problems` holds what prevented an exact match (duplicate keys, records without a
    key, a missing list); such records take part only through their first occurrence.
    """

    key: str
    added: tuple[RecordRef, ...]
    removed: tuple[RecordRef, ...]
    changed: tuple[RecordChange, ...]
    unchanged: int
    old_total: int
    new_total: int
    problems: tuple[Violation, ...] = ()

    @property
    def touched(self) -> int:
        """Records added + removed + changed."""
        return len(self.added) + len(self.removed) + len(self.changed)

    @property
    def empty(self) -> bool:
        """True when both versions hold the same records."""
        return self.touched == 0

    def summary(self) -> dict[str, Any]:
        """Counts only, for reports and journals."""
        return {
            "key": self.key,
            "added": len(self.added),
            "removed": len(self.removed),
            "changed": len(self.changed),
            "unchanged": self.unchanged,
            "old_total": self.old_total,
            "new_total": self.new_total,
            "touched": self.touched,
        }

    def to_dict(self, limit: int = MAX_SHOWN) -> dict[str, Any]:
        """Counts plus up to `limit` records of each kind."""
        return {
            **self.summary(),
            "added_keys": [r.key for r in self.added[:limit]],
            "removed_keys": [r.key for r in self.removed[:limit]],
            "changes": [
                {"key": c.key, "path": c.path, "fields": [f.to_dict() for f in c.fields]} for c in self.changed[:limit]
            ],
            "problems": [p.to_dict() for p in self.problems[:limit]],
        }


def _records(doc: Any, list_tokens: Sequence[Token]) -> list[tuple[Loc, Any]]:
    loc, value = _walk(doc, list_tokens)[0]
    if not isinstance(value, list):
        return []
    return list(zip(zip(repeat(loc), range(len(value))), value, strict=True))


def _index(
    doc: Any, list_tokens: Sequence[Token], key_tokens: Sequence[Token]
) -> tuple[dict[Any, tuple[Loc, Any]], list[Violation], int, dict[Any, Any]]:
    """Records by hashable key (first wins), problems, record count, original key values."""
    index: dict[Any, tuple[Loc, Any]] = {}
    keys: dict[Any, Any] = {}
    problems: list[Violation] = []
    list_loc, value = _walk(doc, list_tokens)[0]
    if value is _MISSING or not isinstance(value, list):
        if value is not _MISSING:
            problems.append(Violation(_where(list_loc), "key", "is not a list of records"))
        return index, problems, 0, keys
    single = len(key_tokens) == 1 and isinstance(key_tokens[0], str)
    name = key_tokens[0] if single else ""
    key_str = ".".join(t for t in key_tokens if isinstance(t, str))
    for i, record in enumerate(value):
        # The one-field key is by far the common case; skip the generic walk for it.
        if single:
            k = record.get(name, _MISSING) if isinstance(record, dict) else _MISSING
        else:
            k = _field(record, key_tokens)
        loc = (list_loc, i)
        if k is _MISSING:
            problems.append(Violation(_where(loc), "key", f"record has no {key_str}"))
            continue
        h = k if isinstance(k, str) else _hashable(k)
        if h in index:
            problems.append(
                Violation(
                    _where(loc, *(t for t in key_tokens if isinstance(t, str))),
                    "unique",
                    f"duplicate key {_show(k)} (first at {_where(index[h][0])}); only the first is compared",
                )
            )
            continue
        index[h] = (loc, record)
        keys[h] = k
    return index, problems, len(value), keys


def _field_changes(old: Any, new: Any, prefix: str = "") -> list[FieldChange]:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [FieldChange(prefix or ".", old, new)]
    out: list[FieldChange] = []
    for name in old.keys() | new.keys():
        path = f"{prefix}.{name}" if prefix else name
        if name not in new:
            out.append(FieldChange(path, old[name], None, "removed"))
        elif name not in old:
            out.append(FieldChange(path, None, new[name], "added"))
        elif not _same(old[name], new[name]):
            if isinstance(old[name], dict) and isinstance(new[name], dict):
                out.extend(_field_changes(old[name], new[name], path))
            else:
                out.append(FieldChange(path, old[name], new[name]))
    out.sort(key=lambda c: c.field)
    return out


def _identical(a: Any, b: Any) -> bool:
    """Given a == b, whether they are also equal as JSON (Python has True == 1)."""
    # Flat records with keys in the same order and values of the same types settle it
    # without encoding; the rare rest pays for the exact comparison.
    if type(a) is dict and type(b) is dict and list(a) == list(b):
        types = [type(v) for v in a.values()]
        if types == [type(v) for v in b.values()] and dict not in types and list not in types:
            return True
    return _same(a, b)


def diff_records(old: Any, new: Any, key: str) -> RecordDiff:
    """Match the records at the list part of `key` by its field, and classify each one."""
    list_tokens, key_tokens = _split_record_path(key)
    old_index, old_problems, old_total, old_keys = _index(old, list_tokens, key_tokens)
    new_index, new_problems, new_total, new_keys = _index(new, list_tokens, key_tokens)
    if (old_total or new_total) and not old_index and not new_index:
        # records on some side, and not one with the key: a typo, not a diff of keyless records
        raise unmatched_path_error(key, [new, old], role="record key")
    problems = [Violation(p.path, p.rule, f"baseline: {p.message}") for p in old_problems] + new_problems
    added = [RecordRef(new_keys[h], _where(loc)) for h, (loc, _) in new_index.items() if h not in old_index]
    removed = []
    changed = []
    unchanged = 0
    for h, (old_loc, old_record) in old_index.items():
        match = new_index.get(h)
        if match is None:
            removed.append(RecordRef(old_keys[h], _where(old_loc)))
            continue
        new_loc, new_record = match
        if old_record == new_record and _identical(old_record, new_record):
            unchanged += 1
        else:
            fields = _field_changes(old_record, new_record)
            if fields:
                changed.append(RecordChange(new_keys[h], _where(new_loc), tuple(fields)))
            else:
                unchanged += 1
    return RecordDiff(
        key=key,
        added=tuple(added),
        removed=tuple(removed),
        changed=tuple(changed),
        unchanged=unchanged,
        old_total=old_total,
        new_total=new_total,
        problems=tuple(problems),
    )


@dataclass(frozen=True)
class Budget:
    """How much of a collection one change may touch."""

    max_changed: int | None = None
    max_changed_pct: float | None = None
    allow_added: bool = True
    allow_removed: bool = False


def check_budget(diff: RecordDiff, budget: Budget, total_records: int) -> list[Violation]:
    """Violations of `budget` by `diff`, plus the diff's own key problems.

    Touched records = added + removed + changed (each record counts once, however many of
    its fields changed). `max_changed` limits touched records; `max_changed_pct` limits
    100 * touched / total_records, where total_records is normally the baseline's record
    count (an empty baseline makes any change 100%). Additions and removals are also
    refused outright unless allowed; each removed or added record is named.
    """
    out = list(diff.problems)
    collection, _, key_field = diff.key.partition("[].")
    where = json_path(tuple(t for t in parse_key_path(collection) if isinstance(t, str)))
    if not budget.allow_removed:
        out.extend(
            Violation(
                r.path,
                "budget",
                f"record {key_field}={_show(r.key)} (in the baseline) was removed; this budget allows no removals",
            )
            for r in diff.removed
        )
    if not budget.allow_added:
        out.extend(
            Violation(
                r.path,
                "budget",
                f"record {key_field}={_show(r.key)} was added; this budget allows no additions",
            )
            for r in diff.added
        )
    touched = diff.touched
    detail = f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed"
    if budget.max_changed is not None and touched > budget.max_changed:
        out.append(
            Violation(
                where,
                "budget",
                f"{touched} records touched ({detail}), more than the {budget.max_changed} allowed",
            )
        )
    if budget.max_changed_pct is not None:
        pct = 100.0 * touched / total_records if total_records else (100.0 if touched else 0.0)
        if pct > budget.max_changed_pct:
            out.append(
                Violation(
                    where,
                    "budget",
                    f"{touched} of {total_records} records touched ({pct:.1f}%: {detail}), "
                    f"more than the {budget.max_changed_pct:g}% allowed",
                )
            )
    return out
