"""Parity between environments: gather each environment's facts for real (read-only), compare them.

Nothing here changes a target: facts are read-only commands, HTTP GETs and document
reads. `gather` asks one environment, `compare` is the pure comparison, `check_parity`
does both for two or more environments (what `rollout parity` prints).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.errors import UsageError

if TYPE_CHECKING:
    from rollout.checks.parity import FactReading, ParityComparison
    from rollout.planfile import LoadedPlan


@dataclass(frozen=True)
class ParityReport:
    """The facts as gathered on each environment, and how they compare."""

    plan: str
    digest: str
    gathered: Mapping[str, Mapping[str, FactReading]]  # environment -> fact -> reading
    comparison: ParityComparison

    @property
    def drift(self) -> bool:
        """True when a fact drifts or could not be gathered somewhere."""
        return self.comparison.drift

    def to_dict(self) -> dict[str, Any]:
        """For --json: the verdict, each fact's comparison, and every host's value or error."""
        return {
            "plan": {"name": self.plan, "digest": self.digest},
            "match": not self.drift,
            **self.comparison.to_dict(),
            "gathered": {
                env: {name: {**r.to_journal(), "expected": dict(r.expected)} for name, r in facts.items()}
                for env, facts in self.gathered.items()
            },
        }


def gather(
    plan: Path | str | LoadedPlan,
    env: str,
    *,
    overrides: Mapping[str, str] | None = None,
    abort: threading.Event | None = None,
) -> dict[str, FactReading]:
    """The plan's parity facts on every host of `env`, gathered for real: fact name -> reading.

    Setting `abort` (from a signal handler, say) ends the gathering at once; what was not
    gathered by then has an error, never a value. PlanError / UsageError on bad input.
    """
    from rollout.engine.parity import gather_environment
    from rollout.engine.prepare import prepare_schedule
    from rollout.planfile import load_plan

    loaded = load_plan(Path(plan)) if isinstance(plan, Path | str) else plan
    schedule = prepare_schedule(loaded, env, overrides=dict(overrides or {}), run_id="parity")
    return gather_environment(schedule, abort=abort)


def compare(gathered: Mapping[str, Mapping[str, FactReading]]) -> ParityComparison:
    """Compare facts across environments (environment -> fact -> reading); pure."""
    from rollout.checks.parity import compare_parity

    return compare_parity(gathered)


def check_parity(
    plan: Path | str | LoadedPlan,
    envs: Sequence[str],
    *,
    overrides: Mapping[str, str] | None = None,
    abort: threading.Event | None = None,
) -> ParityReport:
    """Gather the facts on each of two or more environments and compare them.

    UsageError for fewer than two environments, one named twice or one the plan lacks;
    PlanError for an invalid plan: both before any host is asked.
    """
    from rollout.engine.prepare import prepare_schedule
    from rollout.planfile import load_plan

    if len(envs) < 2:
        raise UsageError("parity compares environments: name at least two (--env A --env B)")
    twice = sorted({e for e in envs if list(envs).count(e) > 1})
    if twice:
        raise UsageError(f"environment named more than once: {', '.join(twice)}")
    loaded = load_plan(Path(plan)) if isinstance(plan, Path | str) else plan
    for env in envs:  # every environment renders before any host is asked anything
        prepare_schedule(loaded, env, overrides=dict(overrides or {}), run_id="parity")
    # Environments are asked at the same time: each is a different fleet, and a gate waits on the slowest.
    with ThreadPoolExecutor(max_workers=len(envs), thread_name_prefix="parity-env") as pool:
        futures = {env: pool.submit(gather, loaded, env, overrides=overrides, abort=abort) for env in envs}
        gathered = {env: fut.result() for env, fut in futures.items()}
    return ParityReport(loaded.plan.name, loaded.digest, gathered, compare(gathered))
