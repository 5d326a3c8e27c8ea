"""Where things were written in a plan: marks, the source map of key paths, located errors.

Pure data, no YAML and no I/O: the YAML reader fills a source map, and every later stage
(validation, includes, rendering) looks a key path up in it to say file:line:column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rollout.errors import PlanError

Loc = tuple[str | int, ...]


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
