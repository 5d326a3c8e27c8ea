"""Steps and the wave strategy: what changes on each host, and in what order.

Pure data with validation, no I/O.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from rollout.model.base import BakeDuration, CountOrPercent, Delay, Duration, Model, Name, WaveSize
from rollout.model.checks import Check
from rollout.units import Percent


class Step(Model):
    """One change: run, then verify; rollback undoes it (or `rollback: none`)."""

    name: Name
    run: str
    verify: list[Check] = Field(default_factory=list)
    rollback: str = Field(description="the command that undoes this step, or 'none' if it is irreversible")
    timeout: Duration = 300.0
    rollback_timeout: Duration | None = None
    retries: int = Field(default=0, ge=0, le=100)
    retry_delay: Delay = 1.0

    @model_validator(mode="before")
    @classmethod
    def _rollback_required(cls, data: Any) -> Any:
        if isinstance(data, dict) and "rollback" not in data:
            raise ValueError(
                "a step needs 'rollback': the command that undoes it, or 'rollback: none' to mark it irreversible"
            )
        if isinstance(data, dict) and data.get("rollback") is None:
            return {**data, "rollback": "none"}
        return data

    @property
    def irreversible(self) -> bool:
        """True when the plan says `rollback: none`."""
        return self.rollback.strip().lower() == "none"


# Hosts at once within a wave when the plan does not say: all of a wave of up to 64 hosts
# (the common case runs every host together), and a bounded thread pool beyond that.
DEFAULT_CONCURRENCY = 64


def _all_hosts_in_one_wave() -> list[int | Percent | str]:
    return [Percent(100.0)]


class Strategy(Model):
    """Waves, bake time, failure budget and concurrency."""

    waves: list[WaveSize] = Field(
        default_factory=_all_hosts_in_one_wave,
        description="cumulative targets: [1, 25%, 100%] = one host, then up to a quarter, then all",
    )
    bake: BakeDuration = 0.0
    failure_budget: CountOrPercent = Field(
        default=0, description="hosts that may fail (and are rolled back) before the run aborts"
    )
    concurrency: int | None = Field(
        default=None,
        ge=1,
        description=f"hosts at once within a wave (default: all of the wave, up to {DEFAULT_CONCURRENCY})",
    )

    @field_validator("waves")
    @classmethod
    def _non_empty(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("waves must list at least one wave")
        return value
