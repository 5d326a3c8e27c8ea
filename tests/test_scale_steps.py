"""Cost that grows with steps and hosts: per-step work stays flat, the host pool is sized by concurrency.

Invariants (no timing here; the times are in bench/bench_steps.py):
- the work a run does per step does not grow with the number of steps already applied;
- loading (validating) a plan does work linear in its steps, and the libyaml fast path
  gives the same data, marks and errors as the pure-Python parser;
- verify checks the stored plan copy by digest, without validating it, and still catches
  any edit; the timeline written in blocks is byte-identical to one write per line;
- a wave runs min(concurrency, hosts) host threads at once, whatever the fleet size, and
  a `concurrency` above the old fixed cap of 64 is honoured.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from rollout import api
from rollout.cli import history_cmds
from rollout.cli.app import app
from rollout.engine.apply import Engine
from rollout.engine.events import Bus, ListSink
from rollout.engine.outcomes import AppliedStep
from rollout.engine.prepare import prepare_schedule
from rollout.errors import PlanError
from rollout.event import Outcome
from rollout.model import Plan
from rollout.planfile import load_plan, marked_yaml
from tests.helpers import rollout
from tests.test_engine_unit import _engine

ROOT = Path(__file__).resolve().parent.parent


def _step_plan(n: int) -> str:
    return "".join(f"  - {{name: s{i}, run: do-{i}, rollback: undo-{i}}}\n" for i in range(n))


def _comparisons_for(tmp_path: Path, n: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many AppliedStep comparisons a one-host run of n steps makes."""
    calls = 0
    original = AppliedStep.__eq__

    def counting(self: AppliedStep, other: object) -> bool:
        nonlocal calls
        calls += 1
        return original(self, other)

    monkeypatch.setattr(AppliedStep, "__eq__", counting)
    work = tmp_path / str(n)
    work.mkdir()
    engine, fleet, _ = _engine(work, _step_plan(n), hosts=1)
    assert engine.run().outcome == Outcome.SUCCEEDED
    assert len(fleet.log) == n
    monkeypatch.setattr(AppliedStep, "__eq__", original)
    return calls


def test_per_step_work_does_not_grow_with_the_steps_already_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tracking a step on its host's rollback stack used to scan the stack: n^2/2 comparisons.
    small = _comparisons_for(tmp_path, 100, monkeypatch)
    large = _comparisons_for(tmp_path, 400, monkeypatch)
    assert large <= 4 * small + 4, f"4x the steps cost {large} comparisons against {small}: not linear"


def _host_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("host"))


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.parametrize(("hosts", "concurrency"), [(12, 5), (80, 70)])
def test_a_wave_runs_exactly_min_concurrency_hosts_threads(tmp_path: Path, hosts: int, concurrency: int) -> None:
    # Every step blocks on a shared lock the test holds (no CPU while waiting), so the hosts
    # in flight are exactly the host threads the pool has; 70 > the old fixed cap of 64.
    gate = tmp_path / "gate"
    gate.touch()
    started = tmp_path / "started"
    started.mkdir()
    host_map = ", ".join(f"h{i}: {{}}" for i in range(hosts))
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: pool\n"
        f"environments: {{lab: {{hosts: {{{host_map}}}}}}}\n"
        f"strategy: {{waves: ['100%'], concurrency: {concurrency}}}\n"
        "steps:\n"
        f"  - name: wait\n    run: mktemp {started}/XXXXXX >/dev/null && flock -s {gate} true\n"
        "    rollback: 'true'\n    timeout: 60s\n"
    )
    engine = Engine(prepare_schedule(load_plan(plan), "lab", run_id="pool"), Bus(ListSink()))
    result: list[str] = []
    baseline = _tasks()
    with gate.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        runner = threading.Thread(target=lambda: result.append(engine.run().outcome), daemon=True)
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while len(os.listdir(started)) < concurrency and runner.is_alive():
                assert time.monotonic() < deadline, f"only {len(os.listdir(started))} of {concurrency} hosts started"
                time.sleep(0.02)
            threads, tasks = _host_threads(), _tasks()
            in_flight = len(os.listdir(started))
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
    runner.join(60)
    assert result == [Outcome.SUCCEEDED]
    assert in_flight == concurrency, "every host thread holds one host; the others wait their turn"
    assert threads == concurrency
    # The process grew by the host threads and the run's own thread, not by one per host.
    assert tasks - baseline <= concurrency + 2, f"{tasks - baseline} new threads for {hosts} hosts"
    assert len(os.listdir(started)) == hosts


# --- validate: linear in the steps --------------------------------------------------------


class _CountedName(str):
    """A step name that counts how often it is compared for equality."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        _CountedName.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def _name_comparisons(n: int) -> int:
    check = Plan.__pydantic_decorators__.field_validators["_some_steps"].func
    steps = [SimpleNamespace(name=_CountedName(f"step-{i}")) for i in range(n)]
    _CountedName.compared = 0
    check(steps)
    return _CountedName.compared


def test_checking_step_names_unique_is_linear_in_the_steps() -> None:
    # Counting each name in the whole list made the check n^2 comparisons.
    small, large = _name_comparisons(500), _name_comparisons(2000)
    assert large <= 4 * small + 8, f"4x the steps cost {large} name comparisons against {small}"


def test_a_repeated_step_name_is_still_refused_naming_it(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: dupes\nenvironments: {lab: {hosts: {h1: {}}}}\nsteps:\n"
        + _step_plan(3)
        + "  - {name: s1, run: 'true', rollback: none}\n"
    )
    with pytest.raises(PlanError, match="step names must be unique: s1 used more than once"):
        load_plan(plan)


def _python_calls(fn: Callable[[], object]) -> int:
    calls = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def test_loading_a_plan_does_python_work_linear_in_its_steps(tmp_path: Path) -> None:
    def plan_of(n: int) -> Path:
        path = tmp_path / f"plan-{n}.yaml"
        path.write_text("name: big\nenvironments: {lab: {hosts: {h1: {}}}}\nsteps:\n" + _step_plan(n))
        return path

    small, large = plan_of(250), plan_of(1000)
    load_plan(small)  # imports and caches out of the way
    calls_small, calls_large = _python_calls(lambda: load_plan(small)), _python_calls(lambda: load_plan(large))
    assert calls_large <= 4.4 * calls_small, f"4x the steps made {calls_large} calls against {calls_small}"


PLAN_FILES = sorted(p for d in (ROOT / "plans", ROOT / "tests" / "plans") for p in d.rglob("*.yaml"))
ODD_YAML = [
    "a: &x {b: [1, 2.5, null, true, 2026-11-25]}\nc: *x\nd: {<<: *x, e: 'q'}\n",
    's: |\n  multi\n  line\nt: >-\n  folded\n  text\nu: "esc\\t\\u00e9"\nv: ~\nw: 0o17\nx: 1_000\n',
    "- - - deep\n    - [a, {b: c}]\n- 'x: y'\n- ünïcode: 🎉\n",
]


@pytest.mark.parametrize("text", [*(p.read_text() for p in PLAN_FILES), *ODD_YAML])
def test_libyaml_and_the_pure_python_parser_give_the_same_data_and_marks(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = marked_yaml.parse_marked(text, "f.yaml")
    monkeypatch.setattr(marked_yaml, "_FAST_LOADER", None)
    slow = marked_yaml.parse_marked(text, "f.yaml")
    assert fast is not None
    assert slow is not None
    assert (fast.data, fast.marks, fast.start) == (slow.data, slow.marks, slow.start)


@pytest.mark.parametrize(
    "text",
    [
        "a: [" * 150 + "]" * 150 + "\n",  # deeper than MAX_DEPTH, shallower than libyaml's own cap
        "a: [" * 2000 + "]" * 2000 + "\n",  # deeper than libyaml's cap
        "a:\n\t- b\n",
        "a: 1\na: 2\n",
        "a: !!python/object:os.system x\n",
        "a: [1, 2\n",
    ],
)
def test_refused_yaml_reads_exactly_as_the_pure_python_parser_says(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PlanError) as fast:
        marked_yaml.parse_marked(text, "f.yaml")
    monkeypatch.setattr(marked_yaml, "_FAST_LOADER", None)
    with pytest.raises(PlanError) as slow:
        marked_yaml.parse_marked(text, "f.yaml")
    assert fast.value.render() == slow.value.render()


# --- verify and timeline on a recorded run ------------------------------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state directory of one real 12-step run on a local host."""
    root = tmp_path_factory.mktemp("recorded")
    plan = root / "plan.yaml"
    steps = "".join(f"  - {{name: s{i}, run: 'echo :smile: [b]{i}[/b]', rollback: 'true'}}\n" for i in range(12))
    plan.write_text(f"name: recorded\nenvironments: {{lab: {{rehearsal: true, hosts: {{h1: {{}}}}}}}}\nsteps:\n{steps}")
    result = rollout("run", plan, "--env", "lab", "--state-dir", root / "state")
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "state"


def _state(recorded: Path, tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "state"
    shutil.copytree(recorded, state)
    copy = next((state / "runs").iterdir()) / "plan" / "plan.yaml"
    assert copy.exists()
    return state, copy


def test_verify_checks_the_plan_copy_by_digest_without_validating_it(
    recorded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, _ = _state(recorded, tmp_path)

    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("verify validated the plan copy again")

    monkeypatch.setattr(Plan, "model_validate", refuse)
    verification = api.verify("last", state_dir=state)
    assert verification.ok
    assert verification.plan_copy_matches is True


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("run: 'echo :smile: [b]3[/b]'", "run: 'echo :smile: [b]33[/b]'"),  # still a valid plan
        ("steps:\n", "stepz:\n"),  # no longer a plan at all
        ("name: recorded", "name: [recorded"),  # no longer YAML
    ],
)
def test_verify_by_digest_still_catches_an_edited_plan_copy(recorded: Path, tmp_path: Path, old: str, new: str) -> None:
    state, copy = _state(recorded, tmp_path)
    text = copy.read_text()
    assert old in text
    copy.write_text(text.replace(old, new, 1))
    result = rollout("verify", "last", "--state-dir", state)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "DAMAGED: the stored plan no longer matches its digest" in result.stdout
    assert api.verify("last", state_dir=state).plan_copy_matches is False


def _timeline(state: Path, *extra: str) -> str:
    result = CliRunner().invoke(app, ["timeline", "last", "--state-dir", str(state), *extra])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("extra", [(), ("--json",)])
def test_the_timeline_in_blocks_is_byte_identical_to_one_write_per_line(
    recorded: Path, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...]
) -> None:
    monkeypatch.setattr(history_cmds, "TIMELINE_BLOCK", 1)
    per_line = _timeline(recorded, *extra)
    lines = per_line.splitlines()
    assert len(lines) > 30
    assert any("[b]" in line for line in lines)  # markup-like text, printed as it is
    for block in (4, 7, 10_000):
        monkeypatch.setattr(history_cmds, "TIMELINE_BLOCK", block)
        assert _timeline(recorded, *extra) == per_line


def test_the_phases_of_a_run_share_its_host_threads_and_none_outlive_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pre-check and the wave run over the same hosts: the wave takes the threads the
    # pre-check started (starting threads while the first hosts work was a slow ramp).
    started: list[str] = []
    original = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    host_map = ", ".join(f"h{i}: {{}}" for i in range(12))
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: pool\n"
        f"environments: {{lab: {{hosts: {{{host_map}}}}}}}\n"
        "strategy: {waves: ['50%', '100%'], concurrency: 5}\n"
        "prechecks: [{name: up, command: 'true'}]\n"
        "steps:\n  - {name: one, run: 'true', rollback: 'true'}\n  - {name: two, run: 'true', rollback: 'true'}\n"
    )
    engine = Engine(prepare_schedule(load_plan(plan), "lab", run_id="pool"), Bus(ListSink()))
    assert engine.run().outcome == Outcome.SUCCEEDED
    assert len([name for name in started if name.startswith("host")]) == 5
    assert _host_threads() == 0
