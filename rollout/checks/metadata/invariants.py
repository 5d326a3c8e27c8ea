"""Invariants between the values of one document (and against its baseline, for `immutable`).

unique, references, non_empty, bounds and immutable, each a generator of `Violation`s. A
rule whose key path matches no value at all checks nothing, so that is itself a violation.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rollout.checks.metadata.diff import _index, _records
from rollout.checks.metadata.keypath import (
    _MISSING,
    Loc,
    _Each,
    _explain_unmatched,
    _field,
    _matches_nothing,
    _split_record_path,
    _unmatched,
    _walk,
    _where,
    parse_key_path,
)
from rollout.checks.metadata.values import _hashable, _is_number, _same, _show
from rollout.checks.metadata.violation import Violation
from rollout.errors import MetadataError


def _unmatched_violation(path: str, docs: Sequence[Any], rule: str) -> Violation:
    """A rule over a path that reaches nothing checks nothing: that is itself a violation."""
    where, why = _explain_unmatched(path, docs)
    return Violation(where, rule, f"{rule} path {path!r} {why}")


@dataclass(frozen=True)
class Bound:
    """Allowed values at a key path: numeric limits and/or an explicit set of values."""

    path: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    one_of: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Invariants:
    """Rules that relate values inside a document (and to its baseline, for `immutable`).

    unique: key paths whose values must be distinct (`instruments[].symbol`).
    references: (source, target) pairs; every source value must occur among the target
        values (`("markets[].instrument", "instruments[].symbol")`). A null source is an
        absent optional reference and passes.
    non_empty: key paths that must be present and not null, "", [] or {}.
    immutable: key paths that must not change against the baseline. Record fields
        (`instruments[].id`) compare records matched by the record key; plain paths
        (`schema_version`) compare directly.
    bounds: value limits (`Bound`).
    """

    unique: tuple[str, ...] = ()
    references: tuple[tuple[str, str], ...] = ()
    non_empty: tuple[str, ...] = ()
    immutable: tuple[str, ...] = ()
    bounds: tuple[Bound, ...] = ()


def _check_unique(doc: Any, path: str) -> Iterator[Violation]:
    first: dict[Any, Loc] = {}
    walked = _walk(doc, parse_key_path(path))
    if _matches_nothing(walked):
        yield _unmatched_violation(path, [doc], "unique")
    for loc, value in walked:
        if value is _MISSING:
            continue  # absence is the schema's (or non_empty's) business
        seen = first.setdefault(value if type(value) is str else _hashable(value), loc)
        if seen is not loc:
            yield Violation(
                _where(loc),
                "unique",
                f"duplicate value {_show(value)} (first at {_where(seen)})",
            )


def _check_references(doc: Any, source: str, target: str) -> Iterator[Violation]:
    target_walk = _walk(doc, parse_key_path(target))
    source_walk = _walk(doc, parse_key_path(source))
    for path, walked in ((source, source_walk), (target, target_walk)):
        if _matches_nothing(walked):
            yield _unmatched_violation(path, [doc], "references")
            return
    targets = {_hashable(v) for _, v in target_walk if v is not _MISSING}
    for loc, value in source_walk:
        if value is _MISSING or value is None:
            continue
        if _hashable(value) not in targets:
            yield Violation(_where(loc), "references", f"{_show(value)} is not among {target}")


def _check_non_empty(doc: Any, path: str) -> Iterator[Violation]:
    for loc, value in _walk(doc, parse_key_path(path)):
        if value is _MISSING:
            yield Violation(_where(loc), "non_empty", "missing")
        elif value is None or (isinstance(value, str | list | dict) and not value):
            yield Violation(_where(loc), "non_empty", f"is empty ({_show(value)})")


def _check_bound(doc: Any, bound: Bound) -> Iterator[Violation]:
    numeric: list[tuple[float | None, Callable[[Any, Any], Any], str]] = [
        (bound.minimum, operator.ge, ">="),
        (bound.maximum, operator.le, "<="),
        (bound.exclusive_minimum, operator.gt, ">"),
        (bound.exclusive_maximum, operator.lt, "<"),
    ]
    limits = [(lim, test, op) for lim, test, op in numeric if lim is not None]
    allowed = None if bound.one_of is None else {_hashable(v) for v in bound.one_of}
    walked = _walk(doc, parse_key_path(bound.path))
    if _matches_nothing(walked):
        yield _unmatched_violation(bound.path, [doc], "bounds")
    for loc, value in walked:
        if value is _MISSING:
            continue
        if allowed is not None and _hashable(value) not in allowed:
            options = ", ".join(_show(v) for v in bound.one_of or ())
            yield Violation(_where(loc), "bounds", f"{_show(value)} is not one of {options}")
        if not limits:
            continue
        if not _is_number(value) or (isinstance(value, float) and math.isnan(value)):
            yield Violation(_where(loc), "bounds", f"{_show(value)} is not a number")
            continue
        for lim, test, op in limits:
            if not test(value, lim):
                yield Violation(_where(loc), "bounds", f"{_show(value)} is not {op} {lim:g}")


def _check_immutable(doc: Any, baseline: Any, path: str, key: str | None) -> Iterator[Violation]:
    tokens = parse_key_path(path)
    if _unmatched(doc, tokens, [baseline]):
        yield _unmatched_violation(path, [doc, baseline], "immutable")
        return
    if not any(isinstance(t, _Each) for t in tokens):
        (new_loc, new), (_, old) = _walk(doc, tokens)[0], _walk(baseline, tokens)[0]
        if not _same(old, new) and not (old is _MISSING and new is _MISSING):
            yield Violation(
                _where(new_loc),
                "immutable",
                f"changed from {_show_opt(old)} to {_show_opt(new)}",
            )
        return
    if key is None:
        raise MetadataError(f"immutable record field {path!r} needs a record key to match records")
    list_tokens, field_tokens = _split_record_path(path)
    key_list, key_field = _split_record_path(key)
    if list_tokens != key_list:
        raise MetadataError(f"immutable path {path!r} is not a field of the records keyed by {key!r}")
    old_index = _index(baseline, key_list, key_field)[0]
    seen: set[Any] = set()
    for loc, record in _records(doc, key_list):
        key_value = _field(record, key_field)
        if key_value is _MISSING or _hashable(key_value) not in old_index:
            continue  # an added record has nothing to compare with
        if _hashable(key_value) in seen:
            continue  # a duplicate is the unique rule's finding, not a change of this record
        seen.add(_hashable(key_value))
        _, old_record = old_index[_hashable(key_value)]
        old, new = _field(old_record, field_tokens), _field(record, field_tokens)
        if old is _MISSING and new is _MISSING:
            continue
        if not _same(old, new):
            where = _where(loc, *(t for t in field_tokens if isinstance(t, str)))
            yield Violation(
                where,
                "immutable",
                f"record {_show(key_value)}: changed from {_show_opt(old)} to {_show_opt(new)}",
            )


def _show_opt(value: Any) -> str:
    return "(absent)" if value is _MISSING else _show(value)


def check_invariants(doc: Any, inv: Invariants, baseline: Any = None, *, key: str | None = None) -> list[Violation]:
    """All invariant violations; `immutable` needs a baseline and matches records by `key`."""
    out: list[Violation] = []
    for path in inv.unique:
        out.extend(_check_unique(doc, path))
    for source, target in inv.references:
        out.extend(_check_references(doc, source, target))
    for path in inv.non_empty:
        out.extend(_check_non_empty(doc, path))
    for bound in inv.bounds:
        out.extend(_check_bound(doc, bound))
    if baseline is not None:
        for path in inv.immutable:
            out.extend(_check_immutable(doc, baseline, path, key))
    return out
