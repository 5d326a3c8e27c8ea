"""Bad plans: every one is refused with exit 2 and an error that says where and what.

Each case is a small plan written into a fresh directory and checked through the real
command (`rollout validate`, or `rollout plan` where the problem is in the arguments).
The error must name file:line:column and the key path wherever the plan has one.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import dedent

import pytest

from rollout.cli.app import run_cli
from rollout.errors import PlanError
from rollout.planfile import MAX_PLAN_BYTES, load_plan

# A valid plan; most cases below are this with one thing wrong.
GOOD = """\
name: demo-plan
environments:
  demo:
    hosts:
      a: {}
steps:
  - name: first
    run: echo hi
    rollback: echo undo
"""


def _yaml(text: str) -> str:
    return dedent(text).lstrip("\n")


@dataclass(frozen=True)
class BadPlan:
    """A plan directory to write, what to run on it, and what the error must say."""

    files: dict[str, str | bytes]
    expected: tuple[str, ...]
    location: str | None = None  # "plan.yaml:LINE:COL", relative to the plan directory
    path: str | None = None  # the key path the error names
    args: tuple[str, ...] = ("validate",)
    setup: Callable[[Path], None] | None = field(default=None, repr=False)


def _symlink_out(directory: Path) -> None:
    outside = directory.parent / "outside"
    outside.mkdir()
    (outside / "steps.yaml").write_text("steps: []\n")
    (directory / "shared").symlink_to(outside, target_is_directory=True)


INCLUDE_PLAN = """\
name: demo-plan
includes: [{target}]
environments:
  demo:
    hosts:
      a: {{}}
steps:
  - name: first
    run: echo hi
    rollback: echo undo
"""

BILLION_LAUGHS = _yaml(
    """
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    name: bomb
    """
)

CASES: dict[str, BadPlan] = {
    "tab indentation": BadPlan(
        files={"plan.yaml": "name: demo-plan\nenvironments:\n\tdemo: {}\n"},
        expected=("a tab character cannot indent YAML",),
        location="plan.yaml:3:1",
    ),
    "unclosed bracket": BadPlan(
        files={"plan.yaml": "name: demo-plan\nsteps: [first, second\nenvironments: {}\n"},
        expected=("invalid YAML", "expected ',' or ']'", "flow sequence", "at line 2"),
        location="plan.yaml:3:13",
    ),
    "duplicate key": BadPlan(
        files={"plan.yaml": GOOD + "name: other\n"},
        expected=("duplicate key 'name' (first defined at line 1)",),
        location="plan.yaml:10:1",
        path="name",
    ),
    "unknown key suggests the closest name": BadPlan(
        files={"plan.yaml": GOOD + "    timout: 10s\n"},
        expected=("unknown key 'timout' (did you mean 'timeout'?)",),
        location="plan.yaml:10:5",
        path="steps[0].timout",
    ),
    "wrong type": BadPlan(
        files={"plan.yaml": GOOD + "    retries: many\n"},
        expected=("expected a valid integer", "'many'"),
        location="plan.yaml:10:5",
        path="steps[0].retries",
    ),
    "variable undefined in one environment only": BadPlan(
        files={
            "plan.yaml": _yaml(
                """
                name: demo-plan
                environments:
                  demo:
                    vars: { root: /tmp/demo }
                    hosts:
                      a: {}
                  production:
                    hosts:
                      b: {}
                steps:
                  - name: first
                    run: ls {{ root }}
                    rollback: none
                """
            )
        },
        expected=("undefined variable 'root'", "environment 'production'", "host 'b'"),
        location="plan.yaml:12:5",
        path="steps[0].run",
    ),
    "bad duration": BadPlan(
        files={"plan.yaml": GOOD + "    timeout: 10 sec\n"},
        expected=("'10 sec' is not a duration", "500ms, 10s, 5m"),
        location="plan.yaml:10:5",
        path="steps[0].timeout",
    ),
    "absurdly long duration": BadPlan(
        files={"plan.yaml": GOOD + "    timeout: 99999999999999999999999h\n"},
        expected=("'99999999999999999999999h' is too long: at most 168h",),
        location="plan.yaml:10:5",
        path="steps[0].timeout",
    ),
    "timeout that is not a number": BadPlan(
        files={"plan.yaml": GOOD + "prechecks:\n  - command: 'true'\n    timeout: .nan\n"},
        expected=("a duration must be a finite number of seconds, got nan",),
        location="plan.yaml:12:5",
        path="prechecks[0].timeout",
    ),
    "guard period of infinity": BadPlan(
        files={"plan.yaml": GOOD + "guards:\n  - command: 'true'\n    every: .inf\n"},
        expected=("a duration must be a finite number of seconds, got inf",),
        location="plan.yaml:12:5",
        path="guards[0].every",
    ),
    "negative bake": BadPlan(
        files={"plan.yaml": GOOD + "strategy:\n  bake: -5\n"},
        expected=("a duration cannot be negative",),
        location="plan.yaml:11:3",
        path="strategy.bake",
    ),
    "zero step timeout": BadPlan(
        files={"plan.yaml": GOOD + "    timeout: 0s\n"},
        expected=("a duration of zero means nothing here: use at least 1ms",),
        location="plan.yaml:10:5",
        path="steps[0].timeout",
    ),
    "check timeout over an hour": BadPlan(
        files={"plan.yaml": GOOD + "prechecks:\n  - command: 'true'\n    timeout: 2h\n"},
        expected=("'2h' is too long: at most 1h",),
        location="plan.yaml:12:5",
        path="prechecks[0].timeout",
    ),
    "duration in non-ASCII digits": BadPlan(
        files={"plan.yaml": GOOD + "    timeout: \u0661\u0660s\n"},
        expected=("is not a duration",),
        location="plan.yaml:10:5",
        path="steps[0].timeout",
    ),
    "wave of 0%": BadPlan(
        files={"plan.yaml": GOOD + "strategy:\n  waves: [0%, 100%]\n"},
        expected=("percentage '0%' is out of range",),
        location="plan.yaml:11:11",
        path="strategy.waves[0]",
    ),
    "wave of 150%": BadPlan(
        files={"plan.yaml": GOOD + "strategy:\n  waves: [1, 150%]\n"},
        expected=("percentage '150%' is out of range", "at most 100%"),
        location="plan.yaml:11:14",
        path="strategy.waves[1]",
    ),
    "include leaving the directory": BadPlan(
        files={"plan.yaml": INCLUDE_PLAN.format(target="../x.yaml")},
        expected=("include '../x.yaml' leaves the plan's directory",),
        location="plan.yaml:2:12",
        path="includes[0]",
    ),
    "absolute include": BadPlan(
        files={"plan.yaml": INCLUDE_PLAN.format(target="/etc/hostname")},
        expected=("include '/etc/hostname' is absolute",),
        location="plan.yaml:2:12",
        path="includes[0]",
    ),
    "include through a symlink out of the directory": BadPlan(
        files={"plan.yaml": INCLUDE_PLAN.format(target="shared/steps.yaml")},
        expected=("resolves outside the plan's directory (through a symlink)",),
        location="plan.yaml:2:12",
        path="includes[0]",
        setup=_symlink_out,
    ),
    "include cycle": BadPlan(
        files={
            "plan.yaml": INCLUDE_PLAN.format(target="a.yaml"),
            "a.yaml": "includes: [b.yaml]\n",
            "b.yaml": "steps: []\nincludes: [a.yaml]\n",
        },
        expected=("include cycle: plan.yaml -> a.yaml -> b.yaml -> a.yaml",),
        location="b.yaml:2:12",
        path="includes[0]",
    ),
    "alias bomb": BadPlan(
        files={"plan.yaml": BILLION_LAUGHS},
        expected=("expands to more than", "alias bomb"),
        location="plan.yaml:6:4",
        path="f",
    ),
    "python object tag": BadPlan(
        files={"plan.yaml": GOOD + "description: !!python/object:os.system [echo pwned]\n"},
        expected=("tag 'tag:yaml.org,2002:python/object:os.system' is not allowed",),
        location="plan.yaml:10:14",
        path="description",
    ),
    "empty file": BadPlan(
        files={"plan.yaml": "# nothing here yet\n"},
        expected=("the file is empty",),
        location="plan.yaml:1:1",
    ),
    "no steps": BadPlan(
        files={"plan.yaml": GOOD.split("steps:", maxsplit=1)[0] + "steps: []\n"},
        expected=("a plan needs at least one step",),
        location="plan.yaml:6:1",
        path="steps",
    ),
    "step with no rollback": BadPlan(
        files={"plan.yaml": GOOD.replace("    rollback: echo undo\n", "")},
        expected=("a step needs 'rollback'", "'rollback: none'"),
        location="plan.yaml:7:5",
        path="steps[0]",
    ),
    "unknown environment on plan": BadPlan(
        files={"plan.yaml": GOOD},
        expected=("no environment 'prod' (the plan defines: demo)",),
        args=("plan", "--env", "prod"),
    ),
    "guard that can never trip": BadPlan(
        files={
            "plan.yaml": GOOD + "guards:\n  - command: 'true'\n    fail_after: 0\n"  # line 10..12
        },
        expected=("fail_after must be at least 1",),
        location="plan.yaml:11:5",
        path="guards[0]",
    ),
    "check of two kinds": BadPlan(
        files={"plan.yaml": GOOD + "prechecks:\n  - command: 'true'\n    http: { url: 'http://x/' }\n"},
        expected=("a check needs exactly one of command, http, tcp, metadata (found command, http)",),
        location="plan.yaml:11:5",
        path="prechecks[0]",
    ),
    "duplicate step names": BadPlan(
        files={"plan.yaml": GOOD + "  - name: first\n    run: echo again\n    rollback: none\n"},
        expected=("step names must be unique: first used more than once",),
        location="plan.yaml:6:1",
        path="steps",
    ),
    "wave group with no hosts": BadPlan(
        files={"plan.yaml": GOOD + "strategy:\n  waves: [canary, 100%]\n"},
        expected=("wave group 'canary' has no hosts in environment 'demo'",),
        location="plan.yaml:11:11",
        path="strategy.waves[0]",
    ),
    "non-UTF-8 file": BadPlan(
        files={"plan.yaml": GOOD.encode() + b"description: caf\xe9\n"},
        expected=("not valid UTF-8",),
        location="plan.yaml:10",
    ),
    "plan over the size cap": BadPlan(
        files={"plan.yaml": GOOD + "#" * MAX_PLAN_BYTES + "\n"},
        expected=(f"plans are capped at {MAX_PLAN_BYTES} bytes",),
        location="plan.yaml",
    ),
    "list where a mapping is expected": BadPlan(
        files={"plan.yaml": GOOD.replace("environments:\n  demo:", "environments:\n  - demo:")},
        expected=("expected a valid dictionary, got a list",),
        location="plan.yaml:2:1",
        path="environments",
    ),
    "missing name": BadPlan(
        files={"plan.yaml": GOOD.replace("name: demo-plan\n", "")},
        expected=("missing required key 'name'",),
        location="plan.yaml:1:1",
    ),
}


def _write(directory: Path, case: BadPlan) -> Path:
    directory.mkdir()
    for name, content in case.files.items():
        target = directory / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    if case.setup is not None:
        case.setup(directory)
    return directory / "plan.yaml"


def test_the_table_covers_at_least_twenty_bad_plans() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_plan_is_refused_with_a_located_error(
    case: BadPlan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = _write(tmp_path / "plan", case)

    code = run_cli([case.args[0], str(plan), *case.args[1:]])

    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert code == 2, output
    for text in case.expected:
        assert text in output
    if case.location is not None:
        assert f"{tmp_path / 'plan' / case.location}" in output
    if case.path is not None:
        assert f"error at {case.path}:" in output


def test_alias_bomb_is_refused_within_a_second_in_bounded_memory(tmp_path: Path) -> None:
    plan = tmp_path / "bomb.yaml"
    plan.write_text(BILLION_LAUGHS)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(PlanError, match="alias bomb"):
            load_plan(plan)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert elapsed < 1.0
    assert peak < 64 * 1024 * 1024


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: &a [*a]\n")

    with pytest.raises(PlanError) as caught:
        load_plan(plan)

    assert f"{plan}:1:" in caught.value.render()


def test_one_bad_plan_does_not_hide_the_good_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "    timout: 10s\n")

    code = run_cli(["validate", str(good), str(bad)])

    out = capsys.readouterr().out
    assert code == 2
    assert f"ok     {good}" in out
    assert f"error  {bad}" in out
    assert "1 valid, 1 invalid" in out


def test_several_problems_are_all_reported_with_their_own_locations(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(GOOD + "    timout: 10s\n    retries: many\n")

    with pytest.raises(PlanError) as caught:
        load_plan(plan)

    text = caught.value.render()
    assert f"{plan}:10:5: error at steps[0].timout" in text
    assert f"{plan}:11:5: error at steps[0].retries" in text


def test_a_missing_file_is_an_invalid_plan_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"

    code = run_cli(["validate", str(missing)])

    assert code == 2
    assert f"{missing}: error: no such file" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_an_unreadable_file_is_reported_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(GOOD)
    plan.chmod(0)

    code = run_cli(["validate", str(plan)])

    assert code == 2
    assert f"{plan}: error: cannot read" in capsys.readouterr().out
