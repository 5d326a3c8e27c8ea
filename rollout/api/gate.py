"""`rollout gate`: whether production may run exactly this plan now, each condition with its evidence.

Conditions, in order: `valid` (the plan validates for the environment), `freeze` (no
freeze window now; the next one shown), `rehearsed` (a believed run of the same plan
digest on a rehearsal environment succeeded within max-age), `rollback-rehearsed` (only
when required: such a run also rolled everything back and re-applied), `parity`
(production's facts, gathered live and read-only, equal the rehearsal's journaled ones),
`lock` (production's environment lock is free) and `unrecovered` (no earlier run on it
is left unsettled). The gate is open only when every condition passes; it changes
nothing anywhere. Evidence is believed only as `gate_evidence` says.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.api import dirs
from rollout.api.gate_evidence import Evidence, EvidenceSet, RefusedEvidence, load_evidence, parse_ts
from rollout.errors import ExitStatus, RolloutError, UsageError

if TYPE_CHECKING:
    from rollout.api.running import Prepared
    from rollout.checks.parity import FactReading
    from rollout.model import FreezeWindow

DEFAULT_MAX_AGE = 7 * 24 * 3600.0
_AGE_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
SUCCEEDED = "succeeded"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # as plans name them, Monday first

# Production's parity facts gathered live: fact name -> reading.
Gather = Callable[["Prepared"], Mapping[str, "FactReading"]]


@dataclass(frozen=True)
class Condition:
    """One condition's verdict and the evidence behind it."""

    name: str
    passed: bool
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """For --json."""
        return {"name": self.name, "passed": self.passed, "summary": self.summary, "evidence": self.evidence}


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict: every condition, what evidence was believed and what was refused."""

    plan: str
    environment: str
    digest: str | None
    conditions: tuple[Condition, ...]
    believed: tuple[Evidence, ...]
    refused: tuple[RefusedEvidence, ...]

    @property
    def open(self) -> bool:
        """Whether every condition passed."""
        return all(c.passed for c in self.conditions)

    @property
    def exit_status(self) -> ExitStatus:
        """0 open, 3 closed, 2 when the plan does not validate for the environment."""
        if not self.conditions[0].passed:
            return ExitStatus.USAGE
        return ExitStatus.SUCCESS if self.open else ExitStatus.REFUSED

    def to_dict(self) -> dict[str, Any]:
        """For --json."""
        return {
            "open": self.open,
            "exit_code": int(self.exit_status),
            "plan": self.plan,
            "environment": self.environment,
            "digest": self.digest,
            "conditions": [c.to_dict() for c in self.conditions],
            "evidence": {"believed": len(self.believed), "refused": [r.to_dict() for r in self.refused]},
        }


def parse_age(text: str) -> float:
    """`7d`, `12h`, `30m`, `1s` or combinations (`1d12h`) -> seconds; UsageError otherwise."""
    import re

    parts = re.fullmatch(r"(?:[0-9]+[dhms])+", text.strip())
    if parts is None:
        raise UsageError(f"--max-age {text!r}: use a number with d, h, m or s (e.g. 7d, 12h)")
    seconds = sum(int(n) * _AGE_UNITS[u] for n, u in re.findall(r"([0-9]+)([dhms])", text))
    if seconds <= 0:
        raise UsageError(f"--max-age {text!r}: must be longer than zero")
    return seconds


def format_age(seconds: float) -> str:
    """Seconds -> `3d04h`, `2h05m`, `4m10s`, `12s`."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# --- freeze ---------------------------------------------------------------------------


def next_freeze(windows: Iterable[FreezeWindow], now: dt.datetime) -> tuple[dt.datetime, FreezeWindow] | None:
    """The next freeze window to start after `now` (dated, or weekly in UTC), with its start."""
    found: list[tuple[dt.datetime, FreezeWindow]] = []
    for window in windows:
        if window.days is None:
            start = parse_ts(window.start)  # as the freeze check reads it: no zone means UTC
            if start is not None and start > now:
                found.append((start, window))
            continue
        hour, minute = (int(x) for x in window.start.split(":"))
        for ahead in range(8):
            day = (now + dt.timedelta(days=ahead)).replace(hour=hour, minute=minute, second=0, microsecond=0)
            if WEEKDAYS[day.weekday()] in window.days and day > now:
                found.append((day, window))
                break
    return min(found, key=lambda pair: pair[0]) if found else None


def _freeze(prepared: Prepared, now: dt.datetime) -> Condition:
    from rollout.engine.freeze import freeze_window_now

    windows = prepared.loaded.plan.freeze
    upcoming = next_freeze(windows, now)
    evidence: dict[str, Any] = {"next": None}
    if upcoming is not None:
        start, window = upcoming
        evidence["next"] = {
            "starts": start.isoformat(),
            "reason": window.reason,
            "start": window.start,
            "end": window.end,
        }
    nxt = f"; next freeze starts {upcoming[0]:%Y-%m-%d %H:%M} UTC" if upcoming else "; no freeze window ahead"
    active = freeze_window_now(windows, now)
    if active is not None:
        evidence["active"] = {"start": active.start, "end": active.end, "reason": active.reason}
        return Condition(
            "freeze", False, f"frozen now ({active.start} .. {active.end}): {active.reason or 'freeze'}", evidence
        )
    return Condition("freeze", True, f"no freeze window now{nxt}", evidence)


# --- rehearsed ------------------------------------------------------------------------


def _age(piece: Evidence, now: dt.datetime) -> float | None:
    ended = piece.ended
    return None if ended is None else (now - ended).total_seconds()


def _describe(piece: Evidence, now: dt.datetime) -> dict[str, Any]:
    age = _age(piece, now)
    return {
        "run": piece.run_id,
        "source": piece.source,
        "environment": piece.environment,
        "digest": piece.digest,
        "outcome": piece.record.get("outcome"),
        "ended": piece.record.get("ended"),
        "age": None if age is None else format_age(age),
        "rollback": piece.record.get("rollback"),
    }


def _rehearsals(prepared: Prepared, believed: Iterable[Evidence]) -> list[Evidence]:
    """Believed runs on a rehearsal environment other than the gated one, newest first."""
    envs = prepared.loaded.plan.environments
    target = prepared.schedule.env_name
    found = []
    for piece in believed:
        env = piece.environment
        if env is None or env == target or piece.record.get("rehearsal") is not True:
            continue
        if piece.digest == prepared.loaded.digest and (env not in envs or not envs[env].rehearsal):
            continue  # same plan, but that environment is not a rehearsal one in it
        found.append(piece)
    return sorted(found, key=lambda p: (p.record.get("ended") or "", p.run_id), reverse=True)


def _qualifies(piece: Evidence, digest: str, now: dt.datetime, max_age: float) -> bool:
    age = _age(piece, now)
    return piece.digest == digest and piece.record.get("outcome") == SUCCEEDED and age is not None and age <= max_age


def _nearest_miss(candidates: list[Evidence], digest: str, now: dt.datetime, max_age: float) -> str:
    if not candidates:
        return "no rehearsal run found"
    same = [p for p in candidates if p.digest == digest]
    if not same:
        newest = candidates[0]
        return f"no rehearsal of this plan digest: the newest, run {newest.run_id} on {newest.environment}, ran digest {newest.digest}"
    newest = same[0]
    if newest.record.get("outcome") != SUCCEEDED:
        return f"the newest rehearsal of this digest, run {newest.run_id} on {newest.environment}, ended {newest.record.get('outcome') or 'without a run.end'}"
    age = _age(newest, now) or 0.0
    return f"the newest successful rehearsal, run {newest.run_id}, ended {format_age(age)} ago: older than --max-age {format_age(max_age)}"


def _rollback_ok(piece: Evidence) -> bool:
    rollback = piece.record.get("rollback") or {}
    return rollback.get("exercised") is True and rollback.get("outcome") == "ok"


def _rehearsed(
    prepared: Prepared, believed: Iterable[Evidence], now: dt.datetime, max_age: float, require_rollback: bool
) -> tuple[list[Condition], Evidence | None]:
    """The `rehearsed` (and `rollback-rehearsed`) conditions and the rehearsal parity is judged against."""
    digest = prepared.loaded.digest
    candidates = _rehearsals(prepared, believed)
    good = [p for p in candidates if _qualifies(p, digest, now, max_age)]
    if good:
        best = good[0]
        age = format_age(_age(best, now) or 0.0)
        rehearsed = Condition(
            "rehearsed",
            True,
            f"run {best.run_id} on {best.environment} succeeded {age} ago, digest {digest}",
            _describe(best, now),
        )
    else:
        best = None
        miss = _nearest_miss(candidates, digest, now, max_age)
        nearest = [p for p in candidates if p.digest == digest] or candidates
        rehearsed = Condition("rehearsed", False, miss, _describe(nearest[0], now) if nearest else {})
    if not require_rollback:
        return [rehearsed], best
    proven = [p for p in good if _rollback_ok(p)]
    if proven:
        chosen = proven[0]
        summary = f"run {chosen.run_id} rolled every step back with guards green, then re-applied"
        return [rehearsed, Condition("rollback-rehearsed", True, summary, _describe(chosen, now))], chosen
    tried = [p for p in candidates if p.digest == digest and (p.record.get("rollback") or {}).get("exercised")]
    if tried:
        outcome = tried[0].record.get("outcome")
        # a rollback rehearsal that succeeded and is not among the good ones is too old
        why = f"the newest rollback rehearsal, run {tried[0].run_id}, " + (
            f"is older than --max-age {format_age(max_age)}" if outcome == SUCCEEDED else f"ended {outcome}"
        )
        return [rehearsed, Condition("rollback-rehearsed", False, why, _describe(tried[0], now))], best
    why = "no rehearsal of this digest exercised the rollback (run it with --rehearse-rollback)"
    return [rehearsed, Condition("rollback-rehearsed", False, why, _describe(best, now) if best else {})], best


# --- parity ---------------------------------------------------------------------------


def gather_live(prepared: Prepared) -> Mapping[str, FactReading]:
    """Production's parity facts, gathered now with read-only commands, requests and document reads."""
    from rollout.api.parity import gather

    return gather(prepared.loaded, prepared.schedule.env_name, overrides=prepared.overrides)


def _journaled(prepared: Prepared, rehearsal: Evidence, facts: Mapping[str, Any]) -> dict[str, FactReading]:
    """The rehearsal's journaled facts as readings; a template fact gets each host's rendered template.

    The journal keeps the template, not what it rendered to: the rehearsal's environment is
    rendered again from the same plan (same digest), as `rollout parity` renders it.
    """
    from rollout.api.running import prepare
    from rollout.checks.parity import FactReading

    readings = {str(name): FactReading.from_journal(entry) for name, entry in facts.items() if isinstance(entry, dict)}
    templated = [
        i
        for i, fact in enumerate(prepared.loaded.plan.parity)
        if fact.name in readings and readings[fact.name].template
    ]
    if not templated or rehearsal.environment is None:
        return readings
    try:
        schedule = prepare(prepared.loaded.path, rehearsal.environment).schedule
    except RolloutError:
        return readings  # no expected values: every host of it is named as not matching the template
    for index in templated:
        name = prepared.loaded.plan.parity[index].name
        expected = {h.name: str(h.parity[index].template) for h in schedule.hosts.values() if h.parity[index].template}
        reading = readings[name]
        readings[name] = FactReading(reading.values, reading.errors, reading.mode, reading.template, expected)
    return readings


def _parity(prepared: Prepared, rehearsal: Evidence | None, gather: Gather) -> Condition:
    from rollout.checks.parity import compare_parity

    if not prepared.loaded.plan.parity:
        return Condition("parity", True, "the plan declares no parity facts")
    if rehearsal is None or rehearsal.environment is None:
        return Condition("parity", False, "no rehearsal to compare production with")
    journaled = (rehearsal.record.get("parity") or {}).get("facts")
    if not isinstance(journaled, dict):
        return Condition(
            "parity", False, f"run {rehearsal.run_id} journaled no parity facts", {"run": rehearsal.run_id}
        )
    try:
        live = gather(prepared)
    except RolloutError as exc:
        return Condition("parity", False, f"production's facts could not be gathered: {exc}")
    production = prepared.schedule.env_name
    compared = compare_parity({rehearsal.environment: _journaled(prepared, rehearsal, journaled), production: live})
    evidence = {"run": rehearsal.run_id, "facts": [f.to_dict() for f in compared.facts]}
    if compared.drift:
        shown = "; ".join(f"{f.name}: {'; '.join(f.reasons)}" for f in compared.drifting)
        return Condition("parity", False, f"drift from run {rehearsal.run_id}: {shown}", evidence)
    return Condition("parity", True, f"{len(compared.facts)} facts match run {rehearsal.run_id}", evidence)


# --- lock and unrecovered ---------------------------------------------------------------


def _lock(prepared: Prepared, lock_dir: Path) -> Condition:
    from rollout.lock import read_lock_holder

    plan, env = prepared.schedule.plan_name, prepared.schedule.env_name
    try:
        holder = read_lock_holder(lock_dir, plan, env)
    except (RolloutError, ValueError) as exc:
        return Condition("lock", False, f"the lock cannot be read: {exc}")
    if holder is None:
        return Condition("lock", True, f"plan {plan!r} on {env!r} is not locked", {"lock_dir": str(lock_dir)})
    return Condition(
        "lock",
        False,
        f"locked by {holder.describe()}, lock id {holder.lock_id}",
        {"run": holder.run_id, "pid": holder.pid, "host": holder.host, "lock_id": holder.lock_id},
    )


def _unrecovered(prepared: Prepared, lock_dir: Path) -> Condition:
    from rollout.api.settle import unsettled
    from rollout.lock import EnvironmentLock

    lock = EnvironmentLock(lock_dir, prepared.schedule.plan_name, prepared.schedule.env_name)
    try:
        last = lock.last_run()
    except RolloutError as exc:
        return Condition("unrecovered", False, str(exc))
    if last is None:
        return Condition("unrecovered", True, "no earlier run is left unsettled")
    why = unsettled(last.run_dir)
    evidence = {"run": last.run_id, "run_dir": str(last.run_dir)}
    if why is None:
        return Condition("unrecovered", True, f"the last run, {last.run_id}, settled", evidence)
    return Condition(
        "unrecovered", False, f"run {last.run_id} has not settled: {why} (rollout recover {last.run_id})", evidence
    )


# --- the gate ---------------------------------------------------------------------------


def gate(
    plan: Path | str,
    env: str,
    *,
    overrides: Mapping[str, str] | None = None,
    evidence: Iterable[Path | str] = (),
    max_age: float = DEFAULT_MAX_AGE,
    require_rollback: bool = False,
    state_dir: Path | str | None = None,
    lock_dir: Path | str | None = None,
    now: dt.datetime | None = None,
    gather: Gather | None = None,
) -> GateResult:
    """Judge every condition for running `plan` on `env` now; read-only. `now` and `gather` are for tests."""
    from rollout.api.running import prepare

    moment = now or dt.datetime.now(dt.UTC)
    try:
        prepared = prepare(plan, env, overrides=overrides)
    except RolloutError as exc:
        text = exc.render() if hasattr(exc, "render") else str(exc)
        return GateResult(str(plan), env, None, (Condition("valid", False, text),), (), ())
    conditions = [
        Condition("valid", True, f"{prepared.loaded.shown} validates for {env}", {"digest": prepared.loaded.digest})
    ]
    conditions.append(_freeze(prepared, moment))
    with load_evidence(evidence, state_dir=dirs.state_dir(state_dir)) as found:
        conditions += _judge(prepared, found, moment, max_age, require_rollback, gather or gather_live)
        locks = dirs.lock_dir(lock_dir)
        conditions += [_lock(prepared, locks), _unrecovered(prepared, locks)]
        return GateResult(
            prepared.schedule.plan_name,
            env,
            prepared.loaded.digest,
            tuple(conditions),
            tuple(found.believed),
            tuple(found.refused),
        )


def _judge(
    prepared: Prepared, found: EvidenceSet, now: dt.datetime, max_age: float, require_rollback: bool, gather: Gather
) -> list[Condition]:
    rehearsed, rehearsal = _rehearsed(prepared, found.believed, now, max_age, require_rollback)
    return [*rehearsed, _parity(prepared, rehearsal, gather)]
