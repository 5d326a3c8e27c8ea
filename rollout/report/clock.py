"""Journal timestamps for the report: parsing, offsets and the clock-time shown in tables."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable


def parse_ts(ts: str) -> dt.datetime:
    """A journal timestamp (`...Z`) as an aware datetime."""
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def clock(ts: str) -> str:
    """`2026-11-23T22:47:56.308Z` -> `22:47:56.308`."""
    return ts[11:23]


def seconds_between(a: str | None, b: str | None) -> float | None:
    """Seconds from timestamp a to b (3 decimals), or None when either is missing."""
    if a is None or b is None:
        return None
    return round((parse_ts(b) - parse_ts(a)).total_seconds(), 3)


def offsets_from(first: str) -> Callable[[str], float]:
    """Seconds (3 decimals) from timestamp `first` to a timestamp, as `seconds_between(first, ts)` gives them.

    Remembers each timestamp it has seen: the report asks for every record's offset
    twice (timeline, swimlanes), and events of the same millisecond share one.
    """
    t0 = parse_ts(first)
    seen: dict[str, float] = {}

    def offset(ts: str) -> float:
        value = seen.get(ts)
        if value is None:
            value = seen[ts] = round((parse_ts(ts) - t0).total_seconds(), 3)
        return value

    return offset
