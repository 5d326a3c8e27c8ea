"""The Python API: what a script, a test suite or a chat-ops bot relies on.

Invariants: the API never prints and never raises SystemExit; bad input and refusals
raise the documented errors before anything changes; once a run began, how it ended is
the returned outcome, with the same exit code the command would give; importing the API
costs nothing until it is used.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rollout import api
from rollout.errors import ExitStatus, LockHeld, PlanError, Refused, UsageError
from rollout.exits import exit_status_for
from rollout.lock import EnvironmentLock, LockHolder

HEAVY = ("pydantic", "paramiko", "httpx", "jsonschema", "yaml", "rich")


def write_plan(tmp_path: Path, *, fail_step: bool = False, freeze: str = "") -> Path:
    out = tmp_path / "out"
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""
version: 1
name: api-test
environments:
  lab:
    rehearsal: true
    connection: local
    hosts: {{ h1: {{ groups: [canary] }}, h2: {{}} }}
{freeze}
strategy:
  waves: [canary, 100%]
steps:
  - name: one
    run: mkdir -p {out} && touch {out}/{{{{ host }}}}-one
    rollback: rm -f {out}/{{{{ host }}}}-one
  - name: two
    run: {"exit 3" if fail_step else f"touch {out}/{{{{ host }}}}-two"}
    rollback: rm -f {out}/{{{{ host }}}}-two
"""
    )
    return plan


def test_a_run_reports_every_event_in_order_and_its_outcome(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[api.Event] = []
    outcome = api.run(write_plan(tmp_path), "lab", on_event=seen.append, state_dir=tmp_path / "state")
    assert outcome.outcome == api.Outcome.SUCCEEDED
    assert outcome.exit_status == ExitStatus.SUCCESS
    assert seen[0].kind == api.EventKind.RUN_START
    assert seen[-1].kind == api.EventKind.RUN_END
    assert outcome.head[0] == len(seen), "every event the callback saw is in the journal"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["h1-one", "h1-two", "h2-one", "h2-two"]
    assert capsys.readouterr() == ("", ""), "the API never prints"
    assert api.verify(outcome.run.run_id, state_dir=tmp_path / "state").ok


def test_a_failed_run_is_rolled_back_and_returned_not_raised(tmp_path: Path) -> None:
    outcome = api.run(write_plan(tmp_path, fail_step=True), "lab", state_dir=tmp_path / "state")
    assert outcome.outcome == api.Outcome.ROLLED_BACK
    assert outcome.exit_status == ExitStatus.ROLLED_BACK == exit_status_for(outcome.outcome)
    assert list((tmp_path / "out").iterdir()) == [], "the canary's applied step was undone"
    assert outcome.result.cause is not None
    assert outcome.result.cause.step == "two"
    assert "two" in api.report(outcome.run.run_id, state_dir=tmp_path / "state")


def test_bad_input_raises_documented_errors_never_system_exit(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(PlanError) as err:
        api.run(broken, "lab", state_dir=tmp_path / "state")
    assert "broken.yaml:" in str(err.value)
    assert exit_status_for(err.value) == ExitStatus.USAGE
    with pytest.raises(UsageError):
        api.run(write_plan(tmp_path), state_dir=tmp_path / "state")  # no environment named
    with pytest.raises(UsageError, match="no environment 'nowhere'"):
        api.run(write_plan(tmp_path), "nowhere", state_dir=tmp_path / "state")
    prepared = api.prepare(write_plan(tmp_path), "lab")
    with pytest.raises(UsageError, match="prepared for 'lab'"):
        api.run(prepared, "production", state_dir=tmp_path / "state")
    with pytest.raises(UsageError, match="overrides to prepare"):
        api.run(prepared, overrides={"release": "v3"}, state_dir=tmp_path / "state")
    assert not (tmp_path / "state").exists(), "nothing was created for a run that never began"


def test_a_held_lock_refuses_before_any_change(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    prepared = api.prepare(plan, "lab")
    lock = EnvironmentLock(api.lock_dir(), prepared.schedule.plan_name, "lab")
    lock.acquire(LockHolder.current("someone-else"))
    try:
        with pytest.raises(LockHeld) as err:
            api.run(prepared, state_dir=tmp_path / "state")
    finally:
        lock.release()
    assert exit_status_for(err.value) == ExitStatus.REFUSED
    assert not (tmp_path / "out").exists()


def test_a_freeze_window_refuses_before_any_change(tmp_path: Path) -> None:
    freeze = "freeze:\n  - { start: '2000-01-01T00:00:00Z', end: '2999-01-01T00:00:00Z', reason: year-end }\n"
    with pytest.raises(Refused, match="year-end"):
        api.run(write_plan(tmp_path, freeze=freeze), "lab", state_dir=tmp_path / "state")
    assert not (tmp_path / "out").exists()


def test_a_run_from_a_worker_thread_leaves_signal_handling_alone(tmp_path: Path) -> None:
    """A bot runs plans off the main thread: signal.signal would raise there, so it is not touched."""
    result: list[api.RunOutcome] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            result.append(api.run(write_plan(tmp_path), "lab", state_dir=tmp_path / "state"))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=60)
    assert not errors, errors
    assert result[0].outcome == api.Outcome.SUCCEEDED


def test_validate_and_dry_run_change_nothing(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    checked = api.validate(plan)
    assert checked.valid, checked.problems
    data = api.schedule_as_dict(api.schedule(plan, "lab"))
    assert [w["hosts"] for w in data["waves"]] == [["h1"], ["h2"]]
    assert data["hosts"]["h1"]["steps"][0]["rollback"].startswith("rm -f")
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nsteps: 3\n")
    checked = api.validate(bad)
    assert not checked.valid
    assert all(p.file and p.file.endswith("bad.yaml") for p in checked.problems)


def test_recover_of_a_settled_run_does_nothing(tmp_path: Path) -> None:
    outcome = api.run(write_plan(tmp_path), "lab", state_dir=tmp_path / "state")
    again = api.recover(outcome.run.run_id, state_dir=tmp_path / "state")
    assert isinstance(again, api.AlreadySettled)
    assert again.outcome == api.Outcome.SUCCEEDED
    assert again.exit_status == ExitStatus.SUCCESS


def test_history_and_timeline_match_the_run(tmp_path: Path) -> None:
    seen: list[str] = []
    outcome = api.run(write_plan(tmp_path), "lab", on_event=lambda e: seen.append(e.kind), state_dir=tmp_path / "state")
    [entry] = api.runs(state_dir=tmp_path / "state")
    assert entry["run"] == outcome.run.run_id
    assert entry["outcome"] == api.Outcome.SUCCEEDED
    assert [r.kind for r in api.timeline("last", state_dir=tmp_path / "state")] == seen


def test_importing_the_api_imports_nothing_heavy() -> None:
    code = f"import sys, rollout, rollout.api; sys.exit(sorted(m for m in {HEAVY!r} if m in sys.modules) or 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"imported at start-up: {proc.stderr}"


def test_the_api_names_resolve_and_are_reachable_from_the_package() -> None:
    import rollout

    for name in api.__all__:
        if name == "report":
            continue  # rollout.report is the report package; the function is rollout.api.report
        assert getattr(api, name) is getattr(rollout, name)
    with pytest.raises(AttributeError):
        _ = api.no_such_name  # type: ignore[attr-defined]
