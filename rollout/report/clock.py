"""Journal timestamps for the report: parsing, offsets and the clock-time shown in tables."""

from __future__ import annotations

import datetime as dt


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
