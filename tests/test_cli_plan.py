"""`rollout validate`, `rollout plan`, `rollout schema`, `--version` and `--help`, as users run them."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

import rollout
from rollout.cli import commands  # noqa: F401  (registers the commands)
from rollout.cli.app import app
from tests.helpers import Cli

REPO = Path(__file__).resolve().parents[1]
PLANS = sorted((REPO / "plans").glob("*.yaml"))
GATEWAY = REPO / "plans" / "order-gateway-metadata.yaml"
ROLLOUT = Path(sys.executable).with_name("rollout")

BAD = """\
name: bad-plan
environments:
  demo:
    hosts:
      a: {}
steps:
  - name: first
    run: echo hi
    rollback: echo undo
    timout: 10s
"""

TWO_WAVES = """\
name: two-waves
vars:
  token: { value: s3cr3t-value }
environments:
  demo:
    hosts:
      a: { groups: [canary] }
      b: {}
      c: {}
strategy:
  waves: [canary, 100%]
steps:
  - name: install
    run: install --host {{ host }} --token {{ token }}
    rollback: uninstall --host {{ host }}
  - name: migrate
    run: migrate --to v2
    rollback: none
"""


def _bad_plan(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


# --- validate ----------------------------------------------------------------------


def test_validate_says_ok_with_the_digest_for_every_sample_plan(cli: Cli) -> None:
    result = cli("validate", *map(str, PLANS))

    assert result.code == 0
    assert result.out.count("ok     ") == len(PLANS)
    assert f"{len(PLANS)} valid, 0 invalid" in result.out
    assert "plan 'order-gateway-metadata', 2 steps, environments demo, production" in result.out


def test_validate_json_reports_each_plan_and_its_errors(cli: Cli, tmp_path: Path) -> None:
    bad = _bad_plan(tmp_path)

    result = cli("validate", str(GATEWAY), str(bad), "--json")

    assert result.code == 2
    report = result.json()
    assert report["valid"] is False
    good, broken = report["plans"]
    assert good["valid"] is True
    assert good["name"] == "order-gateway-metadata"
    assert good["environments"] == ["demo", "production"]
    assert len(good["digest"]) == 64
    assert broken["valid"] is False
    assert broken["errors"] == [
        {
            "file": str(bad),
            "line": 10,
            "column": 5,
            "path": "steps[0].timout",
            "message": "unknown key 'timout' (did you mean 'timeout'?)",
        }
    ]


def test_validate_writes_junit_that_ci_can_read(cli: Cli, tmp_path: Path) -> None:
    bad = _bad_plan(tmp_path)
    report = tmp_path / "validate.xml"

    result = cli("validate", str(GATEWAY), str(bad), "--junit", str(report))

    assert result.code == 2
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert int(suite.get("tests", "0")) == len(cases) == 3  # two environments + one bad load
    assert suite.get("failures") == "1"
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("classname") for c in failed] == [str(bad)]
    failure = failed[0].find("failure")
    assert failure is not None
    assert f"{bad}:10:5" in failure.get("message", "")
    passed = {c.get("name") for c in cases if c.get("classname") == str(GATEWAY)}
    assert passed == {"environment demo", "environment production"}


def test_validate_var_override_can_fill_an_undefined_variable(cli: Cli, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(TWO_WAVES.replace("migrate --to v2", "migrate --to {{ target }}"))

    assert cli("validate", str(plan)).code == 2
    assert cli("validate", str(plan), "--var", "target=v3").code == 0


def test_validate_rejects_a_var_without_equals_as_usage(cli: Cli) -> None:
    result = cli("validate", str(GATEWAY), "--var", "novalue")

    assert result.code == 2
    assert "--var takes name=value" in result.err


# --- plan --------------------------------------------------------------------------


def test_plan_shows_waves_hosts_rendered_commands_and_irreversible_steps(cli: Cli, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(TWO_WAVES)

    result = cli("plan", str(plan), "--env", "demo")

    assert result.code == 0
    out = result.out
    assert "wave 1 (canary): a" in out
    assert "wave 2 (100%): b, c" in out
    assert "run:      install --host b --token ***" in out
    assert "rollback: uninstall --host c" in out
    assert "rollback: NONE (irreversible)" in out
    assert "irreversible steps: migrate" in out
    assert "not simulated: the 2 steps themselves (they change things); nothing was changed" in out
    assert "s3cr3t-value" not in out
    digest = cli("validate", str(plan), "--json").json()["plans"][0]["digest"]
    assert f"digest {digest}" in out


def test_plan_json_is_the_schedule_as_data(cli: Cli) -> None:
    result = cli("plan", str(GATEWAY), "--env", "demo", "--json")

    assert result.code == 0
    schedule = result.json()
    assert schedule["plan"] == "order-gateway-metadata"
    assert schedule["environment"] == "demo"
    assert [w["hosts"] for w in schedule["waves"]] == [["gw-1"], ["gw-2"], ["gw-3", "gw-4"]]
    steps = schedule["hosts"]["gw-2"]["steps"]
    assert [s["name"] for s in steps] == ["stage-release", "activate-release"]
    assert steps[1]["run"].endswith("reload --port 18082")
    assert not any(s["irreversible"] for s in steps)
    assert schedule["digest"] == cli("validate", str(GATEWAY), "--json").json()["plans"][0]["digest"]


def test_plan_on_production_renders_ssh_targets(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config of whoever runs the tests

    result = cli("plan", str(GATEWAY), "--env", "production")

    assert result.code == 0
    known_hosts = tmp_path / ".ssh" / "known_hosts"
    assert (
        f"gw-a1 [ssh deploy@gw-a1.prod.example:22, key agent or ~/.ssh keys, known_hosts {known_hosts}]" in result.out
    )


def test_plan_of_a_bad_plan_exits_2_with_the_location_on_stderr(cli: Cli, tmp_path: Path) -> None:
    bad = _bad_plan(tmp_path)

    result = cli("plan", str(bad), "--env", "demo")

    assert result.code == 2
    assert f"{bad}:10:5: error at steps[0].timout" in result.err
    assert result.out == ""


# --- schema, version, help ---------------------------------------------------------


def test_schema_is_a_json_schema_that_accepts_the_sample_plans(cli: Cli) -> None:
    result = cli("schema")

    assert result.code == 0
    schema = result.json()
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for path in PLANS:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path.name


def test_schema_rejects_an_unknown_key(cli: Cli) -> None:
    validator = Draft202012Validator(cli("schema").json())
    data = yaml.safe_load(BAD)

    assert not validator.is_valid(data)


def test_version_prints_the_package_version(cli: Cli) -> None:
    result = cli("--version")

    assert result.code == 0
    assert result.out.strip() == f"rollout {rollout.__version__}"


def test_help_lists_the_commands_and_exit_codes(cli: Cli) -> None:
    result = cli("--help")

    assert result.code == 0
    for name in ("validate", "plan", "schema"):
        assert name in result.out
    assert "130 interrupted" in result.out


COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands if c.callback)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_shows_an_example(cli: Cli, command: str) -> None:
    result = cli(command, "--help")

    assert result.code == 0
    assert "Example" in result.out
    assert f"rollout {command}" in result.out


# --- a real process ----------------------------------------------------------------


def test_the_installed_command_validates_the_sample_plans() -> None:
    done = subprocess.run(
        [str(ROLLOUT), "validate", *map(str, PLANS)],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        cwd=REPO,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(PLANS)} valid, 0 invalid" in done.stdout


def test_the_installed_command_exits_2_on_a_bad_plan_with_the_location(tmp_path: Path) -> None:
    bad = _bad_plan(tmp_path)

    done = subprocess.run([str(ROLLOUT), "validate", str(bad)], capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 2
    assert f"{bad}:10:5: error at steps[0].timout" in done.stdout + done.stderr
