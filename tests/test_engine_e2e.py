"""Whole runs of `rollout run` as real processes against a private toy-exchange fleet.

Each test asserts what an operator cares about: where every host ended up (the live file
and what the gateway serves), the exit code, and what the journal says happened.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    RUNTIME_BREAK,
    V2,
    Fleet,
    PlanSpec,
    events,
    is_event,
    journal_path,
    kill_pidfile,
    kinds,
    pid_alive,
    rollback_order,
    rollout,
    run_args,
    running_fleet,
    start_rollout,
    started_steps,
    wait_for_event,
    write_exchange_plan,
)

FAIL_ON_THIS_HOST = {
    "name": "post-check",
    "run": 'test "{{ fail_here }}" != yes',
    "rollback": "true",
    "timeout": "5s",
}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path / "fleet", 4) as f:
        yield f


def _assert_rolled_back_newest_first(evts: list[dict[str, object]], hosts: list[str]) -> None:
    started = started_steps(evts)
    undone = rollback_order(evts)
    for host in hosts:
        assert undone.get(host) == list(reversed(started[host])), (
            f"{host}: started {started[host]}, undone {undone.get(host)}"
        )


def test_success_across_three_waves_upgrades_every_host(tmp_path: Path, fleet: Fleet) -> None:
    plan = write_exchange_plan(tmp_path, fleet)
    result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCEEDED" in result.stdout
    for host in fleet.hosts:
        assert fleet.is_at(host, V2), host
    evts = events(tmp_path / "state")
    assert [e["wave"] for e in evts if e["kind"] == "wave.start"] == [1, 2, 3]
    assert evts[-1]["kind"] == "run.end"
    assert evts[-1]["outcome"] == "succeeded"


def test_a_step_failing_in_wave_two_rolls_back_waves_one_and_two_newest_first(tmp_path: Path, fleet: Fleet) -> None:
    # waves: gw-1 | gw-2, gw-3 | gw-4; the third step fails on gw-3 only
    spec = PlanSpec(waves=[1, 3, "100%"], extra_steps=[FAIL_ON_THIS_HOST], host_vars={"gw-3": {"fail_here": "yes"}})
    plan = write_exchange_plan(tmp_path, fleet, spec)
    result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 1, result.stdout + result.stderr
    evts = events(tmp_path / "state")
    failed = next(e for e in evts if e["kind"] == "step.result" and e["outcome"] == "failed")
    assert (failed["host"], failed["step"], failed["wave"]) == ("gw-3", "post-check", 2)
    reached = ["gw-1", "gw-2", "gw-3"]
    assert set(started_steps(evts)) == set(reached)
    assert started_steps(evts)["gw-1"] == ["stage-release", "activate-release", "post-check"]
    _assert_rolled_back_newest_first(evts, reached)
    # gw-1's three steps were undone, newest first, and every rollback succeeded
    assert rollback_order(evts)["gw-1"] == ["post-check", "activate-release", "stage-release"]
    assert all(e["outcome"] == "ok" for e in evts if e["kind"] == "rollback.result")
    for host in fleet.hosts:
        assert fleet.untouched(host), host
    assert not any(e.get("host") == "gw-4" for e in evts if e["kind"].startswith(("step.", "rollback.")))
    assert "ROLLED BACK" in result.stdout
    assert "gw-3" in result.stdout


def test_a_red_probe_after_activation_fails_verification_and_rolls_back(tmp_path: Path, fleet: Fleet) -> None:
    plan = write_exchange_plan(tmp_path, fleet, PlanSpec(release=RUNTIME_BREAK, guard=False))
    result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 1, result.stdout + result.stderr
    evts = events(tmp_path / "state")
    bad = [e for e in evts if e["kind"] == "verify.result" and e["outcome"] == "failed"]
    assert bad
    assert bad[0]["host"] == "gw-1"
    assert bad[0]["data"]["check"] == "order flow is green"
    assert rollback_order(evts) == {"gw-1": ["activate-release", "stage-release"]}
    for host in fleet.hosts:
        assert fleet.untouched(host), host
        assert fleet.probe_ok(host), host


def test_a_guard_trips_during_bake_and_the_run_rolls_back(tmp_path: Path, fleet: Fleet) -> None:
    # The read-back passes (the gateway serves the release); only the order-flow guard sees the break.
    # Guard probes reuse one connection (a few ms each), so 3 failures at 100ms would trip before
    # the wave's bake starts: 10 failures (1s) land the trip inside the 3s bake.
    spec = PlanSpec(release=RUNTIME_BREAK, probe_verify=False, bake="3s", guard_every="100ms", guard_fail_after=10)
    plan = write_exchange_plan(tmp_path, fleet, spec)
    result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 1, result.stdout + result.stderr
    evts = events(tmp_path / "state")
    guard_states = [(e["host"], e["outcome"]) for e in evts if e["kind"] == "guard.state"]
    assert guard_states[:2] == [("gw-1", "failing"), ("gw-1", "tripped")]
    seq = kinds(evts)
    tripped = next(i for i, e in enumerate(evts) if e["kind"] == "guard.state" and e["outcome"] == "tripped")
    activating = next(i for i, e in enumerate(evts) if e["kind"] == "step.intent" and e["step"] == "activate-release")
    # The trip may land in the bake or, on a loaded machine, before the wave has even ended;
    # either way it follows the change and the next wave never starts.
    assert activating < tripped < seq.index("abort")
    assert set(started_steps(evts)) == {"gw-1"}, "no step of the next wave starts while the canary is red"
    abort = evts[seq.index("abort")]
    assert abort["data"]["cause"]["kind"] == "guard"
    assert rollback_order(evts) == {"gw-1": ["activate-release", "stage-release"]}
    assert evts[-1]["outcome"] == "rolled_back"
    assert evts[-1]["data"]["guards_green"] is True
    for host in fleet.hosts:
        assert fleet.untouched(host), host


def test_exceeding_the_failure_budget_aborts_and_rolls_back_everything(tmp_path: Path, fleet: Fleet) -> None:
    spec = PlanSpec(
        waves=[1, "100%"],
        failure_budget=1,
        extra_steps=[FAIL_ON_THIS_HOST],
        host_vars={"gw-2": {"fail_here": "yes"}, "gw-3": {"fail_here": "yes"}},
    )
    plan = write_exchange_plan(tmp_path, fleet, spec)
    result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 1, result.stdout + result.stderr
    evts = events(tmp_path / "state")
    budgets = sorted(e["outcome"] for e in evts if e["kind"] == "host.failed")
    assert budgets == ["budget_exceeded", "within_budget"]
    assert evts[kinds(evts).index("abort")]["data"]["cause"]["kind"] == "budget"
    for host in fleet.hosts:
        assert fleet.untouched(host), host


def test_a_failure_within_budget_rolls_that_host_back_and_the_run_goes_on(tmp_path: Path, fleet: Fleet) -> None:
    spec = PlanSpec(
        waves=[1, "100%"], failure_budget=1, extra_steps=[FAIL_ON_THIS_HOST], host_vars={"gw-2": {"fail_here": "yes"}}
    )
    plan = write_exchange_plan(tmp_path, fleet, spec)
    result = rollout(*run_args(plan, tmp_path / "state"))
    # Documented: the run succeeds (exit 0) and names the host that was rolled back.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed within the failure budget and were rolled back: gw-2" in result.stdout
    evts = events(tmp_path / "state")
    assert evts[-1]["outcome"] == "succeeded"
    assert evts[-1]["data"]["failed_hosts"] == ["gw-2"]
    assert rollback_order(evts) == {"gw-2": ["post-check", "activate-release", "stage-release"]}
    assert fleet.untouched("gw-2")
    for host in ("gw-1", "gw-3", "gw-4"):
        assert fleet.is_at(host, V2), host


def test_a_step_that_times_out_is_killed_with_its_process_group(tmp_path: Path, fleet: Fleet) -> None:
    pidfile = tmp_path / "child.pid"
    hang = {
        "name": "hang",
        "run": f"sleep 60 & echo $! > {pidfile}; sleep 60",
        "rollback": "true",
        "timeout": "500ms",
    }
    plan = write_exchange_plan(tmp_path, fleet, PlanSpec(waves=["100%"], extra_steps=[hang], host_vars={}))
    try:
        result = rollout(*run_args(plan, tmp_path / "state"))
        assert result.returncode == 1, result.stdout + result.stderr
        evts = events(tmp_path / "state")
        assert any(e["kind"] == "step.result" and e["outcome"] == "timed_out" for e in evts)
        background = int(pidfile.read_text())
        assert not pid_alive(background), "the step's background child outlived its timeout"
        for host in fleet.hosts:
            assert fleet.untouched(host), host
    finally:
        kill_pidfile(pidfile)


def test_a_failed_rollback_exits_4_and_names_what_remains_applied(tmp_path: Path, fleet: Fleet) -> None:
    spec = PlanSpec(
        waves=[1, "100%"],
        activate_rollback_prefix="echo cannot restore >&2; exit 1; ",
        extra_steps=[FAIL_ON_THIS_HOST],
        host_vars={"gw-1": {"fail_here": "yes"}},
    )
    plan = write_exchange_plan(tmp_path, fleet, spec)
    result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "ROLLBACK FAILED" in result.stdout
    assert "rollback FAILED on gw-1, step activate-release" in result.stdout
    assert re.search(r"still applied.*\n\s+gw-1: activate-release, stage-release", result.stdout)
    evts = events(tmp_path / "state")
    # the older step was left alone: no rollback of stage-release under a failed activate rollback
    assert rollback_order(evts) == {"gw-1": ["post-check", "activate-release"]}
    for host in ("gw-2", "gw-3", "gw-4"):
        assert fleet.untouched(host), host


def test_a_failed_precheck_on_one_host_changes_nothing_anywhere(tmp_path: Path, fleet: Fleet) -> None:
    spec = PlanSpec(
        prechecks=[{"name": "host is ready", "command": 'test "{{ fail_here }}" != yes'}],
        host_vars={"gw-3": {"fail_here": "yes"}},
    )
    plan = write_exchange_plan(tmp_path, fleet, spec)
    result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "gw-3: pre-check 'host is ready' failed" in result.stdout
    evts = events(tmp_path / "state")
    assert not [e for e in evts if e["kind"] in ("step.intent", "rollback.intent")]
    for host in fleet.hosts:
        assert fleet.untouched(host), host


def _slow_step(pidfile: Path, seconds: int = 30) -> dict[str, object]:
    return {"name": "slow", "run": f"echo $$ > {pidfile}; exec sleep {seconds}", "rollback": "true", "timeout": "60s"}


def test_ctrl_c_during_a_wave_rolls_back_and_exits_130(tmp_path: Path, fleet: Fleet) -> None:
    pidfile = tmp_path / "slow.pid"
    step = {"name": "slow", "run": "sleep 1", "rollback": "true", "timeout": "30s"}
    plan = write_exchange_plan(tmp_path, fleet, PlanSpec(extra_steps=[step]))
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state, "--grace", "20s"))
    try:
        wait_for_event(state, is_event("step.intent", step="slow"), proc=proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        evts = events(state)
        # the first Ctrl-C lets the in-flight step finish, then rolls everything back
        assert any(e["kind"] == "step.result" and e["step"] == "slow" and e["outcome"] == "ok" for e in evts)
        assert evts[kinds(evts).index("abort")]["data"]["cause"]["kind"] == "interrupt"
        assert rollback_order(evts) == {"gw-1": ["slow", "activate-release", "stage-release"]}
        assert evts[-1]["outcome"] == "interrupted"
        for host in fleet.hosts:
            assert fleet.untouched(host), host
    finally:
        proc.kill()
        kill_pidfile(pidfile)


def test_a_second_ctrl_c_kills_in_flight_commands_and_still_rolls_back(tmp_path: Path, fleet: Fleet) -> None:
    pidfile = tmp_path / "slow.pid"
    plan = write_exchange_plan(tmp_path, fleet, PlanSpec(extra_steps=[_slow_step(pidfile)]))
    state = tmp_path / "state"
    proc = start_rollout(*run_args(plan, state, "--grace", "60s"))
    try:
        wait_for_event(state, is_event("step.intent", step="slow"), proc=proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # the abort is journaled once in-flight work ends: give the first signal time to land
        assert proc.poll() is None
        assert pid_alive(int(pidfile.read_text())), "the first Ctrl-C must not kill the in-flight step"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, out + err
        evts = events(state)
        slow = next(e for e in evts if e["kind"] == "step.result" and e["step"] == "slow")
        assert slow["outcome"] == "aborted"
        assert not pid_alive(int(pidfile.read_text()))
        assert rollback_order(evts) == {"gw-1": ["slow", "activate-release", "stage-release"]}
        for host in fleet.hosts:
            assert fleet.untouched(host), host
    finally:
        proc.kill()
        kill_pidfile(pidfile)


def test_plain_output_off_a_terminal_is_one_line_per_event_without_escape_codes(tmp_path: Path, fleet: Fleet) -> None:
    plan = write_exchange_plan(tmp_path, fleet, PlanSpec(waves=["100%"]))
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TERM")}
    env.update(TERM="xterm-256color", COLUMNS="200")
    result = rollout(*run_args(plan, tmp_path / "state"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\x1b" not in result.stdout
    assert "\x1b" not in result.stderr
    event_lines = [ln for ln in result.stdout.splitlines() if re.match(r"^\d\d:\d\d:\d\d\.\d{3}  \S", ln)]
    assert len(event_lines) == len(events(tmp_path / "state"))


def test_no_color_is_respected_on_a_terminal(tmp_path: Path) -> None:
    import pty
    import subprocess

    from tests.helpers import ROLLOUT, cli_env

    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: colours\nenvironments: {demo: {rehearsal: true, hosts: {h1: {}}}}\n"
        "steps: [{name: nope, run: 'false', rollback: 'true'}]\n"
    )
    env = cli_env(TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    colour = re.compile(r"\x1b\[[0-9;]*(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])m")

    def on_a_tty(extra: dict[str, str]) -> str:
        leader, follower = pty.openpty()
        with subprocess.Popen(
            [str(ROLLOUT), *run_args(plan, tmp_path / f"state-{len(extra)}")],
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=follower,
            env={**env, **extra},
        ) as proc:
            os.close(follower)
            chunks = []
            while True:
                try:
                    data = os.read(leader, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            proc.wait(timeout=30)
        os.close(leader)
        return b"".join(chunks).decode(errors="replace")

    assert colour.search(on_a_tty({})), "expected colour on a terminal without NO_COLOR"
    assert not colour.search(on_a_tty({"NO_COLOR": "1"}))


def test_the_journal_path_is_where_the_output_says(tmp_path: Path, fleet: Fleet) -> None:
    plan = write_exchange_plan(tmp_path, fleet, PlanSpec(waves=["100%"], guard=False, bake="0s"))
    result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 0
    assert str(journal_path(tmp_path / "state")) in result.stdout
