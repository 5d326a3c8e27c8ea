"""JSON values as JSON sees them: equality (True is not 1), a hashable form, a short display.

Python compares `True == 1` and `1 == 1.0`; JSON documents do not, so every comparison of
values taken from a document goes through these helpers.
"""

from __future__ import annotations

import json
from typing import Any


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


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
