"""Units a plan and the command line share: durations and percentages.

Pure parsing and formatting, standard library only: the CLI parses its duration options
with these at start-up, without loading the plan model (pydantic) at all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# ASCII digits only: `\d` would also take "١٠s" and float() would read it as 10 seconds.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# A duration is a real wait on the monotonic clock: never NaN or infinite (a NaN timeout
# never fires, an infinite one overflows the first deadline computed from it), and never
# longer than a week, the longest a person would sit through a rollout.
MIN_DURATION = 0.001
HOUR = 3600.0
WEEK = 7 * 24 * HOUR


def _seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 10s or 5m, not a boolean")
    if isinstance(value, int):
        # compared as an int: float() of a 400-digit integer raises OverflowError
        return float(min(value, 10 * int(WEEK))) if value >= 0 else -1.0
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 500ms, 10s or 5m")
    text = value.strip()
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{_shown(value)} is not a duration: use a number with ms, s, m or h (e.g. 500ms, 10s, 5m)")
    total = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    return total if math.isfinite(total) else 10 * WEEK


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(value: object, *, minimum: float = 0.0, maximum: float = WEEK) -> float:
    """`500ms`, `10s`, `5m`, `1h30m` (or a number of seconds) -> seconds, within bounds.

    `minimum` 0 allows zero ("no wait"); a positive minimum refuses zero as meaningless.
    """
    seconds = _seconds(value)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds < minimum:
        if seconds == 0:
            raise ValueError(f"a duration of zero means nothing here: use at least {format_duration(minimum)}")
        raise ValueError(f"{_shown(value)} is too short: use at least {format_duration(minimum)}")
    if seconds > maximum:
        raise ValueError(f"{_shown(value)} is too long: at most {format_duration(maximum)}")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest plan-style duration (`1.5s`, `500ms`, `5m`)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Percent:
    """A share of hosts, 0 < value <= 100."""

    value: float

    def __str__(self) -> str:
        return f"{self.value:g}%"

    def of(self, total: int) -> int:
        """How many of `total` this share covers, rounded up, at least one."""
        if total == 0:
            return 0
        return max(1, min(total, -(-int(self.value * total) // 100)))


_PERCENT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")


def parse_percent(value: object) -> Percent:
    """`25%` -> Percent(25)."""
    if isinstance(value, Percent):
        return value
    if not isinstance(value, str) or not (m := _PERCENT.match(value)):
        raise ValueError(f"expected a percentage such as 25%, got {value!r}")
    number = float(m.group(1))
    if not 0 < number <= 100:
        raise ValueError(f"percentage {value!r} is out of range: it must be above 0% and at most 100%")
    return Percent(number)
