"""`{{ name }}` templates with strict undefined and shell quoting.

Values substituted into shell commands are quoted with `shlex.quote` unless the template
says `{{ name | raw }}`; everything else is substituted as text. An undefined name is an
error naming the variable. This module never reads files and never runs anything.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\s*(?:\|\s*(raw|quote)\s*)?$")

# Variables may refer to variables, so a 1 KB plan can ask for gigabytes (`a1` is ten
# `{{ a0 }}`, `a2` ten `{{ a1 }}`, ...). One rendered value stays under MAX_VALUE_CHARS and
# all rendering for one plan under MAX_RENDER_CHARS, checked before the text is built.
MAX_VALUE_CHARS = 1024 * 1024
MAX_RENDER_CHARS = 64 * 1024 * 1024


class TemplateProblem(ValueError):
    """A template cannot be rendered; the caller adds the location."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        self.variable = variable
        super().__init__(message)


class TemplateTooLarge(TemplateProblem):
    """A rendered value, or all rendering for a plan, would pass its size limit."""


class RenderBudget:
    """Characters substituted so far for one plan; refuses work past `limit`."""

    def __init__(self, limit: int = MAX_RENDER_CHARS) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, chars: int) -> None:
        """Count `chars` more of rendering; TemplateTooLarge past the limit."""
        self.used += chars
        if self.used > self.limit:
            raise TemplateTooLarge(
                f"passes the plan's rendering limit: more than {self.limit} characters substituted in all "
                "(variables that expand each other exponentially?)"
            )


def _lookup(name: str, variables: Mapping[str, Any]) -> Any:
    head, *rest = name.split(".")
    if head not in variables:
        known = ", ".join(sorted(variables)) or "none"
        raise TemplateProblem(f"undefined variable '{head}' (defined here: {known})", variable=head)
    value = variables[head]
    for part in rest:
        if not isinstance(value, Mapping) or part not in value:
            raise TemplateProblem(f"undefined variable '{name}'", variable=name)
        value = value[part]
    return value


def to_text(value: Any) -> str:
    """How a variable's value reads when substituted: YAML-ish booleans, plain numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def render(
    text: str,
    variables: Mapping[str, Any],
    *,
    shell: bool = False,
    budget: RenderBudget | None = None,
    limit: int = MAX_VALUE_CHARS,
) -> str:
    """Substitute every `{{ name }}`; quote for sh when `shell` (unless `| raw`).

    The result is at most `limit` characters and every substitution is charged to
    `budget`; either overflowing raises TemplateTooLarge before the text is built.
    """
    if "{{" not in text:
        return text
    parts: list[str] = []
    size = 0
    pos = 0
    # str.find, not a lazy regex: `{{` repeated without `}}` made the regex quadratic.
    while (start := text.find("{{", pos)) >= 0:
        end = text.find("}}", start + 2)
        if end < 0:
            raise TemplateProblem("unclosed template: '{{' without a matching '}}'")
        token = text[start : end + 2]
        expr = _EXPR.match(token[2:-2])
        if expr is None:
            shown = token if len(token) <= 60 else token[:57] + "..."
            raise TemplateProblem(f"malformed template {shown!r}: write {{{{ name }}}} or {{{{ name | raw }}}}")
        value = to_text(_lookup(expr.group(1), variables))
        filt = expr.group(2)
        if filt == "quote" or (shell and filt != "raw"):
            value = shlex.quote(value)
        literal = text[pos:start]
        size += len(literal) + len(value)
        if size > limit:
            raise TemplateTooLarge(f"renders to more than {limit} characters (the limit for one value)")
        if budget is not None:
            budget.charge(len(value))
        parts += (literal, value)
        pos = end + 2
    tail = text[pos:]
    if size + len(tail) > limit:
        raise TemplateTooLarge(f"renders to more than {limit} characters (the limit for one value)")
    parts.append(tail)
    return "".join(parts)
