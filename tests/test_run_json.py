"""`rollout run --json` and `--junit FILE`: what a CI pipeline reads instead of parsing text.

With --json, stdout is exactly one JSON document whatever happens (success, rollback,
refusal, interrupt) and the human text goes to stderr. The JUnit file has one testcase per
host x step, the failing one carrying the step's summary, and one per guard trip.
"""

from __future__ import annotations

import json
import signal
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    RUNTIME_BREAK,
    Fleet,
    PlanSpec,
    events,
    is_event,
    rollout,
    run_args,
    running_fleet,
    start_rollout,
    wait_for_event,
    wait_for_file,
    write_exchange_plan,
)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path / "fleet", 3) as f:
        yield f


def _plan(tmp: Path, *, s2_run: str = "touch {{ dir }}/{{ host }}-s2", extra: str = "") -> Path:
    plan = tmp / "plan.yaml"
    plan.write_text(
        "name: ci\n"
        f"vars: {{dir: '{tmp}'}}\n"
        "environments:\n"
        "  demo: {rehearsal: true, hosts: {h1: {}, h2: {}}}\n"
        "  production: {hosts: {h1: {}}}\n"
        "strategy: {waves: [1, 100%], bake: 0s}\n"
        f"{extra}"
        "steps:\n"
        "  - {name: s1, run: 'touch {{ dir }}/{{ host }}-s1', rollback: 'rm -f {{ dir }}/{{ host }}-s1', timeout: 60s}\n"
        f"  - {{name: s2, run: {json.dumps(s2_run)}, rollback: 'rm -f {{{{ dir }}}}/{{{{ host }}}}-s2', timeout: 60s}}\n"
    )
    return plan


def _document(stdout: str) -> dict[str, Any]:
    """stdout holds exactly one JSON document and nothing else."""
    doc = json.loads(stdout)
    assert isinstance(doc, dict)
    for key in ("outcome", "exit_code", "run_id", "environment", "plan", "hosts", "failed", "undone", "report"):
        assert key in doc, key
    return doc


def _cases(junit: Path) -> dict[str, ET.Element]:
    root = ET.parse(junit).getroot()
    return {tc.attrib["name"]: tc for tc in root.iter("testcase")}


def test_a_successful_run_is_one_json_document_and_a_passing_junit_report(tmp_path: Path) -> None:
    state, junit = tmp_path / "state", tmp_path / "junit.xml"
    result = rollout(*run_args(_plan(tmp_path), state, "--json", "--junit", str(junit)))
    assert result.returncode == 0, result.stdout + result.stderr
    doc = _document(result.stdout)
    assert doc["outcome"] == "succeeded"
    assert doc["exit_code"] == 0
    assert doc["environment"] == "demo"
    assert doc["plan"]["name"] == "ci"
    assert doc["plan"]["digest"] == events(state)[0]["data"]["plan_digest"]
    assert [h["host"] for h in doc["hosts"]] == ["h1", "h2"]
    assert doc["hosts"][0]["steps"] == {"s1": "applied", "s2": "applied"}
    assert doc["failed"] == []
    assert doc["undone"] == []
    assert Path(doc["report"]).is_file()
    assert "SUCCEEDED" in result.stderr  # the human summary went to stderr
    cases = _cases(junit)
    assert sorted(cases) == ["h1 / s1", "h1 / s2", "h2 / s1", "h2 / s2"]
    assert not [tc for tc in cases.values() if tc.find("failure") is not None]


def test_a_rolled_back_run_names_the_failed_step_and_what_was_undone(tmp_path: Path) -> None:
    state, junit = tmp_path / "state", tmp_path / "junit.xml"
    plan = _plan(tmp_path, s2_run="touch {{ dir }}/{{ host }}-s2; echo broken >&2; exit 3")
    result = rollout(*run_args(plan, state, "--json", "--junit", str(junit)))
    assert result.returncode == 1, result.stdout + result.stderr
    doc = _document(result.stdout)
    assert doc["outcome"] == "rolled_back"
    assert doc["exit_code"] == 1
    assert len(doc["failed"]) == 1
    failed = doc["failed"][0]
    assert (failed["host"], failed["step"]) == ("h1", "s2")
    assert "exited 3" in failed["summary"]
    assert "broken" in failed["summary"]
    assert doc["undone"] == [{"host": "h1", "step": "s2"}, {"host": "h1", "step": "s1"}]
    assert doc["hosts"][1]["steps"] == {"s1": "not_started", "s2": "not_started"}
    cases = _cases(junit)
    failure = cases["h1 / s2"].find("failure")
    assert failure is not None
    assert "exited 3" in (failure.text or "")
    assert cases["h1 / s1"].find("failure") is None
    assert cases["h2 / s1"].find("skipped") is not None


def test_a_refusal_before_any_run_is_still_one_json_document(tmp_path: Path) -> None:
    state = tmp_path / "state"
    frozen = 'freeze: [{start: "2000-01-01T00:00:00Z", end: "2999-01-01T00:00:00Z", reason: forever}]\n'
    result = rollout(*run_args(_plan(tmp_path, extra=frozen), state, "--json"))
    assert result.returncode == 3, result.stdout + result.stderr
    doc = _document(result.stdout)
    assert doc["outcome"] == "refused"
    assert doc["exit_code"] == 3
    assert doc["run_id"] is None
    assert "frozen" in doc["error"]
    assert "frozen" in result.stderr


def test_a_failed_precheck_refusal_and_a_usage_error_are_json_too(tmp_path: Path) -> None:
    state = tmp_path / "state"
    checked = "prechecks: [{name: never, command: 'false'}]\n"
    refused = rollout(*run_args(_plan(tmp_path, extra=checked), state, "--json"))
    assert refused.returncode == 3, refused.stdout + refused.stderr
    doc = _document(refused.stdout)
    assert doc["outcome"] == "refused"
    assert doc["run_id"] is not None  # the run began, and its journal says why it was refused
    usage = rollout("run", _plan(tmp_path), "--env", "production", "--yes", "--rehearse-rollback", "--json")
    assert usage.returncode == 2, usage.stdout + usage.stderr
    assert _document(usage.stdout)["exit_code"] == 2
    assert not list(tmp_path.glob("h*-s*"))


def test_an_interrupted_run_is_one_json_document_with_exit_130(tmp_path: Path) -> None:
    state = tmp_path / "state"
    started = tmp_path / "s2-started"
    plan = _plan(tmp_path, s2_run=f"touch {{{{ dir }}}}/{{{{ host }}}}-s2; echo $$ > {started}; exec sleep 30")
    proc = start_rollout(*run_args(plan, state, "--json", "--grace", "100ms"))
    try:
        wait_for_event(state, is_event("step.intent", step="s2"), proc=proc)
        wait_for_file(started, proc=proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    doc = _document(out)
    assert doc["outcome"] == "interrupted"
    assert doc["exit_code"] == 130
    assert not list(tmp_path.glob("h*-s*"))


def test_a_guard_trip_is_a_junit_case_of_its_own(tmp_path: Path, fleet: Fleet) -> None:
    spec = PlanSpec(release=RUNTIME_BREAK, probe_verify=False, bake="3s", guard_every="100ms", guard_fail_after=3)
    plan = write_exchange_plan(tmp_path, fleet, spec)
    state, junit = tmp_path / "state", tmp_path / "junit.xml"
    result = rollout(*run_args(plan, state, "--json", "--junit", str(junit)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _document(result.stdout)["outcome"] == "rolled_back"
    cases = _cases(junit)
    trip = cases["guard 'order flow' on gw-1"]
    failure = trip.find("failure")
    assert failure is not None
    assert "tripped on gw-1" in (failure.text or "")
    assert {f"{h} / {s}" for h in fleet.hosts for s in ("stage-release", "activate-release")} <= set(cases)


def test_the_document_is_still_written_when_the_journal_cannot_be_read(tmp_path: Path) -> None:
    from rollout import api

    outcome = api.run(_plan(tmp_path), "demo", state_dir=tmp_path / "state", signals=False)
    assert outcome.outcome == "succeeded"
    outcome.run.journal.unlink()  # e.g. the disk that failed under the journal
    doc = api.run_document(outcome)
    json.dumps(doc)
    assert doc["outcome"] == "succeeded"
    assert doc["failed"] == []
    assert "journal" in doc["journal_error"]


def test_a_held_lock_is_a_json_refusal_naming_the_holder(tmp_path: Path) -> None:
    from rollout import api
    from rollout.lock import EnvironmentLock, LockHolder

    lock = EnvironmentLock(api.lock_dir(), "ci", "demo")
    lock.acquire(LockHolder.current("someone-else"))
    try:
        result = rollout(*run_args(_plan(tmp_path), tmp_path / "state", "--json"))
    finally:
        lock.release()
    assert result.returncode == 3, result.stdout + result.stderr
    doc = _document(result.stdout)
    assert doc["outcome"] == "refused"
    assert doc["environment"] == "demo"
    assert "someone-else" in doc["error"]
    assert not list(tmp_path.glob("h*-s*"))
