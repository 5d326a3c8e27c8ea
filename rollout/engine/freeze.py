"""Freeze windows: when a plan says its environments must not change."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from rollout.model import FreezeWindow

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _as_utc(text: str) -> dt.datetime:
    """An ISO 8601 instant; one without a zone is taken as UTC."""
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def freeze_window_now(windows: Iterable[FreezeWindow], now: dt.datetime) -> FreezeWindow | None:
    """The freeze window that covers `now`, if any: a dated span, or weekly days and hours (UTC)."""
    for window in windows:
        if window.days is None:
            try:
                start, end = _as_utc(window.start), _as_utc(window.end)
            except ValueError:
                continue
            if start <= now < end:
                return window
        elif _DAYS[now.weekday()] in window.days and window.start <= now.strftime("%H:%M") < window.end:
            return window
    return None
