"""The orchestrator dies (SIGKILL) at each kind of journal point; `rollout recover` finishes the job.

Also: recover refuses a plan that changed since the run, and `rollout verify` detects any
edit, deletion or reordering of a real run's journal.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.cli.app import run_cli
from tests.helpers import (
    Fleet,
    PlanSpec,
    events,
    is_event,
    kill_pidfile,
    pid_alive,
    rollout,
    run_args,
    run_id_of,
    running_fleet,
    start_rollout,
    wait_for_event,
    write_exchange_plan,
    write_plan,
)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path / "fleet", 3) as f:
        yield f


def _slow(pidfile: Path) -> str:
    # the step's shell becomes the sleep, so the test can kill the orphan the dead run left
    return f"echo $$ > {pidfile}; exec sleep 30"


def after_intent(tmp: Path) -> tuple[PlanSpec, Callable[[dict[str, Any]], bool]]:
    step = {"name": "slow", "run": _slow(tmp / "orphan.pid"), "rollback": "true", "timeout": "60s"}
    return PlanSpec(extra_steps=[step]), is_event("step.intent", step="slow")


def after_outcome(tmp: Path) -> tuple[PlanSpec, Callable[[dict[str, Any]], bool]]:
    slow_verify = {"name": "slow check", "command": _slow(tmp / "orphan.pid"), "timeout": "60s"}
    spec = PlanSpec(activate_verify_extra=[slow_verify], probe_verify=False)
    return spec, is_event("step.result", step="activate-release", outcome="ok")


def during_rollback(tmp: Path) -> tuple[PlanSpec, Callable[[dict[str, Any]], bool]]:
    # the activate rollback is slow the first time only (the dead run's attempt)
    marker = tmp / "rollback-started"
    prefix = f"if [ ! -f {marker} ]; then touch {marker}; echo $$ > {tmp / 'orphan.pid'}; sleep 30; fi; "
    fail = {"name": "post-check", "run": "false", "rollback": "true", "timeout": "5s"}
    spec = PlanSpec(extra_steps=[fail], activate_rollback_prefix=prefix)
    started = is_event("rollback.intent", step="activate-release")
    # Killed once the dead run's rollback is in its slow part: recover's own attempt must be the fast one.
    return spec, lambda e: started(e) and (tmp / "orphan.pid").exists()


def during_bake(tmp: Path) -> tuple[PlanSpec, Callable[[dict[str, Any]], bool]]:
    return PlanSpec(bake="60s"), is_event("bake.start", wave=1)


@pytest.mark.parametrize("point", [after_intent, after_outcome, during_rollback, during_bake])
def test_recover_after_sigkill_puts_every_target_back(
    tmp_path: Path, fleet: Fleet, point: Callable[[Path], tuple[PlanSpec, Callable[[dict[str, Any]], bool]]]
) -> None:
    spec, killed_at = point(tmp_path)
    plan = write_exchange_plan(tmp_path, fleet, spec)
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state))
    try:
        wait_for_event(state, killed_at, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        run_id = run_id_of(state)
        assert "run.end" not in [e["kind"] for e in events(state)]

        result = rollout("recover", run_id, "--state-dir", state)
        assert result.returncode == 1, result.stdout + result.stderr
        # What the dead run left running (its slow step, verify or rollback) was ended by recover.
        orphan = tmp_path / "orphan.pid"
        if orphan.exists():
            assert not pid_alive(int(orphan.read_text())), "recover left the dead run's command running"
        assert "targets are back where they started" in result.stdout
        for host in fleet.hosts:
            assert fleet.untouched(host), host
        evts = events(state)
        assert evts[-1]["kind"] == "run.end"
        assert evts[-1]["outcome"] == "rolled_back"
        assert rollout("verify", run_id, "--state-dir", state).returncode == 0
    finally:
        proc.kill()
        kill_pidfile(tmp_path / "orphan.pid")


def test_recover_refuses_a_changed_plan_and_accepts_the_original(tmp_path: Path, fleet: Fleet) -> None:
    spec, killed_at = during_bake(tmp_path)
    plan = write_exchange_plan(tmp_path, fleet, spec)
    # the digest covers the file's name too: the operator's kept copy has the same name
    (tmp_path / "original").mkdir()
    original = tmp_path / "original" / plan.name
    shutil.copyfile(plan, original)
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state))
    try:
        wait_for_event(state, killed_at, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    run_id = run_id_of(state)
    changed = json.loads(plan.read_text())
    changed["strategy"]["bake"] = "1s"
    write_plan(plan, changed)

    refused = rollout("recover", run_id, "--state-dir", state)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "--plan" in refused.stderr
    assert not fleet.untouched("gw-1"), "a refused recover must not touch the targets"

    result = rollout("recover", run_id, "--state-dir", state, "--plan", original)
    assert result.returncode == 1, result.stdout + result.stderr
    for host in fleet.hosts:
        assert fleet.untouched(host), host


# --- the journal's hash chain ---------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("chain")
    plan = tmp / "plan.yaml"
    plan.write_text(
        "name: chain\nenvironments: {demo: {rehearsal: true, hosts: {h1: {}, h2: {}}}}\nsteps:\n"
        + "".join(f"  - {{name: s{i}, run: 'true', rollback: 'true'}}\n" for i in range(3))
    )
    state = tmp / "state"
    assert run_cli(run_args(plan, state)) == 0
    return state, run_id_of(state)


def _mutations() -> list[tuple[str, Callable[[list[bytes]], list[bytes]]]]:
    def edit(i: int) -> Callable[[list[bytes]], list[bytes]]:
        def apply(lines: list[bytes]) -> list[bytes]:
            obj = json.loads(lines[i])
            obj["outcome"] = "ok" if obj.get("outcome") != "ok" else "failed"
            return [*lines[:i], json.dumps(obj, separators=(",", ":")).encode(), *lines[i + 1 :]]

        return apply

    def delete(i: int) -> Callable[[list[bytes]], list[bytes]]:
        return lambda lines: lines[:i] + lines[i + 1 :]

    def swap(i: int) -> Callable[[list[bytes]], list[bytes]]:
        return lambda lines: [*lines[:i], lines[i + 1], lines[i], *lines[i + 2 :]]

    return [
        ("edit first", edit(0)),
        ("edit middle", edit(5)),
        ("edit last", edit(-1)),
        ("delete first", delete(0)),
        ("delete middle", delete(5)),
        ("delete last", delete(-1)),
        ("swap first two", swap(0)),
        ("swap middle", swap(5)),
        ("swap last two", swap(-2)),
    ]


def test_an_untouched_journal_verifies(finished_run: tuple[Path, str]) -> None:
    state, run_id = finished_run
    assert run_cli(["verify", run_id, "--state-dir", str(state)]) == 0


@pytest.mark.parametrize(("name", "mutate"), _mutations(), ids=[n for n, _ in _mutations()])
def test_any_edit_deletion_or_reordering_of_the_journal_is_detected(
    tmp_path: Path, finished_run: tuple[Path, str], name: str, mutate: Callable[[list[bytes]], list[bytes]]
) -> None:
    state, run_id = finished_run
    copy = tmp_path / "state"
    shutil.copytree(state, copy)
    journal = copy / "runs" / run_id / "journal.jsonl"
    lines = journal.read_bytes().splitlines()
    journal.write_bytes(b"\n".join(mutate(lines)) + b"\n")
    assert run_cli(["verify", run_id, "--state-dir", str(copy)]) == 5, name
