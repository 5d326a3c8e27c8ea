"""The public Python API: everything the commands do, as typed functions; the CLI is a shell over it.

    from rollout import api

    outcome = api.run("plans/hello.yaml", "demo", on_event=lambda e: print(e.kind, e.host or ""))
    print(outcome.outcome, int(outcome.exit_status))

Plans:    load, validate, schedule (the dry run), schedule_as_dict, prechecks, json_schema
Parity:   check_parity (-> ParityReport); rollout.api.parity.gather and .compare
Runs:     prepare, run, recover (-> RunOutcome | AlreadySettled), check_rehearsal
CI:       run_document (a run as one JSON document), refusal_document, run_cases (JUnit)
Evidence: verify (-> Verification), report (md, json, html), runs, timeline, unlock
Pinning:  rollout.api.pin (pin_of, write_lock, read_lock, prepare_pinned -> PinMismatch when it differs)
Gate:     rollout.api.gate.gate (-> GateResult), rollout.api.export.export (an evidence bundle)
Metadata: rollout.api.metadata (validate a document, diff two versions)

Nothing here prints or exits: errors are the documented tree in `rollout.errors`
(`exit_status_for` gives each its exit code), never SystemExit. Names are imported on
first use, so `import rollout.api` costs nothing until a function is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollout.api.ci import refusal_document as refusal_document
    from rollout.api.ci import run_cases as run_cases
    from rollout.api.ci import run_document as run_document
    from rollout.api.dirs import lock_dir as lock_dir
    from rollout.api.dirs import state_dir as state_dir
    from rollout.api.evidence import Verification as Verification
    from rollout.api.evidence import found_anchors as found_anchors
    from rollout.api.evidence import report as report
    from rollout.api.evidence import verify as verify
    from rollout.api.history import Timeline as Timeline
    from rollout.api.history import run_summary as run_summary
    from rollout.api.history import runs as runs
    from rollout.api.history import timeline as timeline
    from rollout.api.history import unlock as unlock
    from rollout.api.parity import ParityReport as ParityReport
    from rollout.api.parity import check_parity as check_parity
    from rollout.api.plans import PlanCheck as PlanCheck
    from rollout.api.plans import describe_check as describe_check
    from rollout.api.plans import json_schema as json_schema
    from rollout.api.plans import load as load
    from rollout.api.plans import prechecks as prechecks
    from rollout.api.plans import problems_of as problems_of
    from rollout.api.plans import schedule as schedule
    from rollout.api.plans import schedule_as_dict as schedule_as_dict
    from rollout.api.plans import validate as validate
    from rollout.api.running import AlreadySettled as AlreadySettled
    from rollout.api.running import Prepared as Prepared
    from rollout.api.running import RunOutcome as RunOutcome
    from rollout.api.running import check_rehearsal as check_rehearsal
    from rollout.api.running import check_sign_key as check_sign_key
    from rollout.api.running import freeze_check as freeze_check
    from rollout.api.running import prepare as prepare
    from rollout.api.running import recover as recover
    from rollout.api.running import run as run
    from rollout.engine.events import Sink as Sink
    from rollout.engine.outcomes import RunResult as RunResult
    from rollout.engine.prepare import Schedule as Schedule
    from rollout.errors import ExitStatus as ExitStatus
    from rollout.event import Event as Event
    from rollout.event import EventKind as EventKind
    from rollout.event import Outcome as Outcome
    from rollout.exits import exit_status_for as exit_status_for
    from rollout.model import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY
    from rollout.planfile import LoadedPlan as LoadedPlan
    from rollout.report.timeline import describe_event as describe_event

_HOMES = {
    "rollout.api.ci": ("refusal_document", "run_cases", "run_document"),
    "rollout.api.dirs": ("lock_dir", "state_dir"),
    "rollout.api.evidence": ("Verification", "found_anchors", "report", "verify"),
    "rollout.api.history": ("Timeline", "run_summary", "runs", "timeline", "unlock"),
    "rollout.api.parity": ("ParityReport", "check_parity"),
    "rollout.api.plans": (
        "PlanCheck",
        "describe_check",
        "json_schema",
        "load",
        "prechecks",
        "problems_of",
        "schedule",
        "schedule_as_dict",
        "validate",
    ),
    "rollout.api.running": (
        "AlreadySettled",
        "Prepared",
        "RunOutcome",
        "check_rehearsal",
        "check_sign_key",
        "freeze_check",
        "prepare",
        "recover",
        "run",
    ),
    "rollout.engine.outcomes": ("RunResult",),
    "rollout.engine.events": ("Sink",),
    "rollout.engine.prepare": ("Schedule",),
    "rollout.errors": ("ExitStatus",),
    "rollout.event": ("Event", "EventKind", "Outcome"),
    "rollout.exits": ("exit_status_for",),
    "rollout.model": ("DEFAULT_CONCURRENCY",),
    "rollout.planfile": ("LoadedPlan",),
    "rollout.report.timeline": ("describe_event",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "DEFAULT_CONCURRENCY",
    "AlreadySettled",
    "Event",
    "EventKind",
    "ExitStatus",
    "LoadedPlan",
    "Outcome",
    "ParityReport",
    "PlanCheck",
    "Prepared",
    "RunOutcome",
    "RunResult",
    "Schedule",
    "Sink",
    "Timeline",
    "Verification",
    "check_parity",
    "check_rehearsal",
    "check_sign_key",
    "describe_check",
    "describe_event",
    "exit_status_for",
    "found_anchors",
    "freeze_check",
    "json_schema",
    "load",
    "lock_dir",
    "prechecks",
    "prepare",
    "problems_of",
    "recover",
    "refusal_document",
    "report",
    "run",
    "run_cases",
    "run_document",
    "run_summary",
    "runs",
    "schedule",
    "schedule_as_dict",
    "state_dir",
    "timeline",
    "unlock",
    "validate",
    "verify",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562), keeping start-up lean."""
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'rollout.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
