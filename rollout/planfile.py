"""YAML plan files -> a validated Plan, with file:line:column on every error.

The only module that imports yaml. It composes the YAML node graph with the safe loader
and builds plain data itself, so that it can keep a mark for every key path, refuse
duplicate keys and unsafe tags, and cap alias expansion (a billion-laughs file fails
fast, in bounded memory). Includes resolve only inside the plan's directory.

It must never run anything or touch a target: loading a plan has no side effects.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import os
import re
import stat
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rollout.errors import PlanError, TemplateError
from rollout.model import Plan, SecretVar
from rollout.template import RenderBudget, TemplateProblem, TemplateTooLarge, render

MAX_PLAN_BYTES = 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 100
MAX_REPORTED_ERRORS = 25

Loc = tuple[str | int, ...]

_SAFE_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:merge",
}

# Keys an include file may contribute, and how: lists are prepended, mappings merged.
_INCLUDE_LISTS = ("parity", "prechecks", "guards", "steps", "notify", "freeze")
_INCLUDE_MAPS = ("vars", "environments")


@dataclass(frozen=True)
class Mark:
    """A place in a plan file (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass
class SourceMap:
    """Key path -> where it was written; looks up the nearest written ancestor."""

    marks: dict[Loc, Mark] = field(default_factory=dict)

    def find(self, loc: Sequence[str | int]) -> Mark | None:
        """The mark of `loc` or of its nearest ancestor that has one."""
        key = tuple(loc)
        while True:
            if key in self.marks:
                return self.marks[key]
            if not key:
                return None
            key = key[:-1]


def format_loc(loc: Sequence[str | int]) -> str:
    """('steps', 2, 'verify', 0, 'http', 'url') -> 'steps[2].verify[0].http.url'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def error_at(source: SourceMap, loc: Sequence[str | int], message: str, *, fallback: str) -> PlanError:
    """A PlanError located at the mark of `loc`."""
    mark = source.find(loc)
    return PlanError(
        message,
        file=mark.file if mark else fallback,
        line=mark.line if mark else None,
        column=mark.column if mark else None,
        path=format_loc(loc) or None,
    )


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


# --- YAML -> data with marks --------------------------------------------------------


class _Builder:
    """Builds plain data from a composed node graph, recording marks and enforcing caps."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.marks: dict[Loc, Mark] = {}
        self.nodes = 0
        self._scalars = yaml.constructor.SafeConstructor()

    def mark(self, node: yaml.Node) -> Mark:
        return Mark(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def fail(self, node: yaml.Node, loc: Loc, message: str) -> PlanError:
        mark = self.mark(node)
        return PlanError(
            message,
            file=self.file,
            line=mark.line,
            column=mark.column,
            path=format_loc(loc) or None,
        )

    def build_document(self, node: yaml.Node) -> Any:
        """Plain data from a whole document, refusing an alias bomb before expanding it."""
        self._refuse_runaway_aliases(node)
        return self.build(node, ())

    def _refuse_runaway_aliases(self, root: yaml.Node) -> None:
        # Aliases share nodes, so the composed graph stays small while its expansion can be
        # exponential. Sizing each distinct node once costs time in the graph's size, so a
        # bomb fails in milliseconds instead of after MAX_NODES values have been built.
        sizes: dict[int, int] = {}

        def children(node: yaml.Node, loc: Loc) -> Iterator[tuple[yaml.Node, Loc]]:
            if isinstance(node, yaml.SequenceNode):
                for i, child in enumerate(node.value):
                    yield child, (*loc, i)
            elif isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    yield key, loc
                    yield value, (*loc, str(key.value) if isinstance(key, yaml.ScalarNode) else "?")

        def size(node: yaml.Node, depth: int) -> int:
            if id(node) in sizes:
                return sizes[id(node)]
            if depth > MAX_DEPTH:
                return 1  # build() reports the nesting itself
            sizes[id(node)] = MAX_NODES + 1  # met again while being sized: it contains itself
            total = 1
            for child, _ in children(node, ()):
                total += size(child, depth + 1)
                if total > MAX_NODES:
                    break
            sizes[id(node)] = min(total, MAX_NODES + 1)
            return sizes[id(node)]

        if size(root, 0) <= MAX_NODES:
            return
        # Point at the innermost runaway node: the anchor use that starts the explosion.
        node: yaml.Node = root
        loc: Loc = ()
        seen = {id(root)}
        while True:
            inner = next(
                ((c, cl) for c, cl in children(node, loc) if sizes.get(id(c), 0) > MAX_NODES),
                None,
            )
            if inner is None or id(inner[0]) in seen:
                break
            node, loc = inner
            seen.add(id(node))
        raise self.fail(
            node,
            loc,
            f"the document expands to more than {MAX_NODES} values "
            "(an alias bomb or a runaway anchor?); refusing to expand it",
        )

    def build(self, node: yaml.Node, loc: Loc, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(
                node,
                loc,
                f"the document expands to more than {MAX_NODES} values "
                "(an alias bomb or a runaway anchor?); refusing to expand it",
            )
        if depth > MAX_DEPTH:
            raise self.fail(node, loc, f"nesting deeper than {MAX_DEPTH} levels (a recursive alias?)")
        if node.tag not in _SAFE_TAGS:
            raise self.fail(
                node,
                loc,
                f"tag {node.tag!r} is not allowed: plans are plain YAML (strings, numbers, "
                "booleans, lists, mappings); unsafe or custom tags are refused",
            )
        self.marks.setdefault(loc, self.mark(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                value = self._scalars.construct_object(node)
            except yaml.YAMLError as exc:
                raise self.fail(node, loc, f"cannot read this value: {exc}") from exc
            if isinstance(value, dt.datetime | dt.date):
                return value.isoformat()
            return value
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*loc, i), depth + 1) for i, child in enumerate(node.value)]
        assert isinstance(node, yaml.MappingNode)
        out: dict[str, Any] = {}
        seen: dict[str, Mark] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                for source in self._merge_sources(value_node, loc):
                    for k, v in source.items():
                        merged.setdefault(k, v)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, loc, "a mapping key must be a plain scalar")
            key = self._scalars.construct_object(key_node)
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise self.fail(key_node, loc, f"a mapping key must be a string, got {key!r}")
            key = str(key)
            if key in seen:
                first = seen[key]
                raise self.fail(
                    key_node,
                    (*loc, key),
                    f"duplicate key '{key}' (first defined at line {first.line})",
                )
            seen[key] = self.mark(key_node)
            self.marks[(*loc, key)] = self.mark(key_node)
            out[key] = self.build(value_node, (*loc, key), depth + 1)
        for k, v in merged.items():
            out.setdefault(k, v)
        return out

    def _merge_sources(self, node: yaml.Node, loc: Loc) -> list[dict[str, Any]]:
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        sources = []
        for child in nodes:
            value = self.build(child, loc)
            if not isinstance(value, dict):
                raise self.fail(child, loc, "'<<' merges a mapping (or a list of mappings)")
            sources.append(value)
        return sources


class _DepthLimitedLoader(yaml.SafeLoader):
    """The safe loader, refusing deep nesting before PyYAML's recursive composer overflows."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                where = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(None, None, f"nesting deeper than {MAX_DEPTH} levels", where)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose(text: str, file: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_DepthLimitedLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if "'\\t'" in problem or "\t" in problem:
            problem = "a tab character cannot indent YAML: indent with spaces"
        elif exc.context:
            problem = f"{problem} ({exc.context}"
            if exc.context_mark and mark is not exc.context_mark:
                problem += f" at line {exc.context_mark.line + 1}"
            problem += ")"
        raise PlanError(
            f"invalid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from exc
    except yaml.YAMLError as exc:
        raise PlanError(f"invalid YAML: {exc}", file=file) from exc


def load_yaml_document(text: str, name: str) -> Any:
    """Parse one YAML document safely (no tags, no duplicate keys, capped aliases)."""
    node = _compose(text, name)
    if node is None:
        return None
    return _Builder(name).build_document(node)


def _read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; PlanError otherwise.

    Opened non-blocking and checked with fstat before the first read: a FIFO would block
    the open (or the read) forever, and a device such as /dev/zero never ends.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise PlanError("is a directory, not a plan file")
        if not stat.S_ISREG(info.st_mode):
            raise PlanError(
                f"is {_file_kind(info.st_mode)}, not a regular file: plans are read from regular files only"
            )
        if info.st_size > limit:
            raise PlanError(f"the file is {info.st_size} bytes; plans are capped at {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > limit:
                raise PlanError(f"the file is more than {limit} bytes; plans are capped at {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _read_plan_text(path: Path, shown: str) -> str:
    try:
        data = _read_regular_file(path, MAX_PLAN_BYTES)
    except PlanError as exc:
        raise PlanError(exc.message, file=shown) from None
    except FileNotFoundError as exc:
        raise PlanError("no such file", file=shown) from exc
    except IsADirectoryError as exc:
        raise PlanError("is a directory, not a plan file", file=shown) from exc
    except OSError as exc:
        raise PlanError(f"cannot read: {exc.strerror}", file=shown) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PlanError("not valid UTF-8", file=shown, line=line) from exc


@dataclass(frozen=True)
class LoadedPlan:
    """A validated plan with where every key came from, its files and its digest."""

    plan: Plan
    path: Path
    files: dict[str, bytes]
    digest: str
    source: SourceMap

    @property
    def shown(self) -> str:
        """The plan's path as the user gave it."""
        return str(self.path)

    def error(self, loc: Sequence[str | int], message: str) -> PlanError:
        """A PlanError at `loc` in this plan."""
        return error_at(self.source, loc, message, fallback=self.shown)


class _Loader:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.files: dict[str, bytes] = {}
        self.documents: list[tuple[str, Any]] = []
        self.marks: dict[Loc, Mark] = {}

    def load(self, path: Path, shown: str, stack: tuple[Path, ...]) -> tuple[dict[str, Any], dict[Loc, Mark]]:
        text = _read_plan_text(path, shown)
        rel = os.path.relpath(path.resolve(), self.root)
        self.files[rel] = text.encode("utf-8")
        node = _compose(text, shown)
        if node is None:
            raise PlanError(
                "the file is empty: a plan needs at least name, environments and steps",
                file=shown,
                line=1,
                column=1,
            )
        builder = _Builder(shown)
        data = builder.build_document(node)
        if not isinstance(data, dict):
            mark = builder.mark(node)
            raise PlanError(
                f"a plan is a mapping of keys (name, environments, steps, ...), not a {type(data).__name__}",
                file=shown,
                line=mark.line,
                column=mark.column,
            )
        self.documents.append((rel, data))
        marks = builder.marks
        includes = data.get("includes", [])
        if not isinstance(includes, list):
            raise _fail(marks, ("includes",), "includes is a list of file names", shown)
        merged: dict[str, Any] = {}
        merged_marks: dict[Loc, Mark] = {}
        for i, entry in enumerate(includes):
            inc_path, inc_shown = self._resolve_include(entry, path, marks, (("includes", i)), shown, stack)
            inc_data, inc_marks = self.load(inc_path, inc_shown, (*stack, inc_path.resolve()))
            extra = sorted(set(inc_data) - set(_INCLUDE_LISTS) - set(_INCLUDE_MAPS) - {"includes"})
            if extra:
                raise _fail(
                    inc_marks,
                    (extra[0],),
                    f"an include may only hold {', '.join(_INCLUDE_LISTS + _INCLUDE_MAPS)}; "
                    f"'{extra[0]}' belongs in the main plan",
                    inc_shown,
                )
            _merge_into(merged, merged_marks, inc_data, inc_marks)
        if merged:
            _merge_into(merged, merged_marks, {k: v for k, v in data.items() if k != "includes"}, marks)
            for key in ("includes", "version", "name", "description", "strategy"):
                if key in data:
                    merged[key] = data[key]
                    _copy_marks(marks, merged_marks, (key,), (key,))
            merged_marks.setdefault((), marks.get((), Mark(shown, 1, 1)))
            return merged, merged_marks
        return data, marks

    def _resolve_include(
        self,
        entry: Any,
        parent: Path,
        marks: dict[Loc, Mark],
        loc: Loc,
        shown: str,
        stack: tuple[Path, ...],
    ) -> tuple[Path, str]:
        if not isinstance(entry, str) or not entry.strip():
            raise _fail(marks, loc, "an include is a file name relative to the plan", shown)
        rel = Path(entry)
        if rel.is_absolute():
            raise _fail(
                marks,
                loc,
                f"include {entry!r} is absolute: includes must be relative to the plan's directory",
                shown,
            )
        if ".." in rel.parts:
            raise _fail(
                marks,
                loc,
                f"include {entry!r} leaves the plan's directory ('..' is not allowed)",
                shown,
            )
        candidate = parent.parent / rel
        resolved = candidate.resolve()
        if not resolved.is_relative_to(self.root):
            raise _fail(
                marks,
                loc,
                f"include {entry!r} resolves outside the plan's directory (through a symlink)",
                shown,
            )
        try:
            mode = resolved.stat().st_mode
        except OSError:
            mode = None  # missing or unreadable: reading it says which, naming the file
        if mode is not None and not stat.S_ISREG(mode):
            raise _fail(
                marks,
                loc,
                f"include {entry!r} is {_file_kind(mode)}, not a regular file: only regular files are included",
                shown,
            )
        if resolved in stack:
            chain = " -> ".join(os.path.relpath(p, self.root) for p in (*stack, resolved))
            raise _fail(marks, loc, f"include cycle: {chain}", shown)
        return candidate, str(candidate)


def _fail(marks: dict[Loc, Mark], loc: Loc, message: str, shown: str) -> PlanError:
    return error_at(SourceMap(marks), loc, message, fallback=shown)


def _copy_marks(src: dict[Loc, Mark], dst: dict[Loc, Mark], old: Loc, new: Loc) -> None:
    n = len(old)
    for loc, mark in src.items():
        if loc[:n] == old:
            dst[new + loc[n:]] = mark


def _merge_into(
    merged: dict[str, Any],
    merged_marks: dict[Loc, Mark],
    data: dict[str, Any],
    marks: dict[Loc, Mark],
) -> None:
    """Lists are appended in order; mapping keys may not collide."""
    for key, value in data.items():
        if key == "includes":
            continue
        if key in _INCLUDE_LISTS and isinstance(value, list):
            target = merged.setdefault(key, [])
            if not isinstance(target, list):
                continue
            merged_marks.setdefault((key,), marks.get((key,), Mark("?", 1, 1)))
            for i, item in enumerate(value):
                _copy_marks(marks, merged_marks, (key, i), (key, len(target)))
                target.append(item)
        elif key in _INCLUDE_MAPS and isinstance(value, dict):
            target_map = merged.setdefault(key, {})
            merged_marks.setdefault((key,), marks.get((key,), Mark("?", 1, 1)))
            for name, item in value.items():
                if name in target_map:
                    first = merged_marks.get((key, name))
                    raise _fail(
                        marks,
                        (key, name),
                        f"'{key}.{name}' is defined twice (also at {first})",
                        str(marks.get((key, name), "?")),
                    )
                _copy_marks(marks, merged_marks, (key, name), (key, name))
                target_map[name] = item
        else:
            merged[key] = value
            _copy_marks(marks, merged_marks, (key,), (key,))


# --- pydantic errors -> PlanError ----------------------------------------------------


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


# --- the public loader --------------------------------------------------------------


def plan_digest(documents: Sequence[tuple[str, Any]]) -> str:
    """sha256 over the canonical form of the plan and every include, in load order.

    The main plan's own file name is left out, so a byte-identical copy under another
    name (the one kept in the run directory, say) has the same digest; includes keep
    their relative names, which are part of the plan's meaning.
    """
    canonical = json.dumps(
        [{"file": name if i else "<plan>", "data": data} for i, (name, data) in enumerate(documents)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_plan(path: str | Path) -> LoadedPlan:
    """Read, parse and validate a plan file (and its includes)."""
    path = Path(path)
    shown = str(path)
    loader = _Loader(path.parent)
    data, marks = loader.load(path, shown, (path.resolve(),))
    source = SourceMap(marks)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        raise translate_validation_error(exc, source, shown) from None
    loaded = LoadedPlan(
        plan=plan,
        path=path,
        files=loader.files,
        digest=plan_digest(loader.documents),
        source=source,
    )
    _check_references(loaded)
    return loaded


def _check_references(loaded: LoadedPlan) -> None:
    """Names that must refer to something that exists: wave groups."""
    plan = loaded.plan
    for i, wave in enumerate(plan.strategy.waves):
        if isinstance(wave, str):
            missing = [name for name, env in plan.environments.items() if wave not in env.groups()]
            if missing:
                raise loaded.error(
                    ("strategy", "waves", i),
                    f"wave group '{wave}' has no hosts in environment '{missing[0]}' "
                    "(give hosts 'groups: [{wave}]')".replace("{wave}", wave),
                )


def plan_json_schema() -> dict[str, Any]:
    """The plan JSON Schema, generated from the model (for editors and CI)."""
    schema = Plan.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "rollout plan",
    }


# --- variables and rendering ------------------------------------------------------

# (model, field) pairs whose strings are shell commands: substituted values are quoted.
SHELL_FIELDS: frozenset[tuple[str, str]] = frozenset(
    {
        ("Step", "run"),
        ("Step", "rollback"),
        ("CommandCheck", "run"),
        ("DocumentSource", "command"),
        ("ParityFact", "command"),
    }
)
REDACTED = "***"


@dataclass(frozen=True)
class Variables:
    """The variables in scope for one host, and which values are secret."""

    values: Mapping[str, Any]
    secrets: frozenset[str]
    origin: dict[str, Loc]
    # shared by every host and environment rendered for one plan: bounds the total work
    budget: RenderBudget = field(default_factory=RenderBudget)


def _var_value(value: Any, *, for_validation: bool, name: str) -> tuple[Any, bool]:
    if isinstance(value, SecretVar):
        if value.value is not None:
            return value.value, True
        assert value.env is not None
        found = os.environ.get(value.env)
        if found is None:
            if for_validation:
                return REDACTED, True
            raise TemplateError(f"secret variable '{name}' reads ${value.env}, which is not set")
        return found, True
    return value, False


def host_variables(
    loaded: LoadedPlan,
    env_name: str,
    host_name: str | None,
    *,
    overrides: Mapping[str, str] | None = None,
    run_id: str = "RUN_ID",
    for_validation: bool = False,
    budget: RenderBudget | None = None,
) -> Variables:
    """Plan vars < environment vars < host vars < --var, plus built-ins, rendered."""
    plan = loaded.plan
    env = plan.environments[env_name]
    raw: dict[str, Any] = {}
    origin: dict[str, Loc] = {}
    secrets: set[str] = set()
    layers: list[tuple[Loc, Mapping[str, Any]]] = [
        (("vars",), plan.vars),
        (("environments", env_name, "vars"), env.vars),
    ]
    host = env.host(host_name) if host_name is not None else None
    if host is not None:
        layers.append((("environments", env_name, "hosts", str(host_name), "vars"), host.vars))
    for base, layer in layers:
        for name, value in layer.items():
            try:
                resolved, secret = _var_value(value, for_validation=for_validation, name=name)
            except TemplateError as exc:
                raise TemplateError(exc.message, **_location(loaded, (*base, name))) from None
            raw[name] = resolved
            origin[name] = (*base, name)
            if secret:
                # once declared secret, a name stays secret whatever layer overrides its value
                secrets.add(name)
    for name, value in (overrides or {}).items():
        raw[name] = value
        origin[name] = ()
    builtins: dict[str, Any] = {
        "env": env_name,
        "run_id": run_id,
        "plan": plan.name,
        "plan_dir": str(loaded.path.parent.resolve()),
    }
    if host_name is not None and host is not None:
        builtins.update(host=host_name, address=host.address)
    for name in builtins:
        if name in raw and origin[name]:
            raise loaded.error(origin[name], f"'{name}' is a built-in variable and cannot be redefined")
    budget = budget if budget is not None else RenderBudget()
    scope = _Scope(loaded, {**raw, **builtins}, origin, budget=budget, where=(env_name, host_name))
    return Variables(values=scope, secrets=frozenset(secrets), origin=origin, budget=budget)


BUILTIN_VARIABLES = ("env", "run_id", "plan", "plan_dir", "host", "address")
_TEMPLATE_NAME = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)")


def plan_variable_names(loaded: LoadedPlan) -> set[str]:
    """Every variable the plan defines (at any level) or names in a template."""
    plan = loaded.plan
    names = set(plan.vars)
    for env in plan.environments.values():
        names.update(env.vars)
        for host_name in env.hosts:
            names.update(env.host(host_name).vars)
    for data in loaded.files.values():
        names.update(_TEMPLATE_NAME.findall(data.decode("utf-8")))
    return names - set(BUILTIN_VARIABLES)


def check_overrides(loaded: LoadedPlan, overrides: Mapping[str, str] | None) -> None:
    """A `--var` must name a variable the plan defines or uses: a typo would be ignored."""
    if not overrides:
        return
    known = plan_variable_names(loaded)
    for name in overrides:
        if name in BUILTIN_VARIABLES:
            raise PlanError(f"--var {name}: '{name}' is a built-in variable and cannot be set", file=loaded.shown)
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
        if close:
            hint = "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        elif known:
            listed = sorted(known)
            hint = "its variables: " + ", ".join(listed[:20]) + (", ..." if len(listed) > 20 else "")
        else:
            hint = "it has no variables"
        raise PlanError(
            f"--var {name}: the plan neither defines nor uses a variable '{name}' ({hint})",
            file=loaded.shown,
        )


class _Scope(Mapping[str, Any]):
    """Variables resolved on first use, so a variable may refer to others (and to `host`)."""

    def __init__(
        self,
        loaded: LoadedPlan,
        raw: dict[str, Any],
        origin: dict[str, Loc],
        *,
        budget: RenderBudget,
        where: tuple[str, str | None],
    ) -> None:
        self._loaded = loaded
        self._raw = raw
        self._origin = origin
        self._budget = budget
        self._where = where
        self._done: dict[str, Any] = {}
        self._resolving: list[str] = []

    def __getitem__(self, name: str) -> Any:
        if name in self._done:
            return self._done[name]
        value = self._raw[name]
        if isinstance(value, str) and "{{" in value:
            if name in self._resolving:
                cycle = " -> ".join([*self._resolving[self._resolving.index(name) :], name])
                raise TemplateProblem(f"variables refer to each other in a cycle: {cycle}")
            self._resolving.append(name)
            try:
                value = render(value, self, budget=self._budget)
            except TemplateTooLarge as exc:
                raise self._too_large(name, exc) from None
            except TemplateProblem as exc:
                mark = self._loaded.source.find(self._origin.get(name, ()))
                where = f" at {mark}" if mark else ""
                if f"variable '{name}'" in str(exc) or "through variable" in str(exc):
                    raise
                raise TemplateProblem(f"{exc} (through variable '{name}' defined{where})") from None
            finally:
                self._resolving.pop()
        self._done[name] = value
        return value

    def _too_large(self, name: str, exc: TemplateTooLarge) -> TemplateError:
        """The oversized variable, located where it is defined (or named as a --var)."""
        loc = self._origin.get(name)  # () for a --var, None for a built-in
        given = " (given with --var)" if loc == () else ""
        message = _where(TemplateProblem(f"variable '{name}'{given} {exc}"), *self._where)
        return TemplateError(message, **_location(self._loaded, loc or ()))

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def _where(exc: TemplateProblem, env_name: str, host_name: str | None) -> str:
    scope = f"environment '{env_name}'" + (f", host '{host_name}'" if host_name else "")
    return f"{exc} (in {scope})"


def _location(loaded: LoadedPlan, loc: Loc) -> dict[str, Any]:
    mark = loaded.source.find(loc)
    return {
        "file": mark.file if mark else loaded.shown,
        "line": mark.line if mark else None,
        "column": mark.column if mark else None,
        "path": format_loc(loc) or None,
    }


M = typing.TypeVar("M", bound=BaseModel)


def render_model(
    loaded: LoadedPlan,
    obj: M,
    loc: Loc,
    variables: Variables,
    *,
    env_name: str,
    host_name: str | None,
) -> M:
    """A copy of `obj` with every string field rendered; shell fields are quoted."""
    updates: dict[str, Any] = {}
    for name, info in type(obj).model_fields.items():
        value = getattr(obj, name)
        key = info.alias or name
        shell = (type(obj).__name__, name) in SHELL_FIELDS
        new = _render_value(loaded, value, (*loc, key), variables, shell, env_name, host_name)
        if new is not value:
            updates[name] = new
    return obj.model_copy(update=updates) if updates else obj


def _render_value(
    loaded: LoadedPlan,
    value: Any,
    loc: Loc,
    variables: Variables,
    shell: bool,
    env_name: str,
    host_name: str | None,
) -> Any:
    if isinstance(value, str):
        if "{{" not in value:
            return value
        try:
            return render(value, variables.values, shell=shell, budget=variables.budget)
        except TemplateProblem as exc:
            raise TemplateError(_where(exc, env_name, host_name), **_location(loaded, loc)) from None
    if isinstance(value, BaseModel):
        return render_model(loaded, value, loc, variables, env_name=env_name, host_name=host_name)
    if isinstance(value, list):
        items = [
            _render_value(loaded, v, (*loc, i), variables, shell, env_name, host_name) for i, v in enumerate(value)
        ]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        rendered = {
            k: _render_value(loaded, v, (*loc, k), variables, shell, env_name, host_name) for k, v in value.items()
        }
        return value if all(rendered[k] is value[k] for k in value) else rendered
    return value


__all__ = [
    "LoadedPlan",
    "Mark",
    "PlanInvalid",
    "SourceMap",
    "TemplateError",
    "format_loc",
    "load_plan",
    "load_yaml_document",
    "plan_json_schema",
]
