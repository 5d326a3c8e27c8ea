"""Templating: values reach the shell literally, precedence, built-ins and undefined names."""

from __future__ import annotations

import subprocess
from pathlib import Path
from textwrap import dedent

import pytest

from rollout.engine.prepare import prepare_schedule
from rollout.errors import PlanError, TemplateError
from rollout.planfile import LoadedPlan, load_plan
from rollout.template import TemplateProblem, render

PLAN = """\
name: templated
vars:
  who: plan
  layer: plan
  url_query: "a b&c"
environments:
  demo:
    vars: { layer: environment }
    hosts:
      gw-1: { address: 10.0.0.1, vars: { layer: host } }
      gw-2: { address: 10.0.0.2 }
prechecks:
  - http: { url: "http://{{ address }}:8080/health?q={{ url_query }}" }
steps:
  - name: show
    run: printf '%s' {{ layer }}
    rollback: none
"""


def _plan(tmp_path: Path, text: str = PLAN) -> LoadedPlan:
    path = tmp_path / "plan.yaml"
    path.write_text(dedent(text))
    return load_plan(path)


def _sh(command: str) -> str:
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=10, check=True)
    return done.stdout


def _hostile(marker: Path) -> str:
    return f"$(touch {marker})';\"`touch {marker}` && touch {marker}\nsecond line; touch {marker}"


# --- shell quoting -----------------------------------------------------------------


def test_shell_metacharacters_in_a_value_arrive_literally(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    value = _hostile(marker)

    command = render("printf '%s' {{ value }}", {"value": value}, shell=True)

    assert _sh(command) == value
    assert not marker.exists()


def test_a_hostile_var_override_runs_literally_in_a_rendered_step(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    value = _hostile(marker)

    schedule = prepare_schedule(_plan(tmp_path), "demo", overrides={"layer": value})

    assert _sh(schedule.hosts["gw-1"].steps[0].run) == value
    assert not marker.exists()


def test_raw_values_are_not_quoted() -> None:
    command = render("ls {{ flags | raw }} {{ path }}", {"flags": "-l -a", "path": "a b"}, shell=True)

    assert command == "ls -l -a 'a b'"


def test_url_fields_are_substituted_without_shell_quoting(tmp_path: Path) -> None:
    schedule = prepare_schedule(_plan(tmp_path), "demo")

    check = schedule.hosts["gw-1"].prechecks[0]
    assert check.http is not None
    assert check.http.url == "http://10.0.0.1:8080/health?q=a b&c"


def test_quote_filter_quotes_outside_shell_fields() -> None:
    assert render("{{ v | quote }}", {"v": "it's"}) == "'it'\"'\"'s'"


# --- scope -------------------------------------------------------------------------


def test_host_vars_beat_environment_vars_which_beat_plan_vars(tmp_path: Path) -> None:
    schedule = prepare_schedule(_plan(tmp_path), "demo")

    assert _sh(schedule.hosts["gw-1"].steps[0].run) == "host"
    assert _sh(schedule.hosts["gw-2"].steps[0].run) == "environment"


def test_plan_vars_apply_where_nothing_overrides_them(tmp_path: Path) -> None:
    text = PLAN.replace("    vars: { layer: environment }\n", "").replace(", vars: { layer: host }", "")

    schedule = prepare_schedule(_plan(tmp_path, text), "demo")

    assert _sh(schedule.hosts["gw-1"].steps[0].run) == "plan"


def test_a_var_override_beats_every_layer(tmp_path: Path) -> None:
    schedule = prepare_schedule(_plan(tmp_path), "demo", overrides={"layer": "command line"})

    assert {_sh(h.steps[0].run) for h in schedule.hosts.values()} == {"command line"}


def test_built_in_variables_describe_the_host_run_and_plan(tmp_path: Path) -> None:
    text = PLAN.replace(
        "printf '%s' {{ layer }}",
        "printf '%s|' {{ host }} {{ env }} {{ run_id }} {{ plan }} {{ address }} {{ plan_dir }}",
    )

    schedule = prepare_schedule(_plan(tmp_path, text), "demo", run_id="20260101T000000Z-ab12")

    out = _sh(schedule.hosts["gw-2"].steps[0].run)
    assert out.split("|")[:-1] == [
        "gw-2",
        "demo",
        "20260101T000000Z-ab12",
        "templated",
        "10.0.0.2",
        str(tmp_path.resolve()),
    ]


def test_a_variable_may_refer_to_other_variables_and_built_ins(tmp_path: Path) -> None:
    text = PLAN.replace("  who: plan\n", "  who: 'on {{ host }} as {{ layer }}'\n").replace(
        "{{ layer }}\n    rollback", "{{ who }}\n    rollback"
    )

    schedule = prepare_schedule(_plan(tmp_path, text), "demo")

    assert _sh(schedule.hosts["gw-1"].steps[0].run) == "on gw-1 as host"


def test_a_built_in_cannot_be_redefined(tmp_path: Path) -> None:
    loaded = _plan(tmp_path, PLAN.replace("  who: plan\n", "  host: mine\n"))

    with pytest.raises(PlanError, match="'host' is a built-in variable") as caught:
        prepare_schedule(loaded, "demo")

    assert caught.value.path == "vars.host"
    assert caught.value.line == 3


# --- failures ----------------------------------------------------------------------


def test_an_undefined_name_fails_naming_the_variable_and_where(tmp_path: Path) -> None:
    loaded = _plan(tmp_path, PLAN.replace("{{ layer }}", "{{ lyaer }}"))

    with pytest.raises(TemplateError) as caught:
        prepare_schedule(loaded, "demo")

    message = caught.value.render()
    assert "undefined variable 'lyaer'" in message
    assert "environment 'demo', host 'gw-1'" in message
    assert caught.value.path == "steps[0].run"
    assert caught.value.line == 16


def test_variables_that_refer_to_each_other_in_a_cycle_fail(tmp_path: Path) -> None:
    text = PLAN.replace("  who: plan\n", "  a: '{{ b }}'\n  b: 'x{{ a }}'\n").replace(
        "{{ layer }}\n    rollback", "{{ a }}\n    rollback"
    )

    with pytest.raises(TemplateError, match=r"cycle: a -> b -> a"):
        prepare_schedule(_plan(tmp_path, text), "demo")


def test_an_unclosed_template_fails() -> None:
    with pytest.raises(TemplateProblem, match="unclosed template"):
        render("echo {{ name", {"name": "x"})


def test_a_malformed_template_says_how_to_write_one() -> None:
    with pytest.raises(TemplateProblem, match=r"write \{\{ name \}\}"):
        render("echo {{ name | upper }}", {"name": "x"})
