"""Parity: compare facts gathered on several environments and say where they drift.

Pure: the readings come from rollout.engine.parity (or from a journal's `parity.facts`
event); nothing here asks a host anything.

The rules, per fact (tests/test_parity_compare.py checks them, some on random readings):

- a host whose value could not be gathered is never a match: the fact drifts, and the
  host and its error are named;
- `equal` (the default): every host of every environment has the same value; hosts of one
  environment that disagree are drift by themselves, and so are environments whose sets
  of values differ;
- `differ`: the values are shown and never drift (hostnames);
- `template`: each host's value must equal the template rendered for that host (its
  environment's name, its vars), whatever the other environments hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MODES = ("equal", "differ", "template")


@dataclass(frozen=True)
class FactReading:
    """One fact as gathered on one environment: each host's value, or why it has none."""

    values: Mapping[str, str]
    errors: Mapping[str, str] = field(default_factory=dict)
    mode: str = "equal"
    template: str | None = None
    # template mode: the template rendered for each host, the value that host must have
    expected: Mapping[str, str] = field(default_factory=dict)

    def distinct(self) -> dict[str, list[str]]:
        """Each distinct value -> the hosts that have it, in host order."""
        out: dict[str, list[str]] = {}
        for host, value in self.values.items():
            out.setdefault(value, []).append(host)
        return out

    def to_journal(self) -> dict[str, Any]:
        """The `parity.facts` event's entry for this fact."""
        return {
            "values": dict(self.values),
            "errors": dict(self.errors),
            "expect": self.mode,
            "template": self.template,
        }

    @classmethod
    def from_journal(cls, data: Mapping[str, Any]) -> FactReading:
        """Read back a `parity.facts` entry (the rendered templates are not journaled)."""
        mode = str(data.get("expect") or "equal")
        template = data.get("template")
        return cls(
            values={str(h): str(v) for h, v in (data.get("values") or {}).items()},
            errors={str(h): str(e) for h, e in (data.get("errors") or {}).items()},
            mode=mode if mode in MODES else "equal",
            template=str(template) if template is not None else None,
        )


@dataclass(frozen=True)
class FactComparison:
    """One fact across environments: each environment's distinct values, and the drift found."""

    name: str
    mode: str
    values: Mapping[str, Mapping[str, tuple[str, ...]]]  # environment -> value -> hosts
    errors: Mapping[str, Mapping[str, str]]  # environment -> host -> why it has no value
    reasons: tuple[str, ...]  # empty when the fact matches
    template: str | None = None

    @property
    def drift(self) -> bool:
        """True when the fact does not hold (including when it could not be gathered)."""
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """For --json."""
        return {
            "name": self.name,
            "expect": self.mode,
            "template": self.template,
            "drift": self.drift,
            "reasons": list(self.reasons),
            "environments": {
                env: {
                    "values": {value: list(hosts) for value, hosts in by_value.items()},
                    "errors": dict(self.errors.get(env, {})),
                }
                for env, by_value in self.values.items()
            },
        }


@dataclass(frozen=True)
class ParityComparison:
    """Every fact compared across the environments, in plan order."""

    environments: tuple[str, ...]
    facts: tuple[FactComparison, ...]

    @property
    def drift(self) -> bool:
        """True when any fact drifts or could not be gathered."""
        return any(f.drift for f in self.facts)

    @property
    def drifting(self) -> tuple[FactComparison, ...]:
        """The facts that do not hold."""
        return tuple(f for f in self.facts if f.drift)

    def to_dict(self) -> dict[str, Any]:
        """For --json."""
        return {
            "environments": list(self.environments),
            "drift": self.drift,
            "facts": [f.to_dict() for f in self.facts],
        }


def _show(by_value: Mapping[str, Iterable[str]]) -> str:
    return ", ".join(f"{v!r} ({', '.join(hosts)})" for v, hosts in by_value.items()) or "no value"


def _fact_names(gathered: Mapping[str, Mapping[str, FactReading]]) -> list[str]:
    names: dict[str, None] = {}
    for readings in gathered.values():
        names.update(dict.fromkeys(readings))
    return list(names)


def _error_reasons(readings: Mapping[str, FactReading | None]) -> list[str]:
    reasons: list[str] = []
    for env, reading in readings.items():
        if reading is None:
            reasons.append(f"{env}: not gathered")
            continue
        reasons.extend(f"{env}/{host}: could not be gathered: {why}" for host, why in reading.errors.items())
    return reasons


def _template_reasons(readings: Mapping[str, FactReading]) -> list[str]:
    reasons: list[str] = []
    for env, reading in readings.items():
        for host, value in reading.values.items():
            wanted = reading.expected.get(host)
            if wanted is None:
                reasons.append(f"{env}/{host}: {value!r}, and the template was not rendered for it")
            elif value != wanted:
                reasons.append(f"{env}/{host}: {value!r}, the template wants {wanted!r}")
    return reasons


def _equal_reasons(readings: Mapping[str, FactReading]) -> list[str]:
    reasons: list[str] = []
    sets: dict[str, frozenset[str]] = {}
    for env, reading in readings.items():
        by_value = reading.distinct()
        sets[env] = frozenset(by_value)
        if len(by_value) > 1:
            reasons.append(f"hosts of {env} disagree: {_show(by_value)}")
    if len(set(sets.values())) > 1:
        shown = "; ".join(f"{env} {', '.join(repr(v) for v in sorted(s)) or 'no value'}" for env, s in sets.items())
        reasons.append(f"environments differ: {shown}")
    return reasons


def compare_fact(name: str, readings: Mapping[str, FactReading | None]) -> FactComparison:
    """One fact across environments (environment -> its reading, None where it was not gathered)."""
    present = {env: r for env, r in readings.items() if r is not None}
    mode = next((r.mode for r in present.values()), "equal")
    template = next((r.template for r in present.values() if r.template is not None), None)
    reasons = _error_reasons(readings)
    if mode == "template":
        reasons += _template_reasons(present)
    elif mode == "equal":
        reasons += _equal_reasons(present)
    return FactComparison(
        name=name,
        mode=mode,
        values={env: {v: tuple(hosts) for v, hosts in r.distinct().items()} for env, r in present.items()},
        errors={env: dict(r.errors) for env, r in present.items() if r.errors},
        reasons=tuple(reasons),
        template=template,
    )


def compare_parity(gathered: Mapping[str, Mapping[str, FactReading]]) -> ParityComparison:
    """Every fact across the environments (environment -> fact -> reading), in the order first seen."""
    envs = tuple(gathered)
    facts = tuple(compare_fact(name, {env: gathered[env].get(name) for env in envs}) for name in _fact_names(gathered))
    return ParityComparison(environments=envs, facts=facts)
