"""`run --rehearse-rollback`: forward, rollback, reapply in one run and one journal; the rehearsal record.

Real processes throughout: the example exchange for the happy path, small local plans with
marker files for each way a phase can fail, be interrupted or die.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.journal import read_journal
from rollout.report.rehearsal import rehearsal_record
from tests.helpers import (
    V2,
    Fleet,
    events,
    is_event,
    rollout,
    run_args,
    run_id_of,
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


def _phases(evts: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """(kind, phase, outcome) of every rehearsal phase line, in journal order."""
    return [
        (e["kind"], e["data"]["phase"], e["data"].get("outcome"))
        for e in evts
        if e["kind"] in ("rehearsal.phase", "rehearsal.phase_end")
    ]


def _record(state: Path, run_id: str) -> dict[str, Any]:
    """rehearsal.json, checked against the record recomputed from the (verified) journal."""
    run = state / "runs" / run_id
    written = json.loads((run / "rehearsal.json").read_text())
    assert written == rehearsal_record(read_journal(run / "journal.jsonl").records)
    return written


def _local_plan(tmp: Path, s2_run: str = "touch {{ dir }}/{{ host }}-s2", s2_rollback: str = "") -> Path:
    """Two steps on two local hosts in two waves; each step leaves a file its rollback removes."""
    rollback = s2_rollback or "rm -f {{ dir }}/{{ host }}-s2"
    plan = tmp / "plan.yaml"
    plan.write_text(
        "name: rehearse\n"
        f"vars: {{dir: '{tmp}'}}\n"
        "environments:\n"
        "  demo: {rehearsal: true, hosts: {h1: {}, h2: {}}}\n"
        "  production: {hosts: {h1: {}, h2: {}}}\n"
        "strategy: {waves: [1, 100%], bake: 0s}\n"
        "steps:\n"
        "  - {name: s1, run: 'touch {{ dir }}/{{ host }}-s1', rollback: 'rm -f {{ dir }}/{{ host }}-s1', timeout: 60s}\n"
        f"  - {{name: s2, run: {json.dumps(s2_run)}, rollback: {json.dumps(rollback)}, timeout: 60s}}\n"
    )
    return plan


def _applied(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.glob("h*-s*"))


ALL_APPLIED = ["h1-s1", "h1-s2", "h2-s1", "h2-s2"]


def test_rehearse_rollback_proves_both_ways_and_leaves_demo_upgraded(tmp_path: Path, fleet: Fleet) -> None:
    plan = write_exchange_plan(tmp_path, fleet)
    state = tmp_path / "state"
    result = rollout(*run_args(plan, state, "--rehearse-rollback"))
    assert result.returncode == 0, result.stdout + result.stderr
    for host in fleet.hosts:
        assert fleet.is_at(host, V2), host
    run_id = run_id_of(state)
    evts = events(state)
    assert _phases(evts) == [
        ("rehearsal.phase", "forward", None),
        ("rehearsal.phase_end", "forward", "ok"),
        ("rehearsal.phase", "rollback", None),
        ("rehearsal.phase_end", "rollback", "ok"),
        ("rehearsal.phase", "reapply", None),
        ("rehearsal.phase_end", "reapply", "ok"),
    ]
    kinds = [e["kind"] for e in evts]
    rollback_at = kinds.index("rehearsal.phase", kinds.index("rehearsal.phase") + 1)
    reapply_at = kinds.index("rehearsal.phase", rollback_at + 1)
    # every applied step on every host was rolled back in the rollback phase, and guards were green after it
    undone = {(e["host"], e["step"]) for e in evts[rollback_at:reapply_at] if e["kind"] == "rollback.result"}
    assert undone == {(h, s) for h in fleet.hosts for s in ("stage-release", "activate-release")}
    assert any(e["kind"] == "recovery.guards" and e["outcome"] == "green" for e in evts[rollback_at:reapply_at])
    assert kinds[-1] == "run.end"
    assert evts[-1]["outcome"] == "succeeded"
    # the reapply's end and the verdict are journaled together (the guards' summary precedes any verdict)
    assert kinds[-3:] == ["rehearsal.phase_end", "guards.stop", "run.end"]

    record = _record(state, run_id)
    assert record["outcome"] == "succeeded"
    assert record["forward"]["outcome"] == "ok"
    assert record["rollback"] == {"exercised": True, "outcome": "ok", "seconds": record["rollback"]["seconds"]}
    assert record["reapply"]["outcome"] == "ok"
    assert record["rehearsal"] is True
    assert record["environment"] == "demo"
    assert record["journal_head"] == json.loads((state / "runs" / run_id / "head").read_text())["hash"]

    report = rollout("report", run_id, "--state-dir", state).stdout
    assert "## Rehearsal" in report
    assert "| rollback | **ok** |" in report
    html = rollout("report", run_id, "--format", "html", "--state-dir", state).stdout
    assert "<h2>Rehearsal</h2>" in html
    timeline = rollout("timeline", run_id, "--state-dir", state).stdout
    assert (
        timeline.index("REHEARSAL forward") < timeline.index("REHEARSAL rollback") < timeline.index("REHEARSAL reapply")
    )
    assert rollout("verify", run_id, "--state-dir", state).returncode == 0


def test_a_plain_run_on_a_rehearsal_environment_records_rollback_not_exercised(tmp_path: Path) -> None:
    plan = _local_plan(tmp_path)
    state = tmp_path / "state"
    result = rollout(*run_args(plan, state))
    assert result.returncode == 0, result.stdout + result.stderr
    record = _record(state, run_id_of(state))
    assert record["outcome"] == "succeeded"
    assert record["forward"]["outcome"] == "ok"
    assert record["rollback"] == {"exercised": False, "outcome": None, "seconds": None}
    assert record["reapply"] is None
    assert record["parity"] is None
    assert "## Rehearsal" not in (state / "runs" / run_id_of(state) / "report.md").read_text()


def test_the_record_carries_the_parity_facts_the_run_journaled(tmp_path: Path) -> None:
    plan = _local_plan(tmp_path)
    plan.write_text(plan.read_text() + "parity:\n  - {name: build, command: 'echo 1.4.2'}\n")
    state = tmp_path / "state"
    result = rollout(*run_args(plan, state, "--rehearse-rollback"))
    assert result.returncode == 0, result.stdout + result.stderr
    facts = next(e for e in events(state) if e["kind"] == "parity.facts")
    record = _record(state, run_id_of(state))
    assert record["parity"] == facts["data"]
    assert record["parity"]["facts"]["build"]["values"] == {"h1": "1.4.2", "h2": "1.4.2"}


def test_a_rehearsal_whose_rollback_fails_stops_there_exits_4_and_records_it(tmp_path: Path) -> None:
    broken = tmp_path / "rollback-is-broken"
    broken.touch()  # s2's rollback fails while this exists: only the rehearsal's rollback meets it
    plan = _local_plan(tmp_path, s2_rollback=f"test ! -e {broken} && rm -f {{{{ dir }}}}/{{{{ host }}}}-s2")
    state = tmp_path / "state"
    result = rollout(*run_args(plan, state, "--rehearse-rollback"))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "ROLLBACK FAILED" in result.stdout
    run_id = run_id_of(state)
    evts = events(state)
    assert _phases(evts) == [
        ("rehearsal.phase", "forward", None),
        ("rehearsal.phase_end", "forward", "ok"),
        ("rehearsal.phase", "rollback", None),
        ("rehearsal.phase_end", "rollback", "failed"),
    ]
    assert evts[-1]["kind"] == "run.end"
    assert evts[-1]["outcome"] == "rollback_failed"
    assert "rehearsal's rollback failed" in evts[-1]["data"]["cause"]["summary"]
    assert _applied(tmp_path) == ALL_APPLIED  # s2 could not be undone, so s1 under it was left alone
    record = _record(state, run_id)
    assert record["outcome"] == "rollback_failed"
    assert record["rollback"]["exercised"] is True
    assert record["rollback"]["outcome"] == "failed"
    assert record["reapply"] is None

    broken.unlink()  # the operator fixes the rollback; recover undoes what remains
    recovered = rollout("recover", run_id, "--state-dir", state)
    assert recovered.returncode == 1, recovered.stdout + recovered.stderr
    assert _applied(tmp_path) == []
    assert _record(state, run_id)["outcome"] == "rolled_back"  # recover rewrote the record


def test_rehearse_rollback_is_refused_off_a_rehearsal_environment(tmp_path: Path) -> None:
    plan = _local_plan(tmp_path)
    state = tmp_path / "state"
    result = rollout("run", plan, "--env", "production", "--yes", "--state-dir", state, "--rehearse-rollback")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not a rehearsal environment" in result.stderr
    assert _applied(tmp_path) == []
    assert not (state / "runs").exists()


def test_a_forward_failure_is_an_ordinary_rollback_and_the_record_says_forward_failed(tmp_path: Path) -> None:
    plan = _local_plan(tmp_path, s2_run="touch {{ dir }}/{{ host }}-s2; test {{ host }} = h1")
    state = tmp_path / "state"
    result = rollout(*run_args(plan, state, "--rehearse-rollback"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _applied(tmp_path) == []
    assert _phases(events(state)) == [
        ("rehearsal.phase", "forward", None),
        ("rehearsal.phase_end", "forward", "failed"),
    ]
    record = _record(state, run_id_of(state))
    assert record["outcome"] == "rolled_back"
    assert record["forward"]["outcome"] == "failed"
    assert record["rollback"]["exercised"] is False
    assert record["reapply"] is None


def test_a_reapply_failure_rolls_back_and_exits_1(tmp_path: Path) -> None:
    # s2 on h2 succeeds the first time only: the reapply meets the failure
    once = "{{ dir }}/{{ host }}-ran-once"
    plan = _local_plan(
        tmp_path,
        s2_run=f"if [ {{{{ host }}}} = h2 ] && [ -e {once} ]; then exit 7; fi; touch {once} {{{{ dir }}}}/{{{{ host }}}}-s2",
    )
    state = tmp_path / "state"
    result = rollout(*run_args(plan, state, "--rehearse-rollback"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _applied(tmp_path) == []
    phases = _phases(events(state))
    assert phases[-2:] == [("rehearsal.phase", "reapply", None), ("rehearsal.phase_end", "reapply", "failed")]
    record = _record(state, run_id_of(state))
    assert record["rollback"]["outcome"] == "ok"
    assert record["reapply"]["outcome"] == "failed"
    assert record["outcome"] == "rolled_back"


def _gated_rollback(tmp: Path) -> str:
    """s2's rollback: says it started, then waits for the test's go (bounded)."""
    started, go = tmp / "rollback-started", tmp / "go"
    return (
        f"echo $$ >> {started}; for i in $(seq 200); do [ -e {go} ] && break; sleep 0.05; done; "
        "rm -f {{ dir }}/{{ host }}-s2"
    )


def test_ctrl_c_in_the_rehearsals_rollback_lets_it_finish_then_ends_interrupted(tmp_path: Path) -> None:
    plan = _local_plan(tmp_path, s2_rollback=_gated_rollback(tmp_path))
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state, "--rehearse-rollback"))
    try:
        wait_for_event(state, is_event("rehearsal.phase", data={"phase": "rollback"}), proc=proc)
        wait_for_file(tmp_path / "rollback-started", proc=proc)
        proc.send_signal(signal.SIGINT)
        (tmp_path / "go").touch()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    assert _applied(tmp_path) == []
    evts = events(state)
    assert ("rehearsal.phase", "reapply", None) not in _phases(evts)
    assert not [e for e in evts if e["kind"] == "step.intent"][4:]  # nothing started after the forward phase
    assert evts[-1]["outcome"] == "interrupted"
    assert _record(state, run_id_of(state))["outcome"] == "interrupted"


@pytest.mark.parametrize("phase", ["rollback", "reapply"])
def test_recover_after_a_crash_in_a_rehearsal_phase_rolls_back_what_the_journal_says_is_applied(
    tmp_path: Path, phase: str
) -> None:
    if phase == "rollback":
        plan = _local_plan(tmp_path, s2_rollback=_gated_rollback(tmp_path))
        point, running = is_event("rehearsal.phase", data={"phase": "rollback"}), tmp_path / "rollback-started"
    else:
        # s2 hangs in the reapply (its second run), after s1 was applied again on h1
        pidfile = tmp_path / "reapply.pid"
        s2 = f"if [ -e {{{{ dir }}}}/{{{{ host }}}}-once ]; then echo $$ > {pidfile}; exec sleep 30; fi; touch {{{{ dir }}}}/{{{{ host }}}}-once {{{{ dir }}}}/{{{{ host }}}}-s2"
        plan = _local_plan(tmp_path, s2_run=s2)
        point, running = is_event("rehearsal.phase", data={"phase": "reapply"}), pidfile
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state, "--rehearse-rollback"))
    try:
        wait_for_event(state, point, proc=proc)
        wait_for_file(running, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        proc.kill()
        (tmp_path / "go").touch()
    run_id = run_id_of(state)
    result = rollout("recover", run_id, "--state-dir", state)
    assert result.returncode == 1, result.stdout + result.stderr
    assert _applied(tmp_path) == []
    assert "targets are back where they started" in result.stdout
    record = _record(state, run_id)
    assert record["outcome"] == "rolled_back"
    assert record[phase]["outcome"] == "failed"  # the phase never ended: it did not pass
    assert rollout("verify", run_id, "--state-dir", state).returncode == 0
