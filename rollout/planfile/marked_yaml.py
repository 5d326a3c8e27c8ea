"""YAML -> plain data with a mark (file:line:column) for every key path.

The only module in rollout/ that imports yaml; anything else that reads YAML (plans,
metadata documents) goes through `parse_marked` or `load_yaml_document`. It composes the
node graph with the safe loader and builds plain data itself, so that it can keep a mark
for every key path, refuse duplicate keys and unsafe tags, and cap alias expansion (a
billion-laughs file fails fast, in bounded memory).

It must never read files or run anything: it turns text into data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from rollout.errors import PlanError
from rollout.planfile.locations import Loc, Mark, format_loc

MAX_NODES = 200_000
MAX_DEPTH = 100

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


_STR = "tag:yaml.org,2002:str"


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

    def build_document(self, node: yaml.Node, *, anchors: bool = True) -> Any:
        """Plain data from a whole document, refusing an alias bomb before expanding it.

        `anchors=False` says the text has no '&' at all, so no node is shared and the
        builder's own node count is the whole story: sizing the graph first is skipped.
        """
        if anchors:
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
        """Plain data from `node` at `loc`, recording its mark."""
        self._admit(node, loc, depth)
        if loc not in self.marks:
            self.marks[loc] = self.mark(node)
        if isinstance(node, yaml.ScalarNode):
            return self._build_scalar(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*loc, i), depth + 1) for i, child in enumerate(node.value)]
        assert isinstance(node, yaml.MappingNode)
        return self._build_mapping(node, loc, depth)

    def _admit(self, node: yaml.Node, loc: Loc, depth: int) -> None:
        """Count the node against the caps and refuse unsafe tags, before building anything."""
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

    def _build_scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        if node.tag == _STR:
            return node.value  # what the constructor returns for a string, without its bookkeeping
        try:
            value = self._scalars.construct_object(node)
        except yaml.YAMLError as exc:
            raise self.fail(node, loc, f"cannot read this value: {exc}") from exc
        if isinstance(value, dt.datetime | dt.date):
            return value.isoformat()
        return value

    def _build_mapping(self, node: yaml.MappingNode, loc: Loc, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen: dict[str, Mark] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                for source in self._merge_sources(value_node, loc):
                    for k, v in source.items():
                        merged.setdefault(k, v)
                continue
            key = self._mapping_key(key_node, loc)
            if key in seen:
                first = seen[key]
                raise self.fail(
                    key_node,
                    (*loc, key),
                    f"duplicate key '{key}' (first defined at line {first.line})",
                )
            seen[key] = self.marks[(*loc, key)] = self.mark(key_node)
            out[key] = self.build(value_node, (*loc, key), depth + 1)
        for k, v in merged.items():
            out.setdefault(k, v)
        return out

    def _mapping_key(self, key_node: yaml.Node, loc: Loc) -> str:
        """A mapping key as a string: plain scalars only, and never a boolean."""
        if not isinstance(key_node, yaml.ScalarNode):
            raise self.fail(key_node, loc, "a mapping key must be a plain scalar")
        if key_node.tag == _STR:
            return str(key_node.value)
        key = self._scalars.construct_object(key_node)
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise self.fail(key_node, loc, f"a mapping key must be a string, got {key!r}")
        return str(key)

    def _merge_sources(self, node: yaml.Node, loc: Loc) -> list[dict[str, Any]]:
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        sources = []
        for child in nodes:
            value = self.build(child, loc)
            if not isinstance(value, dict):
                raise self.fail(child, loc, "'<<' merges a mapping (or a list of mappings)")
            sources.append(value)
        return sources


_FAST_LOADER: type[yaml.CSafeLoader] | None = yaml.CSafeLoader if yaml.__with_libyaml__ else None


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


@dataclass(frozen=True)
class MarkedDocument:
    """One YAML document as plain data, with the mark of every key path it holds."""

    data: Any
    marks: dict[Loc, Mark]
    start: Mark  # where the document's top-level value begins


def _parse(text: str, name: str) -> tuple[yaml.Node, _Builder, Any] | None:
    """Compose and build one document: libyaml first; on any refusal, the pure-Python path.

    Every document libyaml refuses (or the builder refuses after it) is parsed again by
    the pure-Python parser, so errors read exactly as they always have, and a document
    only the pure-Python parser accepts is still accepted. libyaml composes several times
    faster; it refuses nesting deeper than 1,000 levels itself, so its (C) recursion is
    bounded, and the builder enforces the tighter MAX_DEPTH.
    """
    fast = _FAST_LOADER
    if fast is not None:
        try:
            node = yaml.compose(text, Loader=fast)
            if node is None:
                return None
            builder = _Builder(name)
            return node, builder, builder.build_document(node, anchors="&" in text)
        except (yaml.YAMLError, PlanError):
            pass
    node = _compose(text, name)
    if node is None:
        return None
    builder = _Builder(name)
    return node, builder, builder.build_document(node, anchors="&" in text)


def parse_marked(text: str, name: str) -> MarkedDocument | None:
    """Parse one YAML document safely, keeping marks; None for an empty document."""
    parsed = _parse(text, name)
    if parsed is None:
        return None
    node, builder, data = parsed
    return MarkedDocument(data=data, marks=builder.marks, start=builder.mark(node))


def load_yaml_document(text: str, name: str) -> Any:
    """Parse one YAML document safely (no tags, no duplicate keys, capped aliases)."""
    parsed = _parse(text, name)
    return None if parsed is None else parsed[2]
