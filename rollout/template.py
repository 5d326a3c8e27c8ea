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

_TOKEN = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\s*(?:\|\s*(raw|quote)\s*)?$")


class TemplateProblem(ValueError):
    """A template cannot be rendered; the caller adds the location."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        self.variable = variable
        super().__init__(message)


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


def render(text: str, variables: Mapping[str, Any], *, shell: bool = False) -> str:
    """Substitute every `{{ name }}`; quote for sh when `shell` (unless `| raw`)."""
    if "{{" not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        expr = _EXPR.match(match.group(1))
        if expr is None:
            raise TemplateProblem(
                f"malformed template {match.group(0)!r}: write {{{{ name }}}} or {{{{ name | raw }}}}"
            )
        value = to_text(_lookup(expr.group(1), variables))
        filt = expr.group(2)
        if filt == "quote" or (shell and filt != "raw"):
            return shlex.quote(value)
        return value

    out = _TOKEN.sub(substitute, text)
    # An opening brace pair left over means a template that never closed.
    leftover = _TOKEN.sub("", text)
    if "{{" in leftover:
        raise TemplateProblem("unclosed template: '{{' without a matching '}}'")
    return out
