"""The key path language: `instruments[].symbol` names the field `symbol` of every element
of the list `instruments`; `a.b[].c` nests.

Walking a path over a document yields every (location, value) it reaches, `_MISSING` where
a field is absent. Locations are nested pairs (parent, step), None at the root, rendered
as JSON paths of the concrete value (`$.instruments[17].tick_size`) only to report. A path
that reaches nothing is explained: where it stops, and the nearest existing field.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any, Final

from rollout.errors import MetadataError

# Locations are nested pairs (parent, step), None at the root: a flat tuple per element
# costs more than the checks themselves on 100k records; they are flattened only to report.
Loc = Any


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
