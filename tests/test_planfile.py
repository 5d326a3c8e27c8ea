"""Loading plans: includes, the plan digest, and no input that escapes as a crash."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.errors import PlanError
from rollout.planfile import LoadedPlan, load_plan

REPO = Path(__file__).resolve().parents[1]
GOOD_PLANS = REPO / "tests" / "plans" / "good"

PLAN = """\
# the smallest useful plan
name: digest-plan
vars:
  release: v2
environments:
  demo:
    hosts:
      a: {}
steps:
  - name: install
    run: install {{ release }}
    rollback: uninstall {{ release }}
"""


def _write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(dedent(text))
    return directory / "plan.yaml"


# --- includes ----------------------------------------------------------------------


def test_an_include_merges_its_vars_prechecks_and_steps_before_the_plans_own() -> None:
    loaded = load_plan(GOOD_PLANS / "with-include" / "plan.yaml")

    plan = loaded.plan
    assert [s.name for s in plan.steps] == ["stage", "activate"]
    assert [c.label for c in plan.prechecks] == ["disk has room", "service answers"]
    assert plan.vars == {"service": "gateway", "release": "v2"}
    assert set(loaded.files) == {"plan.yaml", "common/steps.yaml"}


def test_an_error_inside_an_include_names_the_include_and_its_line(tmp_path: Path) -> None:
    (tmp_path / "common").mkdir()
    plan = _write(
        tmp_path,
        {
            "plan.yaml": PLAN.replace("vars:", "includes: [common/steps.yaml]\nvars:"),
            "common/steps.yaml": """\
                steps:
                  - name: stage
                    run: cp a b
                    rollback: rm b
                    timeout: soon
                """,
        },
    )

    with pytest.raises(PlanError) as caught:
        load_plan(plan)

    assert caught.value.file == str(tmp_path / "common" / "steps.yaml")
    assert caught.value.line == 5
    assert caught.value.path == "steps[0].timeout"
    assert "'soon' is not a duration" in caught.value.render()


def test_an_include_may_not_set_the_plans_own_keys(tmp_path: Path) -> None:
    plan = _write(
        tmp_path,
        {
            "plan.yaml": PLAN.replace("vars:", "includes: [other.yaml]\nvars:"),
            "other.yaml": "name: hijacked\n",
        },
    )

    with pytest.raises(PlanError) as caught:
        load_plan(plan)

    assert caught.value.location == f"{tmp_path / 'other.yaml'}:1:1"
    assert "'name' belongs in the main plan" in caught.value.message


def test_a_variable_defined_in_both_the_plan_and_an_include_is_refused(tmp_path: Path) -> None:
    plan = _write(
        tmp_path,
        {
            "plan.yaml": PLAN.replace("vars:", "includes: [vars.yaml]\nvars:"),
            "vars.yaml": "vars:\n  release: v1\n",
        },
    )

    with pytest.raises(PlanError, match=r"'vars\.release' is defined twice"):
        load_plan(plan)


# --- the digest --------------------------------------------------------------------


def test_the_digest_is_the_same_on_every_load(tmp_path: Path) -> None:
    plan = _write(tmp_path, {"plan.yaml": PLAN})

    assert load_plan(plan).digest == load_plan(plan).digest


def test_the_digest_ignores_comments_and_layout(tmp_path: Path) -> None:
    plan = _write(tmp_path, {"plan.yaml": PLAN})
    before = load_plan(plan).digest
    reformatted = (
        PLAN.replace("# the smallest useful plan\n", "")
        .replace("vars:\n  release: v2\n", "vars: {release: v2}  # pinned\n")
        .replace("hosts:\n      a: {}", "hosts: {a: {}}")
    )
    plan.write_text(reformatted)

    assert load_plan(plan).digest == before


def test_changing_a_value_changes_the_digest(tmp_path: Path) -> None:
    plan = _write(tmp_path, {"plan.yaml": PLAN})
    before = load_plan(plan).digest
    plan.write_text(PLAN.replace("release: v2", "release: v3"))

    assert load_plan(plan).digest != before


def test_changing_an_included_file_changes_the_digest(tmp_path: Path) -> None:
    plan = _write(
        tmp_path,
        {
            "plan.yaml": PLAN.replace("vars:", "includes: [checks.yaml]\nvars:"),
            "checks.yaml": "prechecks:\n  - command: test -d /srv\n",
        },
    )
    before = load_plan(plan).digest
    (tmp_path / "checks.yaml").write_text("prechecks:\n  - command: test -d /srv/app\n")

    assert load_plan(plan).digest != before


def test_the_digest_is_a_sha256_hex_string(tmp_path: Path) -> None:
    digest = load_plan(_write(tmp_path, {"plan.yaml": PLAN})).digest

    assert len(digest) == 64
    assert int(digest, 16) >= 0


# --- the sample plans --------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "plans").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sample_plan_loads(path: Path) -> None:
    loaded = load_plan(path)

    assert loaded.plan.steps
    assert loaded.plan.environments


# --- nothing escapes as a crash ----------------------------------------------------


def test_deep_nesting_is_refused_with_a_location(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("[" * 5000)

    with pytest.raises(PlanError) as caught:
        load_plan(plan)

    assert "nesting deeper than" in caught.value.message
    assert caught.value.line == 1


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory) / "plan.yaml"


def _load_or_plan_error(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        result = load_plan(path)
    except PlanError:
        return
    assert isinstance(result, LoadedPlan)


PLAN_WORDS = st.sampled_from(
    [
        "name",
        "environments",
        "steps",
        "hosts",
        "run",
        "rollback",
        "vars",
        "strategy",
        "waves",
        "guards",
        "prechecks",
        "command",
        "http",
        "url",
        "timeout",
        "fail_after",
        "includes",
        "demo",
        "a",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["10s", "25%", "{{ host }}", "{{ nope }}", "none", "0%", "1h30m"])
)
YAMLISH: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(PLAN_WORDS | st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=400))
def test_any_text_loads_or_is_a_plan_error(scratch: Path, text: str) -> None:
    _load_or_plan_error(scratch, text)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=YAMLISH)
def test_any_yaml_structure_loads_or_is_a_plan_error(scratch: Path, data: Any) -> None:
    _load_or_plan_error(scratch, yaml.safe_dump(data))


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.dictionaries(PLAN_WORDS, SCALARS | YAMLISH, max_size=4), max_size=3),
    strategy=st.dictionaries(st.sampled_from(["waves", "bake", "failure_budget"]), YAMLISH),
)
def test_plan_shaped_structures_load_or_are_a_plan_error(
    scratch: Path, steps: list[dict[str, Any]], strategy: dict[str, Any]
) -> None:
    data = {
        "name": "fuzz",
        "environments": {"demo": {"hosts": {"a": {}}}},
        "steps": steps,
        "strategy": strategy,
    }
    _load_or_plan_error(scratch, yaml.safe_dump(data))


def test_digest_does_not_depend_on_the_main_file_name(tmp_path: Path) -> None:
    original = tmp_path / "release.yaml"
    original.write_text(
        "name: p\nenvironments:\n  e:\n    hosts: { h: {} }\nsteps:\n  - { name: s, run: 'true', rollback: none }\n"
    )
    copy = tmp_path / "release-copy-from-the-run-directory.yaml"
    copy.write_bytes(original.read_bytes())
    assert load_plan(original).digest == load_plan(copy).digest
