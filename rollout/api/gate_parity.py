"""The gate's parity condition: production's facts, gathered live, against those its rehearsal journaled.

Both sides are in the `parity.facts` journal format: `{fact: {"values": {host: value},
"errors": {host: why}, "expect": "equal|differ|template", "template": str|None}}`.
Invariant: a fact passes only when nothing about it is unknown. A fact the plan declares
that either side lacks, or that could not be gathered on some host, fails; `equal` facts
need one value per environment and the same value on both sides; `template` facts need
each host's value to be the template rendered for its environment and host; `differ`
facts are shown and never fail. Pure: gathering is the caller's business.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FactVerdict:
    """One fact compared: both sides' values per host, and why it drifts (None when it does not)."""

    name: str
    expect: str
    rehearsal: Mapping[str, str]
    production: Mapping[str, str]
    drift: str | None

    def to_dict(self) -> dict[str, Any]:
        """For --json."""
        return {
            "fact": self.name,
            "expect": self.expect,
            "rehearsal": dict(self.rehearsal),
            "production": dict(self.production),
            "drift": self.drift,
        }


def _values(entry: Mapping[str, Any]) -> dict[str, str]:
    return {str(h): str(v) for h, v in dict(entry.get("values") or {}).items()}


def _errors(entry: Mapping[str, Any]) -> dict[str, str]:
    return {str(h): str(v) for h, v in dict(entry.get("errors") or {}).items()}


def _inside_one(side: str, values: Mapping[str, str]) -> str | None:
    """Drift inside one environment: its hosts disagree."""
    distinct = sorted(set(values.values()))
    if len(distinct) <= 1:
        return None
    shown = ", ".join(f"{h}={v!r}" for h, v in sorted(values.items()))
    return f"the hosts of {side} disagree: {shown}"


def _template_miss(side: str, values: Mapping[str, str], expected: Mapping[str, str] | None) -> str | None:
    if expected is None:
        return f"{side}: the template cannot be rendered for its hosts"
    for host, value in sorted(values.items()):
        if host in expected and value != expected[host]:
            return f"{side} host {host} has {value!r}, the template gives {expected[host]!r}"
    return None


def _unknown(verdict: FactVerdict, rehearsal: Mapping[str, Any], production: Mapping[str, Any]) -> str | None:
    """Why the fact is not known on every host: the first error of either side."""
    for side, entry in (("the rehearsal", rehearsal), ("production", production)):
        errors = _errors(entry)
        if errors:
            host, why = sorted(errors.items())[0]
            return f"could not be gathered in {side} on {host}: {why}"
    return None


def _templated(verdict: FactVerdict, expected: Mapping[str, Mapping[str, str] | None] | None) -> str | None:
    """Drift of a template fact: a host whose value is not the template rendered for it."""
    for key, side, values in (
        ("rehearsal", "the rehearsal", verdict.rehearsal),
        ("production", "production", verdict.production),
    ):
        miss = _template_miss(side, values, (expected or {}).get(key))
        if miss:
            return miss
    return None


def _equal(verdict: FactVerdict) -> str | None:
    """Drift of an equal fact: no value, hosts of one side disagreeing, or the sides differing."""
    for side, values in (("the rehearsal", verdict.rehearsal), ("production", verdict.production)):
        if not values:
            return f"no host of {side} has a value"
        inside = _inside_one(side, values)
        if inside:
            return inside
    was, now = next(iter(verdict.rehearsal.values())), next(iter(verdict.production.values()))
    return f"the rehearsal had {was!r}, production has {now!r}" if was != now else None


def compare_fact(
    name: str,
    rehearsal: Mapping[str, Any] | None,
    production: Mapping[str, Any] | None,
    expected: Mapping[str, Mapping[str, str] | None] | None = None,
) -> FactVerdict:
    """One fact's verdict; `expected` maps "rehearsal"/"production" to each host's rendered template."""
    if rehearsal is None or production is None:
        missing = "the rehearsal's journal" if rehearsal is None else "production's gathered facts"
        return FactVerdict(name, "?", {}, {}, f"not in {missing}")
    expect = str(production.get("expect") or rehearsal.get("expect") or "equal")
    verdict = FactVerdict(name, expect, _values(rehearsal), _values(production), None)
    drift = _unknown(verdict, rehearsal, production)
    if drift is None and expect == "template":
        drift = _templated(verdict, expected)
    elif drift is None and expect != "differ":
        drift = _equal(verdict)
    return verdict if drift is None else _with(verdict, drift)


def _with(verdict: FactVerdict, drift: str) -> FactVerdict:
    return FactVerdict(verdict.name, verdict.expect, verdict.rehearsal, verdict.production, drift)


def compare_parity(
    names: Sequence[str],
    rehearsal: Mapping[str, Any],
    production: Mapping[str, Any],
    expected: Mapping[str, Mapping[str, Mapping[str, str] | None]] | None = None,
) -> list[FactVerdict]:
    """Every fact the plan declares, in its order, compared; `expected[fact]` as in `compare_fact`."""
    return [compare_fact(name, rehearsal.get(name), production.get(name), (expected or {}).get(name)) for name in names]
