"""Fuzzing the plan loader and the template renderer with hypothesis.

Invariant: for any YAML and any template, `rollout validate` answers exit 0 (valid) or 2
(invalid, with a located error) within 2 s and 500 MB, and never with a traceback; the
renderer returns text or raises TemplateProblem, nothing else.

`make test` runs a few examples of each (ROLLOUT_FUZZ_EXAMPLES, default 15, the same
ones every time) so the suite stays fast; `make fuzz` runs many more, freshly drawn.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.cli.app import run_cli
from rollout.template import MAX_VALUE_CHARS, TemplateProblem, render

pytestmark = pytest.mark.fuzz

DEFAULT_EXAMPLES = 15
EXAMPLES = int(os.environ.get("ROLLOUT_FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES)))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # wall-clock deadlines flake on a loaded machine; _validate times CPU
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=EXAMPLES <= DEFAULT_EXAMPLES,  # the bounded run in `make test` is the same every time
)
MEMORY_LIMIT = 500 * 1024 * 1024
NAMES = ["a", "b", "c", "host", "env", "missing"]

# --- strategies ---------------------------------------------------------------------

TEMPLATE_PIECES = st.one_of(
    st.text(alphabet="{}|.:$'\" \nabx_-", max_size=6),
    st.sampled_from(
        [
            "{{ a }}",
            "{{b}}",
            "{{ c | raw }}",
            "{{ a | quote }}",
            "{{ host }}",
            "{{ missing }}",
            "{{ a.b }}",
            "{{",
            "}}",
            "{{ | }}",
            "{{ 1a }}",
            "{{{{ a }}}}",
        ]
    ),
)
TEMPLATES = st.lists(TEMPLATE_PIECES, max_size=8).map("".join)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    TEMPLATES,
)
ODD_DURATIONS = st.one_of(
    st.from_regex(r"\A\d{1,25}(\.\d{1,3})?(ms|s|m|h)\Z"),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from(["0s", "1h30m", ".nan", "-1s", "10 sec", ""]),
)


def mostly(good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` three times in four: a plan with one odd part gets past the model to rendering."""
    return st.one_of(good, good, good, odd)


DURATIONS = mostly(st.sampled_from(["10ms", "1s", "2m", "1h"]), ODD_DURATIONS)
VAR_VALUES = mostly(st.one_of(TEMPLATES, st.integers(0, 1000), st.booleans()), SCALARS)


def _fan_out(levels: int, width: int) -> dict[str, str]:
    """Variables that refer to each other `width` times a level: width**levels if expanded."""
    out = {"v0": "xxxxxxxxxx"}
    for i in range(1, levels + 1):
        out[f"v{i}"] = f"{{{{ v{i - 1} }}}}" * width
    return out


@st.composite
def checks(draw: st.DrawFn) -> dict[str, Any]:
    """A check of a random kind, with random (often wrong) values."""
    kind = draw(mostly(st.sampled_from(["command", "http", "tcp", "metadata"]), st.just("none")))
    check: dict[str, Any] = {}
    if kind == "command":
        check["command"] = draw(st.one_of(TEMPLATES, st.fixed_dictionaries({"run": TEMPLATES})))
    elif kind == "http":
        check["http"] = {"url": draw(TEMPLATES), "status": draw(mostly(st.just(200), st.lists(st.integers())))}
    elif kind == "tcp":
        check["tcp"] = {"port": draw(st.one_of(st.integers(), TEMPLATES))}
    elif kind == "metadata":
        check["metadata"] = {"source": draw(TEMPLATES), "unique": draw(st.lists(TEMPLATES, max_size=2))}
    for key in draw(st.lists(st.sampled_from(["timeout", "interval", "retries"]), max_size=2)):
        check[key] = draw(DURATIONS) if key != "retries" else draw(mostly(st.integers(0, 3), SCALARS))
    return check


@st.composite
def guards(draw: st.DrawFn) -> dict[str, Any]:
    """A check with a random period."""
    return {**draw(checks()), "every": draw(DURATIONS)}


@st.composite
def plans(draw: st.DrawFn) -> dict[str, Any]:
    """A plan-shaped mapping: mostly right, with random values where templates and durations go."""
    variables: dict[str, Any] = draw(st.dictionaries(st.sampled_from(NAMES), VAR_VALUES, max_size=4))
    if draw(st.booleans()):
        variables.update(_fan_out(draw(st.integers(1, 9)), draw(st.integers(1, 12))))
    host: dict[str, Any] = draw(
        st.fixed_dictionaries({}, optional={"address": TEMPLATES, "user": TEMPLATES, "vars": st.just({"b": "x"})})
    )
    env: dict[str, Any] = {"hosts": {"h1": host, "h2": None}}
    if draw(st.booleans()):
        env["connection"] = "ssh"
        env["ssh"] = draw(
            st.fixed_dictionaries(
                {}, optional={"known_hosts": TEMPLATES, "identity_file": TEMPLATES, "connect_timeout": DURATIONS}
            )
        )
    step: dict[str, Any] = {"name": "s1", "run": draw(TEMPLATES), "rollback": draw(mostly(TEMPLATES, st.none()))}
    for key in draw(st.lists(st.sampled_from(["timeout", "retry_delay", "rollback_timeout"]), max_size=2)):
        step[key] = draw(DURATIONS)
    step["verify"] = draw(st.lists(checks(), max_size=2))
    plan: dict[str, Any] = {
        "name": draw(st.text(max_size=10)) if draw(st.integers(0, 7)) == 0 else "fuzzed",
        "vars": variables,
        "environments": {"demo": env},
        "prechecks": draw(st.lists(checks(), max_size=2)),
        "guards": draw(st.lists(guards(), max_size=2)),
        "strategy": {"bake": draw(DURATIONS)} if draw(st.booleans()) else {},
        "steps": [step],
    }
    # now and then, one part of the plan replaced by anything at all
    if draw(st.integers(0, 3)) == 0:
        key = draw(st.sampled_from(sorted(plan)))
        plan[key] = draw(SCALARS)
    return plan


@st.composite
def templated_plans(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed plan where only templates and variables vary: it reaches the renderer."""
    variables: dict[str, Any] = draw(st.dictionaries(st.sampled_from(NAMES[:3]), TEMPLATES, max_size=3))
    if draw(st.booleans()):
        variables.update(_fan_out(draw(st.integers(1, 9)), draw(st.integers(1, 12))))
    shown = sorted(variables)
    uses = st.lists(st.sampled_from([*shown, "host", "env", "missing"]), max_size=4).map(
        lambda names: " ".join(f"{{{{ {n} }}}}" for n in names)
    )
    run = draw(st.one_of(TEMPLATES, uses))
    return {
        "name": "fuzzed",
        "vars": variables,
        "environments": {
            "demo": {
                "connection": draw(st.sampled_from(["local", "ssh"])),
                "ssh": {"known_hosts": draw(st.one_of(TEMPLATES, uses))},
                "hosts": {"h1": {"address": draw(st.one_of(st.just("127.0.0.1"), TEMPLATES))}, "h2": None},
            }
        },
        "prechecks": [{"http": {"url": draw(st.one_of(TEMPLATES, uses))}}],
        "steps": [{"name": "s1", "run": run, "rollback": draw(st.one_of(st.just("none"), uses))}],
    }


YAML_NOISE = st.text(alphabet="abc:-{}[],&*!|>'\"#%@`? \n\t0123456789.", max_size=300)

# --- the targets --------------------------------------------------------------------


def _validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    # The 2 s are CPU seconds, which other load on the machine does not inflate; the
    # wall clock only catches a validate that blocks (and so spends no CPU at all).
    started, cpu_started = time.monotonic(), time.process_time()
    code = run_cli(["validate", str(path)])
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_started
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert code in (0, 2), output
    assert "Traceback" not in output
    assert cpu < 2.0, f"validate took {cpu:.1f} s of CPU"
    assert elapsed < 30.0, f"validate took {elapsed:.1f} s"
    return code, output


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture
def memory_bound() -> Any:
    """Fails the test if the process's peak memory grew by more than MEMORY_LIMIT during it."""
    before = _peak_rss()
    yield
    assert _peak_rss() - before < MEMORY_LIMIT


@FUZZ
@given(plan=plans())
def test_validate_of_a_random_plan_is_0_or_2_quickly(
    plan: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], memory_bound: None
) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, allow_unicode=True))

    code, output = _validate(path, capsys)

    if code == 2:
        assert f"{path}" in output  # every error names the file


@FUZZ
@given(plan=templated_plans())
def test_validate_of_a_randomly_templated_plan_is_0_or_2_quickly(
    plan: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], memory_bound: None
) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, allow_unicode=True))

    code, output = _validate(path, capsys)

    if code == 2:
        assert f"{path}:" in output  # template errors are located


@FUZZ
@given(text=st.one_of(YAML_NOISE, st.text(max_size=200)), prefix=st.booleans())
def test_validate_of_random_yaml_text_is_0_or_2_quickly(
    text: str, prefix: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str], memory_bound: None
) -> None:
    path = tmp_path / "plan.yaml"
    head = "name: fuzzed\nenvironments: {demo: {hosts: {a: {}}}}\nsteps: [{name: s, run: 'true', rollback: none}]\n"
    path.write_text((head if prefix else "") + text, encoding="utf-8", errors="surrogatepass")

    _validate(path, capsys)


@FUZZ
@given(template=TEMPLATES, values=st.dictionaries(st.sampled_from(NAMES), SCALARS, max_size=4), shell=st.booleans())
def test_render_returns_text_or_a_template_problem(template: str, values: dict[str, Any], shell: bool) -> None:
    try:
        out = render(template, values, shell=shell)
    except TemplateProblem:
        return
    assert isinstance(out, str)
    assert len(out) <= MAX_VALUE_CHARS
