"""A bake, and the end of a run, hold until every guard is freshly green, on real processes.

Each host is a local target; its "service" is a marker file that a step breaks, and the
guard is a real command probing it. These pin the promise "success implies every guard
green": a guard that is failing but has not tripped yet holds the next wave and the
verdict, until it trips (rollback) or recovers (the run goes on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import events, kinds, rollout, started_steps


def _plan(tmp_path: Path, *, waves: str, bake: str, guard: str, fail_after: int, run: str, verify: str = "") -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""
name: bake
vars: {{ dir: "{tmp_path}" }}
environments:
  lab:
    rehearsal: true
    hosts:
      h1: {{ groups: [canary] }}
      h2: {{}}
strategy: {{ waves: {waves}, bake: {bake}, concurrency: 2 }}
guards:
  - name: service
    command: {guard}
    every: 100ms
    fail_after: {fail_after}
    timeout: 2s
steps:
  - name: release
    run: {run}
{verify}    rollback: rm -f {{{{ dir }}}}/broken-{{{{ host }}}} {{{{ dir }}}}/{{{{ host }}}}.new
"""
    )
    return plan


BREAKS_CANARY = "'touch {{ dir }}/{{ host }}.new && if [ {{ host }} = h1 ]; then touch {{ dir }}/broken-{{ host }}; fi'"
HEALTHY = "'test ! -e {{ dir }}/broken-{{ host }}'"


def _run(tmp_path: Path, plan: Path) -> tuple[int, list[dict[str, Any]], str]:
    state = tmp_path / "state"
    result = rollout("run", plan, "--env", "lab", "--state-dir", state)
    return result.returncode, events(state), result.stdout + result.stderr


def test_a_guard_failing_at_the_end_of_the_canary_bake_holds_the_next_wave_until_it_trips(tmp_path: Path) -> None:
    # fail_after 10 x every 100 ms: at the end of a 300 ms bake the guard is FAILING, not tripped
    plan = _plan(tmp_path, waves="[canary, '100%']", bake="300ms", guard=HEALTHY, fail_after=10, run=BREAKS_CANARY)
    code, evts, output = _run(tmp_path, plan)
    assert code == 1, output
    assert "h2" not in started_steps(evts), "the second wave never started while the canary was failing"
    seq = kinds(evts)
    assert "bake.extended" in seq
    assert evts[seq.index("abort")]["data"]["cause"]["kind"] == "guard"
    assert evts[-1]["kind"] == "run.end"
    assert evts[-1]["outcome"] == "rolled_back"
    assert not (tmp_path / "h1.new").exists()
    assert not (tmp_path / "broken-h1").exists()


def test_a_host_going_bad_as_the_last_bake_ends_is_never_a_success(tmp_path: Path) -> None:
    plan = _plan(tmp_path, waves="['100%']", bake="300ms", guard=HEALTHY, fail_after=10, run=BREAKS_CANARY)
    code, evts, output = _run(tmp_path, plan)
    assert code == 1, output
    assert evts[-1]["outcome"] == "rolled_back"
    assert "SUCCEEDED" not in output
    for host in ("h1", "h2"):
        assert not (tmp_path / f"{host}.new").exists(), host


def test_a_guard_that_fails_then_recovers_extends_the_bake_and_the_run_succeeds_green(tmp_path: Path) -> None:
    # the canary's guard fails twice after the change, then passes (a counter file on the host)
    flapping = (
        "'n=$(cat {{ dir }}/count-{{ host }} 2>/dev/null || echo 0); "
        "if [ -e {{ dir }}/broken-{{ host }} ] && [ $n -lt 2 ]; then echo $((n+1)) > {{ dir }}/count-{{ host }}; exit 1; fi'"
    )
    plan = _plan(tmp_path, waves="['100%']", bake="0s", guard=flapping, fail_after=5, run=BREAKS_CANARY)
    code, evts, output = _run(tmp_path, plan)
    assert code == 0, output
    states = [(e["host"], e["outcome"]) for e in evts if e["kind"] == "guard.state"]
    assert states == [("h1", "failing"), ("h1", "green")], "the verdict waited for the failing guard to recover"
    assert kinds(evts).index("bake.extended") < kinds(evts).index("run.end")
    assert evts[-1]["outcome"] == "succeeded"
    assert evts[-1]["data"]["guards_green"] is True


def test_an_abort_cuts_verification_retries_short(tmp_path: Path) -> None:
    # h1's verification retries for 10 s; h2 fails once h1 is verifying. The abort must not
    # wait for the retries (nor for the 30 s grace): rollback starts at once.
    plan = _plan(
        tmp_path,
        waves="['100%']",
        bake="0s",
        guard="'true'",
        fail_after=3,
        run=(
            "'if [ {{ host }} = h2 ]; then for i in $(seq 400); do [ -e {{ dir }}/verifying ] && exit 1; "
            "sleep 0.05; done; exit 2; fi; touch {{ dir }}/{{ host }}.new'"
        ),
        verify=(
            "    verify:\n"
            "      - {name: slow, command: 'touch {{ dir }}/verifying; false', retries: 20, interval: 500ms}\n"
        ),
    )
    state = tmp_path / "state"
    result = rollout("run", plan, "--env", "lab", "--state-dir", state, "--grace", "30s")
    evts = events(state)
    assert result.returncode == 1, result.stdout + result.stderr
    abort = next(e for e in evts if e["kind"] == "abort")
    start = next(e for e in evts if e["kind"] == "rollback.start")
    assert abort["data"]["cause"]["host"] == "h2"
    (verified,) = [e for e in evts if e["kind"] == "verify.result" and e["host"] == "h1"]
    assert verified["data"].get("attempt", 1) < 20, "the retries stopped at the abort"
    assert start["mono"] - abort["mono"] < 5.0, "rollback began without waiting out 20 retries of 500 ms"
    assert not (tmp_path / "h1.new").exists()
