"""Events: what happened in a run, before the journal gives it a place in the chain.

Kept free of pydantic so that the journal and the commands that only read journals
(timeline, verify, runs) start fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """Something that happened in a run, before the journal gives it a place in the chain."""

    kind: str
    wave: int | None = None
    host: str | None = None
    step: str | None = None
    outcome: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


class EventKind:
    """The event vocabulary, in the order a run meets it."""

    RUN_START = "run.start"
    PRECHECK = "precheck.result"
    PRECHECKS_PASSED = "prechecks.passed"
    PRECHECKS_FAILED = "prechecks.failed"
    # --rehearse-rollback: each of forward, rollback, reapply opens and closes with these
    REHEARSAL_PHASE = "rehearsal.phase"
    REHEARSAL_PHASE_END = "rehearsal.phase_end"
    PARITY_FACTS = "parity.facts"  # the plan's parity facts as gathered, before the first change
    GUARDS_START = "guards.start"
    GUARD_STATE = "guard.state"
    GUARD_LAGGING = "guard.lagging"  # a guard's probes do not start within one `every` of their due time
    GUARD_CAUGHT_UP = "guard.caught_up"  # ... and now they do again
    WAVE_START = "wave.start"
    WAVE_END = "wave.end"
    STEP_INTENT = "step.intent"
    PROCESS = "process.start"  # a step or rollback command's process group exists on its host
    STEP_RESULT = "step.result"
    VERIFY = "verify.result"
    HOST_FAILED = "host.failed"
    BAKE_START = "bake.start"
    BAKE_EXTENDED = "bake.extended"
    BAKE_END = "bake.end"
    ABORT = "abort"
    ROLLBACK_START = "rollback.start"
    ROLLBACK_INTENT = "rollback.intent"
    ROLLBACK_RESULT = "rollback.result"
    ROLLBACK_END = "rollback.end"
    RECOVERY = "recovery.guards"
    GUARDS_STOP = "guards.stop"  # the run's probing is over: how many probes, how punctual
    RECOVER_START = "recover.start"
    PROCESSES_ENDED = "recover.processes"  # what recover found still running of the dead run, and ended
    IN_DOUBT = "step.in_doubt"
    NOTIFY = "notify.delivery"
    RUN_END = "run.end"


class Outcome:
    """Run outcomes and what they mean for the exit code."""

    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    REFUSED = "refused"
    INTERRUPTED = "interrupted"
    JOURNAL_FAILED = "journal_failed"
    INTERNAL_ERROR = "internal_error"  # rollout itself failed; what it applied was rolled back
    # recover of a run that died before it changed anything (no step ever started)
    NOT_STARTED = "not_started"
