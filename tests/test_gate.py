"""`rollout gate`: closed for each reason on its own, open after a proper rehearsal, evidence checked first.

Real CLI processes on a tiny local plan with a rehearsal environment (demo) and
production; time is moved with the API's `now` where a test needs a rehearsal to be old
or a freeze window to be active, never by sleeping. The parity conditions run against
two fleets of the example exchange in tests/test_gate_parity.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import signal
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from rollout.api.gate import gate, next_freeze, parse_age
from rollout.errors import UsageError
from rollout.lock import EnvironmentLock, LockHolder
from rollout.model import FreezeWindow
from tests.helpers import is_event, rollout, start_rollout, wait_for_event, write_plan

CONDITIONS = ["valid", "freeze", "rehearsed", "parity", "lock", "unrecovered"]


def tiny_plan(path: Path, *, step: str = "true", freeze: list[dict[str, Any]] | None = None) -> Path:
    """A one-step plan on one local host, with demo marked as the rehearsal environment."""
    plan: dict[str, Any] = {
        "version": 1,
        "name": "tiny",
        "environments": {
            "demo": {"rehearsal": True, "connection": "local", "hosts": {"a": {}}},
            "production": {"connection": "local", "hosts": {"a": {}}},
        },
        "steps": [{"name": "change", "run": step, "rollback": "true", "timeout": "60s"}],
    }
    if freeze:
        plan["freeze"] = freeze
    return write_plan(path, plan)


def rehearse(plan: Path, state: Path, *extra: str) -> str:
    """Run the plan on demo; the run id."""
    done = rollout("run", plan, "--env", "demo", "--state-dir", state, *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return sorted((state / "runs").iterdir())[-1].name


def run_gate(plan: Path, state: Path, *extra: str | Path) -> tuple[int, dict[str, Any]]:
    """`rollout gate PLAN --env production --json`: exit code and the verdict."""
    done = rollout("gate", plan, "--env", "production", "--state-dir", state, "--json", *extra)
    assert done.returncode in (0, 2, 3), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    return {c["name"]: c["passed"] for c in result["conditions"]}


def condition(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in result["conditions"] if c["name"] == name)


def test_the_gate_opens_after_a_rehearsal_and_writes_one_junit_case_per_condition(tmp_path: Path) -> None:
    plan, state = tiny_plan(tmp_path / "plan.yaml"), tmp_path / "state"
    run_id = rehearse(plan, state)
    junit = tmp_path / "gate.xml"
    done = rollout("gate", plan, "--env", "production", "--state-dir", state, "--junit", junit)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gate OPEN" in done.stdout
    assert f"run {run_id} on demo succeeded" in done.stdout
    cases = ET.parse(junit).getroot().findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == CONDITIONS
    assert all(c.find("failure") is None for c in cases)
    code, result = run_gate(plan, state)
    assert code == 0
    assert result["open"] is True
    assert condition(result, "rehearsed")["evidence"]["run"] == run_id


def test_closed_without_any_rehearsal(tmp_path: Path) -> None:
    plan = tiny_plan(tmp_path / "plan.yaml")
    junit = tmp_path / "gate.xml"
    code, result = run_gate(plan, tmp_path / "state", "--junit", junit)
    assert code == 3
    assert verdicts(result)["rehearsed"] is False
    assert "no rehearsal run found" in condition(result, "rehearsed")["summary"]
    failed = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase") if c.find("failure") is not None]
    assert failed == ["rehearsed"]  # the plan declares no parity facts: nothing to compare


def test_closed_when_the_rehearsal_ran_another_digest(tmp_path: Path) -> None:
    plan, state = tiny_plan(tmp_path / "plan.yaml"), tmp_path / "state"
    rehearse(plan, state)
    tiny_plan(plan, step="true # reviewed again")
    code, result = run_gate(plan, state)
    assert code == 3
    assert "no rehearsal of this plan digest" in condition(result, "rehearsed")["summary"]


def test_closed_when_the_rehearsal_is_older_than_max_age(tmp_path: Path) -> None:
    plan, state = tiny_plan(tmp_path / "plan.yaml"), tmp_path / "state"
    run_id = rehearse(plan, state)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    result = gate(plan, "production", state_dir=state, now=later, max_age=parse_age("7d"))
    assert not result.open
    rehearsed = result.conditions[2]
    assert rehearsed.name == "rehearsed"
    assert not rehearsed.passed
    assert f"run {run_id}" in rehearsed.summary
    assert "older than --max-age 7d" in rehearsed.summary
    assert gate(plan, "production", state_dir=state, now=later, max_age=parse_age("9d")).open


def test_closed_when_the_rollback_was_required_but_not_rehearsed(tmp_path: Path) -> None:
    plan, state = tiny_plan(tmp_path / "plan.yaml"), tmp_path / "state"
    rehearse(plan, state)
    code, result = run_gate(plan, state, "--require-rollback-rehearsal")
    assert code == 3
    assert [c["name"] for c in result["conditions"]] == [*CONDITIONS[:3], "rollback-rehearsed", *CONDITIONS[3:]]
    assert verdicts(result) == {**dict.fromkeys(CONDITIONS, True), "rollback-rehearsed": False}
    assert "--rehearse-rollback" in condition(result, "rollback-rehearsed")["summary"]


def test_open_with_rollback_required_after_a_rollback_rehearsal(tmp_path: Path) -> None:
    plan, state = tiny_plan(tmp_path / "plan.yaml"), tmp_path / "state"
    run_id = rehearse(plan, state, "--rehearse-rollback")
    code, result = run_gate(plan, state, "--require-rollback-rehearsal")
    assert code == 0, result
    assert condition(result, "rollback-rehearsed")["evidence"]["run"] == run_id


def test_a_rehearsal_whose_rollback_failed_keeps_the_gate_closed(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        {
            "version": 1,
            "name": "tiny",
            "environments": {
                "demo": {"rehearsal": True, "connection": "local", "hosts": {"a": {}}},
                "production": {"connection": "local", "hosts": {"a": {}}},
            },
            "steps": [{"name": "change", "run": "true", "rollback": "false"}],
        },
    )
    state = tmp_path / "state"
    done = rollout("run", plan, "--env", "demo", "--rehearse-rollback", "--state-dir", state)
    assert done.returncode == 4, done.stdout + done.stderr
    code, result = run_gate(plan, state, "--require-rollback-rehearsal")
    assert code == 3
    assert "ended rollback_failed" in condition(result, "rehearsed")["summary"]
    assert "ended rollback_failed" in condition(result, "rollback-rehearsed")["summary"]


def test_closed_inside_a_freeze_window_and_the_next_window_is_shown(tmp_path: Path) -> None:
    window = {"start": "2099-01-01T00:00:00Z", "end": "2099-01-02T00:00:00Z", "reason": "new year"}
    plan, state = tiny_plan(tmp_path / "plan.yaml", freeze=[window]), tmp_path / "state"
    rehearse(plan, state)
    code, result = run_gate(plan, state)
    assert code == 0
    assert "next freeze starts 2099-01-01 00:00 UTC" in condition(result, "freeze")["summary"]
    frozen = gate(plan, "production", state_dir=state, now=dt.datetime(2099, 1, 1, 12, tzinfo=dt.UTC), max_age=1e12)
    assert [c.name for c in frozen.conditions if not c.passed] == ["freeze"]
    assert "new year" in frozen.conditions[1].summary


def test_closed_while_production_is_locked(tmp_path: Path, lock_dir: Path) -> None:
    plan, state = tiny_plan(tmp_path / "plan.yaml"), tmp_path / "state"
    rehearse(plan, state)
    with EnvironmentLock(lock_dir, "tiny", "production") as lock:
        lock.acquire(LockHolder.current("20990101T000000Z-abcdef"))
        code, result = run_gate(plan, state)
    assert code == 3
    assert [n for n, ok in verdicts(result).items() if not ok] == ["lock"]
    assert "20990101T000000Z-abcdef" in condition(result, "lock")["summary"]
    assert run_gate(plan, state)[0] == 0  # released: open again


def test_closed_while_an_earlier_production_run_is_unrecovered(tmp_path: Path) -> None:
    plan, state = tiny_plan(tmp_path / "plan.yaml", step="sleep 60"), tmp_path / "state"
    prod_state = tmp_path / "prod-state"
    proc = start_rollout("run", plan, "--env", "production", "--yes", "--state-dir", prod_state)
    try:
        wait_for_event(prod_state, is_event("process.start"), proc=proc, timeout=30)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        code, result = run_gate(plan, state)
    finally:
        if proc.poll() is None:
            proc.kill()
        # end the orphaned step as recover would, so nothing outlives the test
        rollout("recover", "last", "--state-dir", prod_state)
    assert code == 3
    unrecovered = condition(result, "unrecovered")
    assert unrecovered["passed"] is False
    assert "died before it ended" in unrecovered["summary"]
    assert "rollout recover" in unrecovered["summary"]
    # recovered (above): the condition passes
    assert condition(run_gate(plan, state)[1], "unrecovered")["passed"] is True


def test_a_bundle_opens_the_gate_on_another_machine_and_an_edited_one_is_refused(tmp_path: Path) -> None:
    plan, ci_state = tiny_plan(tmp_path / "plan.yaml"), tmp_path / "ci-state"
    run_id = rehearse(plan, ci_state)
    artefacts = tmp_path / "artefacts"
    artefacts.mkdir()
    bundle = artefacts / "rehearsal.tar.gz"
    assert rollout("export", run_id, "-o", bundle, "--state-dir", ci_state).returncode == 0
    fresh = tmp_path / "prod-machine"
    code, result = run_gate(plan, fresh, "--evidence", bundle)
    assert code == 0, result
    assert condition(result, "rehearsed")["evidence"]["source"] == f"bundle {bundle}"
    code, result = run_gate(plan, fresh, "--evidence", artefacts)  # a directory searched for bundles
    assert code == 0, result

    with tarfile.open(bundle, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    name = f"{run_id}/journal.jsonl"
    lines = members[name].split(b"\n")
    lines[1] = lines[1].replace(b'"ts":"', b'"ts":"1', 1)
    members[name] = b"\n".join(lines)
    manifest = json.loads(members[f"{run_id}/MANIFEST.json"])
    manifest["members"]["journal.jsonl"] = hashlib.sha256(members[name]).hexdigest()  # a careful forger
    members[f"{run_id}/MANIFEST.json"] = json.dumps(manifest).encode()
    with tarfile.open(bundle, "w:gz") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    code, result = run_gate(plan, fresh, "--evidence", bundle)
    assert code == 3
    assert verdicts(result)["rehearsed"] is False
    refused = result["evidence"]["refused"]
    assert len(refused) == 1
    assert refused[0]["run"] == run_id
    assert "journal does not verify" in refused[0]["reason"]
    assert refused[0]["source"] == f"bundle {bundle}"


def test_an_invalid_plan_or_max_age_is_a_usage_error(tmp_path: Path) -> None:
    plan = tiny_plan(tmp_path / "plan.yaml")
    code, result = run_gate(plan, tmp_path / "state", "--env", "nowhere")
    assert code == 2
    assert result["conditions"][0]["name"] == "valid"
    assert result["conditions"][0]["passed"] is False
    done = rollout("gate", plan, "--env", "production", "--max-age", "soon")
    assert done.returncode == 2
    assert "--max-age" in done.stderr
    with pytest.raises(UsageError):
        parse_age("0d")


def test_an_artefact_tree_is_searched_for_state_directories_and_a_malformed_bundle_is_listed(tmp_path: Path) -> None:
    plan, ci_state = tiny_plan(tmp_path / "plan.yaml"), tmp_path / "ci-state"
    run_id = rehearse(plan, ci_state)
    artefacts = tmp_path / "artefacts"
    shutil.copytree(ci_state, artefacts / "job-1" / ".rollout")
    (artefacts / "junk.tar.gz").write_bytes(b"not a tar")
    code, result = run_gate(plan, tmp_path / "prod-machine", "--evidence", artefacts)
    assert code == 0, result
    assert condition(result, "rehearsed")["evidence"]["run"] == run_id
    refused = result["evidence"]["refused"]
    assert [r["source"] for r in refused] == [f"bundle {artefacts / 'junk.tar.gz'}"]
    assert "not a well-formed bundle" in refused[0]["reason"]


@pytest.mark.parametrize(
    ("windows", "now", "starts"),
    [
        ([], "2026-11-25T10:00:00Z", None),
        (
            [{"start": "2026-12-24T00:00:00Z", "end": "2026-12-27T00:00:00Z"}],
            "2026-11-25T10:00:00Z",
            "2026-12-24T00:00",
        ),
        ([{"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}], "2026-11-25T10:00:00Z", None),
        # Wednesday 10:00: today's 09:00 has passed, Friday's is next
        ([{"days": ["wed", "fri"], "start": "09:00", "end": "17:00"}], "2026-11-25T10:00:00Z", "2026-11-27T09:00"),
        ([{"days": ["wed"], "start": "16:00", "end": "17:00"}], "2026-11-25T10:00:00Z", "2026-11-25T16:00"),
        ([{"days": ["wed"], "start": "09:00", "end": "17:00"}], "2026-11-25T10:00:00Z", "2026-12-02T09:00"),
        (
            [
                {"days": ["mon"], "start": "09:00", "end": "10:00"},
                {"start": "2026-11-26T00:00:00Z", "end": "2026-11-27T00:00:00Z"},
            ],
            "2026-11-25T10:00:00Z",
            "2026-11-26T00:00",
        ),
    ],
)
def test_the_next_freeze_window_is_the_earliest_start_after_now(
    windows: list[dict[str, Any]], now: str, starts: str | None
) -> None:
    moment = dt.datetime.fromisoformat(now.replace("Z", "+00:00"))
    found = next_freeze([FreezeWindow.model_validate(w) for w in windows], moment)
    assert (found[0].strftime("%Y-%m-%dT%H:%M") if found else None) == starts
