"""Pydantic validation errors -> our PlanError, each at the file:line:column it concerns.

Names the closest known key for a typo, collapses union alternatives to one line a place,
and reports at most MAX_REPORTED_ERRORS problems at once.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from rollout.errors import PlanError
from rollout.model import Plan
from rollout.planfile.locations import Loc, SourceMap, error_at

MAX_REPORTED_ERRORS = 25


class PlanInvalid(PlanError):
    """Several problems in one plan; `problems` holds each, the first is the headline."""

    def __init__(self, problems: list[PlanError], total: int) -> None:
        self.problems = problems
        self.total = total
        first = problems[0]
        super().__init__(first.message, file=first.file, line=first.line, column=first.column, path=first.path)

    def render(self) -> str:
        """Every problem on its own line, capped, with the count of the rest."""
        lines = [p.render() for p in getattr(self, "problems", [])] or [super().render()]
        hidden = getattr(self, "total", 0) - len(lines)
        if hidden > 0:
            lines.append(f"... and {hidden} more problems")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation may hold (through Optional, list, dict, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _unwrap(arg)]
    if origin in (list, dict):
        return _unwrap(typing.get_args(annotation)[-1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    current: list[type[BaseModel]] = [Plan]
    for part in loc:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for model in current:
            for name, info in model.model_fields.items():
                if part in (name, info.alias):
                    nxt.extend(_unwrap(info.annotation))
        if not nxt:
            # a dict key (environment or host name): stay on the value type
            continue
        current = nxt
    return current[0] if current else None


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    loc = error["loc"]
    msg: str = error["msg"]
    if kind == "missing":
        return f"missing required key '{loc[-1]}'"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc[:-1])
        hint = ""
        if model is not None:
            known = _known_keys(model)
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
        return f"unknown key '{key}'{hint}"
    if msg.startswith("Value error, "):
        return msg.removeprefix("Value error, ")
    if msg.startswith("Input should be "):
        msg = "expected " + msg.removeprefix("Input should be ")
    elif msg.startswith("String should match pattern"):
        msg = "expected a name of letters, digits, '.', '_' and '-'"
    value = error.get("input")
    if kind not in {"model_type", "dict_type", "list_type"} or not isinstance(value, dict | list):
        return f"{msg}, got {value!r}"
    return f"{msg}, got a {'mapping' if isinstance(value, dict) else 'list'}"


def _clean_loc(loc: Sequence[Any]) -> Loc:
    """Drop pydantic's union-member and validator entries from a location."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "SecretVar"}):
            continue
        if isinstance(part, str) and part.startswith(("function-", "tagged-union")):
            continue
        out.append(part)
    return tuple(out)


def translate_validation_error(exc: ValidationError, source: SourceMap, fallback: str) -> PlanError:
    """Every pydantic problem as a located PlanError (unions collapsed to one line a place)."""
    problems: list[PlanError] = []
    seen: set[Loc] = set()
    for error in exc.errors():
        loc = _clean_loc(error["loc"])
        if loc in seen:
            continue
        seen.add(loc)
        problems.append(error_at(source, loc, _describe(error), fallback=fallback))
    if len(problems) == 1:
        return problems[0]
    return PlanInvalid(problems[:MAX_REPORTED_ERRORS], len(problems))
