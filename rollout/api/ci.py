"""What CI reads of a run: one JSON document, and each step on each host for a JUnit report.

Both are built from the run's journal (the evidence), plus the outcome the engine handed
back; nothing here prints. A run refused before it began (a freeze window, the lock, an
invalid plan) has no journal: `refusal_document` says why in the same shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rollout.errors import RolloutError
from rollout.exits import exit_status_for

if TYPE_CHECKING:
    from rollout.api.running import Prepared, RunOutcome
    from rollout.report.steps import GuardTrip, StepOnHost

# the outcome of a command that never began a run, by exit code
_NOT_RUN = {2: "invalid", 3: "refused", 130: "interrupted"}


def run_document(outcome: RunOutcome) -> dict[str, Any]:
    """The run as one JSON-ready document: outcome, exit code, hosts, failed and undone steps.

    A journal that cannot be read (the run's own outcome may be journal_failed) leaves the
    per-step parts empty and says why in `journal_error`: the document is still written.
    """
    journal_error: str | None = None
    try:
        steps, _ = run_cases(outcome)
    except RolloutError as exc:
        steps, journal_error = [], str(exc)
    schedule, result = outcome.schedule, outcome.result
    redact = outcome.redactor.text
    return {
        "outcome": result.outcome,
        "exit_code": int(outcome.exit_status),
        "run_id": outcome.run.run_id,
        "environment": schedule.env_name,
        "plan": {"name": schedule.plan_name, "digest": schedule.digest},
        "hosts": [
            {
                "host": host,
                "wave": wave,
                "steps": {s.step: s.state for s in steps if s.host == host},
            }
            for host, wave in _host_waves(outcome)
        ],
        "failed": [
            {"host": s.host, "step": s.step, "summary": redact(s.failure)} for s in steps if s.failure is not None
        ],
        "undone": [{"host": h, "step": s} for h, s in result.rolled_back],
        "cause": redact(result.cause.summary) if result.cause is not None else None,
        "journal_error": journal_error or result.journal_error,
        "journal": str(outcome.run.journal),
        "report": str(outcome.run.report) if outcome.run.report.exists() else None,
        "journal_head": f"{outcome.head[0]}:{outcome.head[1]}",
    }


def refusal_document(error: RolloutError | str, status: int, *, prepared: Prepared | None = None) -> dict[str, Any]:
    """A command that never began a run, in the run document's shape (`error` says why)."""
    schedule = prepared.schedule if prepared is not None else None
    return {
        "outcome": _NOT_RUN.get(status, "error"),
        "exit_code": status,
        "run_id": None,
        "environment": schedule.env_name if schedule else None,
        "plan": {"name": schedule.plan_name, "digest": schedule.digest} if schedule else None,
        "hosts": [],
        "failed": [],
        "undone": [],
        "cause": str(error),
        "error": str(error),
        "journal": None,
        "report": None,
        "journal_head": None,
    }


def error_status(error: RolloutError) -> int:
    """The exit code of an error that stopped a command before its run began."""
    return int(exit_status_for(error))


def run_cases(outcome: RunOutcome) -> tuple[list[StepOnHost], list[GuardTrip]]:
    """Each step on each host (schedule order), and each guard trip, from the run's journal."""
    from rollout.journal import read_journal
    from rollout.report.steps import guard_trips, steps_on_hosts

    schedule = outcome.schedule
    records = read_journal(outcome.run.journal).records
    hosts = [h for h, _ in _host_waves(outcome)]
    steps = [s.name for s in schedule.loaded.plan.steps]
    return steps_on_hosts(records, hosts, steps), guard_trips(records)


def _host_waves(outcome: RunOutcome) -> list[tuple[str, int | None]]:
    schedule = outcome.schedule
    wave_of = {h: w.index for w in schedule.waves for h in w.hosts}
    return [(h, wave_of.get(h)) for h in schedule.host_order()]
