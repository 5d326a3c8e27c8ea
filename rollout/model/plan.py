"""The plan itself, with its run-wide settings: notification sinks and freeze windows.

Pure data with validation, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rollout.model.base import Model, Name, ProbeDuration, Vars
from rollout.model.checks import Check, Guard
from rollout.model.hosts import Environment, ParityFact
from rollout.model.steps import Step, Strategy


class WebhookSink(Model):
    """POST Statuspage-shaped JSON to a URL."""

    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: ProbeDuration = 5.0
    retries: int = Field(default=3, ge=0, le=10)


class FileSink(Model):
    """Append Statuspage-shaped JSON documents to a file, one a line."""

    path: str


class Notify(Model):
    """A notification sink: exactly one of webhook or file."""

    webhook: WebhookSink | None = None
    file: FileSink | None = None
    component: str | None = Field(default=None, description="the status-page component name")

    @model_validator(mode="after")
    def _one(self) -> Notify:
        if (self.webhook is None) == (self.file is None):
            raise ValueError("a notify entry needs exactly one of 'webhook' or 'file'")
        return self


class FreezeWindow(Model):
    """A time window in which runs are refused (absolute, or weekly in UTC)."""

    reason: str | None = None
    start: str = Field(description="ISO timestamp, or HH:MM for a weekly window")
    end: str = Field(description="ISO timestamp, or HH:MM for a weekly window")
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(
        default=None, description="makes the window weekly: on these days, start..end UTC"
    )


class Plan(Model):
    """A declarative upgrade plan."""

    version: Literal[1] = 1
    name: Name
    description: str | None = None
    includes: list[str] = Field(default_factory=list)
    vars: Vars = Field(default_factory=dict)
    environments: dict[Name, Environment]
    parity: list[ParityFact] = Field(default_factory=list)
    prechecks: list[Check] = Field(default_factory=list)
    guards: list[Guard] = Field(default_factory=list)
    strategy: Strategy = Field(default_factory=Strategy)
    steps: list[Step]
    notify: list[Notify] = Field(default_factory=list)
    freeze: list[FreezeWindow] = Field(default_factory=list)

    @field_validator("environments")
    @classmethod
    def _some_environments(cls, value: dict[str, Environment]) -> dict[str, Environment]:
        if not value:
            raise ValueError("a plan needs at least one environment")
        return value

    @field_validator("steps")
    @classmethod
    def _some_steps(cls, value: list[Step]) -> list[Step]:
        if not value:
            raise ValueError("a plan needs at least one step")
        seen: set[str] = set()
        repeated: set[str] = set()
        for step in value:
            (repeated if step.name in seen else seen).add(step.name)
        dupes = sorted(repeated)
        if dupes:
            raise ValueError(f"step names must be unique: {', '.join(dupes)} used more than once")
        return value
