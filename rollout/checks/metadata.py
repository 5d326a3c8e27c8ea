"""Metadata validation: schema, invariants, change budget and read-back, as pure functions.

A metadata document (instruments, markets, feature flags...) is plain JSON-shaped data.
Before a change it is checked against a JSON Schema, invariants between its records
(unique keys, references between collections, non-empty values, immutable fields, value
bounds) and a change budget against the live version; after the change, a read-back
compares what the live system serves with what was intended.

Key paths name values: `version` is a field, `instruments[].symbol` is the field `symbol`
of every element of the list `instruments`, `a.b[].c` nests. Violations are located by
JSON paths of the concrete value: `$.instruments[17].tick_size`.

This module never does I/O and never raises for a bad document: every problem of the
document is a `Violation`, including a rule whose key path matches no value at all (a typo
like `instruments[].symbl`, or a field the whole document lacks), which would otherwise
check nothing and pass. It raises `MetadataError` only when the input cannot be read at
all, a schema or key path is itself malformed, or a record key is found in no record of
either version. jsonschema is imported inside the
functions that need it, so importing rollout stays fast; YAML goes through
`rollout.planfile`, the one module that imports yaml.
"""

from __future__ import annotations

import difflib
import gc
import hashlib
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count, repeat
from typing import Any, Final, Literal

from rollout.errors import MetadataError

# Locations are nested pairs (parent, step), None at the root: a flat tuple per element
# costs more than the checks themselves on 100k records; they are flattened only to report.
Loc = Any

MAX_SHOWN: Final = 50
MAX_MESSAGE_CHARS: Final = 300
MAX_DIFF_LINES: Final = 200


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Violation:
    """One problem with a document: where (JSON path), which rule, and what is wrong."""

    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        """JSON-friendly form."""
        return {"path": self.path, "rule": self.rule, "message": self.message}


# --------------------------------------------------------------------------- key paths


class _Each:
    """The `[]` step of a key path: every element of a list."""

    def __repr__(self) -> str:
        return "[]"


EACH: Final = _Each()
Token = str | _Each
_MISSING: Final[Any] = object()
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[\])*)\Z")


def parse_key_path(path: str) -> tuple[Token, ...]:
    """Split a key path (`a.b[].c`) into field names and `[]` steps; MetadataError if malformed."""
    text = path[2:] if path.startswith("$.") else path
    if not text:
        raise MetadataError(f"empty key path {path!r}")
    tokens: list[Token] = []
    for segment in text.split("."):
        match = _SEGMENT.match(segment)
        if match is None:
            raise MetadataError(
                f"malformed key path {path!r}: segment {segment!r} (expected name, name[] or name[][] ...)"
            )
        tokens.append(match.group(1))
        tokens.extend(EACH for _ in range(len(match.group(2)) // 2))
    return tuple(tokens)


def json_path(loc: Iterable[str | int]) -> str:
    """Render a location as a JSON path: `$.instruments[17].tick_size`."""
    parts = ["$"]
    for step in loc:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _IDENTIFIER.match(step):
            parts.append(f".{step}")
        else:
            parts.append("[" + json.dumps(step, ensure_ascii=False) + "]")
    return "".join(parts)


def _walk(doc: Any, tokens: Sequence[Token]) -> list[tuple[Loc, Any]]:
    """Every (location, value) a key path reaches; `_MISSING` where a field is absent."""
    frontier: list[tuple[Loc, Any]] = [(None, doc)]
    for token in tokens:
        if isinstance(token, _Each):
            step: list[tuple[Loc, Any]] = []
            for loc, value in frontier:
                if isinstance(value, list):
                    # zip pairs up locations and items in C: this loop runs per record.
                    step.extend(zip(zip(repeat(loc), range(len(value))), value, strict=True))
                else:
                    step.append((loc, _MISSING))
            frontier = step
        else:
            frontier = [
                ((loc, token), value.get(token, _MISSING) if isinstance(value, dict) else _MISSING)
                for loc, value in frontier
            ]
    return frontier


def format_key_path(tokens: Sequence[Token]) -> str:
    """(`instruments`, [], `symbol`) -> `instruments[].symbol`."""
    out = ""
    for token in tokens:
        out += "[]" if isinstance(token, _Each) else (f".{token}" if out else token)
    return out


def _matches_nothing(walked: Sequence[tuple[Loc, Any]]) -> bool:
    """Whether a walk reached places but a value at none of them (an empty list reaches none)."""
    return bool(walked) and all(value is _MISSING for _, value in walked)


def _first_miss(doc: Any, tokens: Sequence[Token]) -> tuple[int, list[str]] | None:
    """The first token that matches nothing in `doc`, with the field names found there."""
    frontier = [doc]
    for i, token in enumerate(tokens):
        if isinstance(token, _Each):
            lists = [v for v in frontier if isinstance(v, list)]
            if not lists:
                return i, []
            frontier = [item for v in lists for item in v]
            if not frontier:
                return None  # empty collections: nothing to match, nothing missing
        else:
            found = [v[token] for v in frontier if isinstance(v, dict) and token in v]
            if not found:
                # a sample of the records is enough to name what fields they have
                names = {k for v in frontier[:1000] if isinstance(v, dict) for k in v}
                return i, sorted(str(k) for k in names)
            frontier = found
    return None


def _explain_unmatched(path: str, docs: Sequence[Any]) -> tuple[str, str]:
    """Where a path that matches no value stops (a JSON path) and why, with the nearest field."""
    tokens = parse_key_path(path)
    miss = next((m for m in (_first_miss(doc, tokens) for doc in docs) if m is not None), None)
    if miss is None:
        return "$", "matches no value"
    i, names = miss
    stop = json_path([t for t in tokens[:i] if isinstance(t, str)])
    at = format_key_path(tokens[:i]) or "the top level"
    token = tokens[i]
    if isinstance(token, _Each):
        return stop, f"matches no value: {at} is not a list"
    close = difflib.get_close_matches(token, names, n=1, cutoff=0.5)
    if close:
        # the suggestion first: summaries of a failed check are cut to a line
        nearest = format_key_path((*tokens[:i], close[0], *tokens[i + 1 :]))
        return stop, f"matches no value; nearest existing field: {nearest} (no field {token!r} at {at})"
    if names:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        return stop, f"matches no value: no field {token!r} at {at} (fields there: {shown})"
    return stop, f"matches no value: no field {token!r} at {at}, which has no fields"


def unmatched_path_error(path: str, docs: Sequence[Any], *, role: str = "key path") -> MetadataError:
    """The error for a key path that matches no value: where it stops, and the nearest field."""
    return MetadataError(f"{role} {path!r} {_explain_unmatched(path, docs)[1]}")


def require_match(path: str, doc: Any, *others: Any, role: str = "key path") -> None:
    """MetadataError when `path` matches no value in `doc` nor in any of `others`."""
    if _unmatched(doc, parse_key_path(path), others):
        raise unmatched_path_error(path, [doc, *others], role=role)


def _unmatched(doc: Any, tokens: Sequence[Token], others: Sequence[Any] = ()) -> bool:
    """Whether `tokens` match no value in `doc` nor in any of `others`."""
    return _matches_nothing(_walk(doc, tokens)) and all(_matches_nothing(_walk(other, tokens)) for other in others)


def _unmatched_violation(path: str, docs: Sequence[Any], rule: str) -> Violation:
    """A rule over a path that reaches nothing checks nothing: that is itself a violation."""
    where, why = _explain_unmatched(path, docs)
    return Violation(where, rule, f"{rule} path {path!r} {why}")


def _flatten(loc: Loc) -> list[str | int]:
    steps: list[str | int] = []
    while loc is not None:
        loc, step = loc
        steps.append(step)
    steps.reverse()
    return steps


def _where(loc: Loc, *fields: str | int) -> str:
    """The JSON path of a location (plus trailing fields)."""
    return json_path([*_flatten(loc), *fields])


def _split_record_path(path: str) -> tuple[tuple[Token, ...], tuple[Token, ...]]:
    """`instruments[].symbol` -> (tokens of the list, tokens of the field in each record)."""
    tokens = parse_key_path(path)
    eaches = [i for i, t in enumerate(tokens) if isinstance(t, _Each)]
    if len(eaches) != 1 or eaches[0] == len(tokens) - 1:
        raise MetadataError(
            f"record key path {path!r} must have exactly one [] followed by a field (like instruments[].symbol)"
        )
    return tokens[: eaches[0]], tokens[eaches[0] + 1 :]


def _field(record: Any, tokens: Sequence[Token]) -> Any:
    """The value at plain field tokens inside one record, or `_MISSING`."""
    value = record
    for token in tokens:
        if isinstance(value, dict) and isinstance(token, str) and token in value:
            value = value[token]
        else:
            return _MISSING
    return value


def _hashable(value: Any) -> Any:
    """A dict key that equals another exactly when the JSON values are equal."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        # True == 1 in Python, but not in JSON.
        return ("bool", value)
    if value is None or isinstance(value, int | float):
        return value
    return ("json", json.dumps(value, sort_keys=True, separators=(",", ":")))


def _same(a: Any, b: Any) -> bool:
    return bool(a == b) and _hashable(a) == _hashable(b)


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while checking: the checks allocate millions of short-lived
    tuples, and each collection re-scans every record of a large document (3x slower)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MetadataError(f"duplicate key {key!r} in a JSON object")
            seen.add(key)
    return obj


def parse_document(data: bytes, *, fmt: Literal["json", "yaml", "auto"], name: str) -> Any:
    """Parse JSON or YAML bytes; MetadataError naming `name` (and line:column) if unreadable."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{name}: not UTF-8 (byte {exc.start})") from exc
    if fmt == "auto":
        fmt = "json" if text.lstrip()[:1] in ("{", "[") else "yaml"
    if fmt == "json":
        try:
            return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{name}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
        except MetadataError as exc:
            raise MetadataError(f"{name}: {exc}") from exc
        except (ValueError, RecursionError) as exc:
            raise MetadataError(f"{name}: invalid JSON: {exc}") from exc
    # Deferred: planfile is the one yaml importer, and JSON-only callers need not load it.
    from rollout.errors import PlanError
    from rollout.planfile import load_yaml_document

    try:
        return load_yaml_document(text, name)
    except PlanError as exc:
        raise MetadataError(str(exc)) from exc


def canonical_bytes(doc: Any) -> bytes:
    """The document as canonical JSON: sorted keys, no whitespace, UTF-8."""
    try:
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MetadataError(f"document is not plain JSON data: {exc}") from exc
    return text.encode("utf-8")


def document_digest(doc: Any) -> str:
    """sha256 hex of `canonical_bytes(doc)`: equal for equal data, whatever the formatting."""
    return hashlib.sha256(canonical_bytes(doc)).hexdigest()


# --------------------------------------------------------------------------- schema


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
        self._fast = _FastCompiler(schema).compile_root()

    @_gc_paused()
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


Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "$defs",
        "definitions",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",  # an annotation only: no format checker is configured
    }
)
# Conditions under which a value does NOT have the type. Exact types are stricter than
# jsonschema (a str subclass fails here); that only sends such documents to jsonschema.
_NOT_TYPE = {
    "object": "type(v) is not dict",
    "array": "type(v) is not list",
    "string": "type(v) is not str",
    "boolean": "type(v) is not bool",
    "null": "v is not None",
    "number": "(type(v) is not int and type(v) is not float)",
    "integer": "(type(v) is not int and not (type(v) is float and v.is_integer()))",
}
# When a keyword applies at all; these mirror jsonschema exactly, so none is skipped wrongly.
_IS_OBJECT = "isinstance(v, dict)"
_IS_ARRAY = "isinstance(v, list)"
_IS_STRING = "isinstance(v, str)"
_IS_NUMBER = "(isinstance(v, (int, float)) and not isinstance(v, bool))"
_NUMERIC = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
_SIZES = {
    "minItems": (_IS_ARRAY, "<"),
    "maxItems": (_IS_ARRAY, ">"),
    "minProperties": (_IS_OBJECT, "<"),
    "maxProperties": (_IS_OBJECT, ">"),
    "minLength": (_IS_STRING, "<"),
    "maxLength": (_IS_STRING, ">"),
}


class _Unsupported(Exception):
    """The schema uses a keyword the fast checker does not implement."""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class _FastCompiler:
    """Compiles a subset of draft 2020-12 into Python source that answers "valid or not".

    One generated function per schema node, straight-line `if ...: return False` tests:
    about ten times faster than walking the schema per record. Anything outside the
    subset raises `_Unsupported`, and the caller then relies on jsonschema alone.
    """

    def __init__(self, root: Mapping[str, Any] | bool) -> None:
        self.root = root
        self.consts: dict[str, Any] = {"_hashable": _hashable, "_same": _same, "_M": _MISSING}
        self.functions: list[str] = []
        self.names = count()
        self.by_ref: dict[str, str] = {}

    def compile_root(self) -> Check | None:
        try:
            entry = self.node(self.root)
        except _Unsupported:
            return None
        namespace = dict(self.consts)
        exec("\n\n".join(self.functions), namespace)  # noqa: S102 - code generated from the schema, no user text
        check: Check = namespace[entry]
        return check

    def const(self, value: Any) -> str:
        name = f"_c{len(self.consts)}"
        self.consts[name] = value
        return name

    def ref(self, ref: str) -> str:
        if ref in self.by_ref:
            return self.by_ref[ref]
        if not ref.startswith("#/") or not isinstance(self.root, Mapping):
            raise _Unsupported(ref)
        target: Any = self.root
        for escaped in ref[2:].split("/"):
            part = escaped.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                raise _Unsupported(ref)
            target = target[part]
        # Named before compiling, so a recursive schema refers to itself by name.
        name = f"_s{next(self.names)}"
        self.by_ref[ref] = name
        self.node(target, name)
        return name

    def node(self, schema: Any, name: str | None = None) -> str:
        name = name or f"_s{next(self.names)}"
        if schema is True or schema is False:
            self.functions.append(f"def {name}(v):\n    return {schema}")
            return name
        if not isinstance(schema, Mapping):
            raise _Unsupported(schema)
        if "$id" in schema and schema is not self.root:
            raise _Unsupported("$id")  # a nested resource would change what "#/..." means
        lines: list[str] = []
        for keyword, arg in schema.items():
            if keyword not in _ANNOTATIONS:
                lines.extend(self.keyword(keyword, arg, schema))
        body = "\n".join(f"    {line}" for line in [*lines, "return True"])
        self.functions.append(f"def {name}(v):\n{body}")
        return name

    def keyword(self, keyword: str, arg: Any, schema: Mapping[str, Any]) -> list[str]:
        if keyword == "$ref" and isinstance(arg, str):
            return [f"if not {self.ref(arg)}(v): return False"]
        if keyword == "type":
            names = [arg] if isinstance(arg, str) else list(arg)
            return [f"if {' and '.join(_NOT_TYPE[n] for n in names)}: return False"]
        if keyword in ("enum", "const"):
            options = list(arg) if keyword == "enum" else [arg]
            if all(type(o) is str for o in options):
                strings = self.const(frozenset(options))
                return [f"if not (isinstance(v, str) and v in {strings}): return False"]
            keys, opts = self.const({_hashable(o) for o in options}), self.const(options)
            return [
                f"if _hashable(v) not in {keys}: return False",
                f"if not any(_same(v, o) for o in {opts}): return False",
            ]
        if keyword == "required":
            return [f"if {_IS_OBJECT} and not {self.const(frozenset(arg))}.issubset(v): return False"]
        if keyword == "properties":
            lines = [f"if {_IS_OBJECT}:"]
            for prop, sub in arg.items():
                fn = self.node(sub)
                lines.append(f"    x = v.get({prop!r}, {self.const(_MISSING)})")
                lines.append(f"    if x is not {self.const(_MISSING)} and not {fn}(x): return False")
            return lines if len(lines) > 1 else []
        if keyword == "additionalProperties":
            if "patternProperties" in schema:
                raise _Unsupported(keyword)
            known = self.const(frozenset(schema.get("properties", {})))
            if arg is False:
                return [f"if {_IS_OBJECT} and not {known}.issuperset(v): return False"]
            fn = self.node(arg)
            return [
                f"if {_IS_OBJECT}:",
                "    for k, x in v.items():",
                f"        if k not in {known} and not {fn}(x): return False",
            ]
        if keyword == "items" and "prefixItems" not in schema:
            fn = self.node(arg)
            return [f"if {_IS_ARRAY}:", "    for x in v:", f"        if not {fn}(x): return False"]
        if keyword in _SIZES and isinstance(arg, int):
            applies, fails = _SIZES[keyword]
            return [f"if {applies} and len(v) {fails} {arg}: return False"]
        if keyword == "pattern":
            regex = self.const(re.compile(arg))
            return [f"if {_IS_STRING} and {regex}.search(v) is None: return False"]
        if keyword in _NUMERIC and _is_number(arg):
            return [f"if {_IS_NUMBER} and not (v {_NUMERIC[keyword]} {self.const(arg)}): return False"]
        raise _Unsupported(keyword)


# --------------------------------------------------------------------------- invariants


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


@_gc_paused()
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


# --------------------------------------------------------------------------- diff and budget


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


@_gc_paused()
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


# --------------------------------------------------------------------------- read-back


@dataclass(frozen=True)
class ReadBack:
    """Whether the served document equals the intended one, with a diff when it does not."""

    equal: bool
    intended_digest: str
    served_digest: str
    diff: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "equal": self.equal,
            "intended_digest": self.intended_digest,
            "served_digest": self.served_digest,
            "diff": self.diff,
        }


def _pretty(doc: Any) -> list[str]:
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False).splitlines()


def read_back(intended: Any, served: Any, *, max_lines: int = MAX_DIFF_LINES) -> ReadBack:
    """Compare canonically what the live system serves with what was intended."""
    intended_digest = document_digest(intended)
    served_digest = document_digest(served)
    equal = intended_digest == served_digest
    diff = ""
    if not equal:
        lines = list(difflib.unified_diff(_pretty(intended), _pretty(served), "intended", "served", lineterm="", n=2))
        if len(lines) > max_lines:
            lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more diff lines)"]
        diff = "\n".join(lines)
    return ReadBack(equal, intended_digest, served_digest, diff)


# --------------------------------------------------------------------------- report


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


@_gc_paused()
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
