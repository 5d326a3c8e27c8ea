"""Outcomes: how a run, a step and a command ended, as plain records.

Nothing here does I/O. `RunResult` is what the engine hands back (the exit code and the
operator's summary come from it); `Cause` is what failed first; `AppliedStep` is a step
that started on a host and so belongs to the rollback; the `result_*` helpers turn a
command's result into the outcome and data its journal line carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rollout.checks import excerpt
from rollout.errors import ExitStatus
from rollout.executors.base import CommandResult
from rollout.exits import exit_status_for
from rollout.model import Step

OUTPUT_EXCERPT = 2000


@dataclass
class AppliedStep:
    """A step that started on a host: it will be rolled back if the run aborts."""

    host: str
    wave: int | None
    index: int
    step: Step
    state: str = "started"  # started -> applied | failed | in_doubt; rolled_back


@dataclass(frozen=True)
class Cause:
    """Why a run aborted: what failed first."""

    kind: str  # step | verify | guard | budget | interrupt | journal | connect | internal | rollback
    summary: str
    host: str | None = None
    step: str | None = None
    check: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """For the journal."""
        return {
            "kind": self.kind,
            "summary": self.summary,
            "host": self.host,
            "step": self.step,
            "check": self.check,
            **({"detail": dict(self.detail)} if self.detail else {}),
        }


@dataclass(frozen=True)
class RollbackFailure:
    """A rollback that did not succeed, with the evidence."""

    host: str
    step: str
    summary: str


@dataclass(frozen=True)
class RunResult:
    """How a run ended, for the exit code and the operator's summary."""

    outcome: str
    cause: Cause | None = None
    failed_prechecks: tuple[tuple[str, str, str], ...] = ()
    rolled_back: tuple[tuple[str, str], ...] = ()
    rollback_failures: tuple[RollbackFailure, ...] = ()
    remaining: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    irreversible_left: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    failed_hosts: tuple[str, ...] = ()
    guards_green: bool | None = None
    journal_error: str | None = None

    @property
    def exit_status(self) -> ExitStatus:
        """The exit code this outcome maps to."""
        return exit_status_for(self.outcome)


def ended(result: CommandResult) -> str:
    """How a command that neither timed out nor was killed by us ended, for a summary."""
    if result.connection_lost:
        # The host may have run all of it, part of it or none: never read this as done.
        return "lost its connection mid-command (whether it took effect is in doubt)"
    return f"exited {result.exit_code}"


def result_outcome(result: CommandResult) -> str:
    """The outcome a step or rollback result line carries."""
    if result.ok:
        return "ok"
    if result.connection_lost:
        return "connection_lost"
    if result.timed_out:
        return "timed_out"
    if result.cancelled:
        return "aborted"
    return "failed"


def result_data(result: CommandResult) -> dict[str, Any]:
    """The evidence a step or rollback result line carries: exit, duration, output excerpts."""
    data: dict[str, Any] = {
        "exit_code": result.exit_code,
        "duration": round(result.duration, 3),
        "stdout": excerpt(result.stdout, OUTPUT_EXCERPT),
        "stderr": excerpt(result.stderr, OUTPUT_EXCERPT),
    }
    if result.timed_out:
        data["timed_out"] = True
    if result.cancelled:
        data["cancelled"] = True
    if result.connection_lost:
        data["connection_lost"] = True
        data["in_doubt"] = True
    return data
