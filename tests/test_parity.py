"""`rollout parity` against two real fleets of the toy exchange (demo and production), and
the parity facts every `rollout run` journals before its first change.

Each environment is a fleet of its own, on its own free ports and under its own root; the
production fleet is started with whatever gateway builds the test needs.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from examples.exchange.fleet import start_fleet, stop_fleet
from tests.conftest import Cli
from tests.helpers import (
    V1,
    Fleet,
    PlanSpec,
    events,
    exchange_plan,
    kinds,
    pid_alive,
    rollout,
    run_args,
    running_fleet,
    start_rollout,
    wait_for_file,
    write_plan,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("demo") / "fleet"
    gateways = start_fleet(root, 2, base_port=0, metadata=V1)
    try:
        yield Fleet(root.resolve(), gateways)
    finally:
        stop_fleet(root)


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Production as it should be: the same build as demo."""
    root = tmp_path_factory.mktemp("production") / "fleet"
    gateways = start_fleet(root, 2, base_port=0, metadata=V1)
    try:
        yield Fleet(root.resolve(), gateways)
    finally:
        stop_fleet(root)


@pytest.fixture
def other_production(tmp_path: Path) -> Iterator[Any]:
    """Start a production fleet with the builds a test asks for (stopped afterwards)."""
    roots: list[Path] = []

    def start(build: str = "1.4.2", builds: Mapping[str, str] | None = None) -> Fleet:
        root = tmp_path / f"production-{len(roots)}"
        roots.append(root)
        gateways = start_fleet(root, 2, base_port=0, metadata=V1, build=build, builds=builds)
        return Fleet(root.resolve(), gateways)

    try:
        yield start
    finally:
        for root in roots:
            stop_fleet(root)


def _env(fleet: Fleet) -> dict[str, Any]:
    return {
        "connection": "local",
        "vars": {"root": str(fleet.root)},
        "facts": {"schema_draft": "2020-12"},
        "hosts": {g.host: {"vars": {"port": g.port}} for g in fleet.gateways},
    }


FACTS: list[dict[str, Any]] = [
    {"name": "gateway_build", "http": {"url": "{{ gateway }}/version", "json": "$.build"}, "timeout": "2s"},
    {"name": "metadata", "metadata": {"host_file": "{{ root }}/{{ host }}/metadata.json"}},
    {"name": "python", "command": "python3 --version"},
    {"name": "schema_draft"},
    {"name": "host_name", "command": "echo {{ env }}-{{ host }}", "expect": "differ"},
    {"name": "tag", "command": "cat {{ root }}/tag", "template": "exchange-{{ env }}"},
]


def _plan(tmp_path: Path, demo: Fleet, production: Fleet, facts: list[dict[str, Any]] | None = None) -> Path:
    for name, fleet in (("demo", demo), ("production", production)):
        (fleet.root / "tag").write_text(f"exchange-{name}\n")
    plan = {
        "version": 1,
        "name": "parity-check",
        "vars": {"gateway": "http://127.0.0.1:{{ port }}"},
        "environments": {"demo": {**_env(demo), "rehearsal": True}, "production": _env(production)},
        "parity": FACTS if facts is None else facts,
        "steps": [{"name": "noop", "run": "true", "rollback": "true"}],
    }
    return write_plan(tmp_path / "plan.yaml", plan)


def _compare(cli: Cli, plan: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = cli("parity", str(plan), "--env", "demo", "--env", "production", "--json", *extra)
    return result.code, json.loads(result.out)


def _fact(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in data["facts"] if f["name"] == name)


def test_matching_environments_exit_0_and_show_every_fact(
    cli: Cli, tmp_path: Path, demo: Fleet, production: Fleet
) -> None:
    plan = _plan(tmp_path, demo, production)

    result = cli("parity", str(plan), "--env", "demo", "--env", "production")

    assert result.code == 0, result.out + result.err
    for name in ("gateway_build", "metadata", "python", "schema_draft", "host_name", "tag"):
        assert name in result.out
    assert "1.4.2" in result.out
    assert "every fact matches (6)" in result.out


def test_a_different_gateway_build_in_production_is_drift_naming_the_fact_and_both_values(
    cli: Cli, tmp_path: Path, demo: Fleet, other_production: Any
) -> None:
    plan = _plan(tmp_path, demo, other_production(build="1.5.0"))

    result = cli("parity", str(plan), "--env", "demo", "--env", "production")

    assert result.code == 3, result.out + result.err
    assert "DRIFT" in result.out
    drift_lines = [line for line in result.out.splitlines() if line.strip().startswith("gateway_build:")]
    assert drift_lines, result.out
    assert "'1.4.2'" in drift_lines[0]
    assert "'1.5.0'" in drift_lines[0]
    code, data = _compare(cli, plan)
    assert code == 3
    assert [f["name"] for f in data["facts"] if f["drift"]] == ["gateway_build"]


def test_one_production_host_with_another_build_is_drift_by_itself(
    cli: Cli, tmp_path: Path, demo: Fleet, other_production: Any
) -> None:
    plan = _plan(tmp_path, demo, other_production(builds={"gw-2": "1.4.3"}))

    code, data = _compare(cli, plan)

    assert code == 3
    build = _fact(data, "gateway_build")
    assert build["environments"]["production"]["values"] == {"1.4.2": ["gw-1"], "1.4.3": ["gw-2"]}
    assert any(r.startswith("hosts of production disagree") for r in build["reasons"]), build["reasons"]


def test_expect_differ_values_are_shown_and_never_drift(
    cli: Cli, tmp_path: Path, demo: Fleet, production: Fleet
) -> None:
    code, data = _compare(cli, _plan(tmp_path, demo, production))

    assert code == 0
    host_name = _fact(data, "host_name")
    assert host_name["drift"] is False
    assert host_name["environments"]["demo"]["values"] == {"demo-gw-1": ["gw-1"], "demo-gw-2": ["gw-2"]}


def test_a_template_fact_compares_each_host_with_its_own_rendering(
    cli: Cli, tmp_path: Path, demo: Fleet, production: Fleet
) -> None:
    plan = _plan(tmp_path, demo, production)
    code, data = _compare(cli, plan)
    assert code == 0
    assert _fact(data, "tag")["environments"]["production"]["values"] == {"exchange-production": ["gw-1", "gw-2"]}

    (production.root / "tag").write_text("exchange-demo\n")  # production dressed up as demo
    try:
        code, data = _compare(cli, plan)
    finally:
        (production.root / "tag").write_text("exchange-production\n")

    assert code == 3
    tag = _fact(data, "tag")
    assert tag["drift"] is True
    assert "production/gw-1: 'exchange-demo', the template wants 'exchange-production'" in tag["reasons"]


def test_a_host_whose_command_fails_closes_parity_naming_the_host_and_the_error(
    cli: Cli, tmp_path: Path, demo: Fleet, production: Fleet
) -> None:
    facts = [{"name": "release", "command": "cat {{ root }}/{{ host }}/release"}]
    plan = _plan(tmp_path, demo, production, facts)
    for fleet in (demo, production):
        for host in fleet.hosts:
            (fleet.root / host / "release").write_text("r1\n")
    (production.root / "gw-2" / "release").unlink()

    result = cli("parity", str(plan), "--env", "demo", "--env", "production")
    code, data = _compare(cli, plan)

    assert result.code == 3, result.out
    assert "production/gw-2: could not be gathered" in result.out
    assert code == 3
    errors = _fact(data, "release")["environments"]["production"]["errors"]
    assert list(errors) == ["gw-2"]
    assert "exited 1" in errors["gw-2"]
    assert "No such file" in errors["gw-2"]


def test_json_has_the_verdict_each_fact_and_every_hosts_value(
    cli: Cli, tmp_path: Path, demo: Fleet, production: Fleet
) -> None:
    code, data = _compare(cli, _plan(tmp_path, demo, production))

    assert code == 0
    assert data["match"] is True
    assert data["drift"] is False
    assert data["plan"]["name"] == "parity-check"
    assert len(data["plan"]["digest"]) == 64
    assert data["environments"] == ["demo", "production"]
    assert [f["name"] for f in data["facts"]] == [f["name"] for f in FACTS]
    build = _fact(data, "gateway_build")
    assert set(build) == {"name", "expect", "template", "drift", "reasons", "environments"}
    assert build["environments"]["demo"] == {"values": {"1.4.2": ["gw-1", "gw-2"]}, "errors": {}}
    assert _fact(data, "metadata")["environments"]["demo"]["values"].popitem()[0].startswith("sha256:")
    gathered = data["gathered"]["production"]["gateway_build"]
    assert gathered == {
        "values": {"gw-1": "1.4.2", "gw-2": "1.4.2"},
        "errors": {},
        "expect": "equal",
        "template": None,
        "expected": {},
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "demo"], "at least two"),
        (["--env", "demo", "--env", "staging"], "no environment 'staging'"),
        (["--env", "demo", "--env", "demo"], "more than once"),
    ],
)
def test_usage_errors_exit_2(
    cli: Cli, tmp_path: Path, demo: Fleet, production: Fleet, args: list[str], message: str
) -> None:
    result = cli("parity", str(_plan(tmp_path, demo, production)), *args)

    assert result.code == 2
    assert message in result.err


def test_an_invalid_plan_exits_2_naming_file_and_line(cli: Cli, tmp_path: Path) -> None:
    plan = tmp_path / "bad.yaml"
    plan.write_text(
        "name: bad\nenvironments:\n  a: { hosts: { h: {} } }\n  b: { hosts: { h: {} } }\n"
        "parity:\n  - name: two\n    command: 'true'\n    http: { url: 'http://127.0.0.1:1/' }\n"
        "steps:\n  - { name: s, run: 'true', rollback: 'true' }\n"
    )

    result = cli("parity", str(plan), "--env", "a", "--env", "b")

    assert result.code == 2
    assert f"{plan}:6" in result.err
    assert "at most one of command, http, metadata" in result.err


# --- the run journals the facts ----------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A fleet of its own: a run upgrades it."""
    with running_fleet(tmp_path / "fleet", 2) as f:
        yield f


def _run_plan(tmp_path: Path, fleet: Fleet, facts: list[dict[str, Any]]) -> Path:
    plan = exchange_plan(fleet, PlanSpec(bake="100ms", waves=("100%",)))
    plan["parity"] = facts
    return write_plan(tmp_path / "run.yaml", plan)


def test_a_run_journals_parity_facts_after_the_prechecks_and_before_the_first_step(
    tmp_path: Path, fleet: Fleet
) -> None:
    facts = [
        {"name": "gateway_build", "http": {"url": "{{ gateway }}/version", "json": "$.build"}},
        {"name": "host_name", "command": "echo {{ host }}", "expect": "differ"},
    ]
    plan = _run_plan(tmp_path, fleet, facts)
    state = tmp_path / "state"

    done = rollout(*run_args(plan, state))
    evts = events(state)

    assert done.returncode == 0, done.stdout + done.stderr
    order = kinds(evts)
    assert order.index("prechecks.passed") < order.index("parity.facts") < order.index("step.intent")
    data = evts[order.index("parity.facts")]["data"]
    assert data == {
        "facts": {
            "gateway_build": {
                "values": {"gw-1": "1.4.2", "gw-2": "1.4.2"},
                "errors": {},
                "expect": "equal",
                "template": None,
            },
            "host_name": {
                "values": {"gw-1": "gw-1", "gw-2": "gw-2"},
                "errors": {},
                "expect": "differ",
                "template": None,
            },
        }
    }
    timeline = rollout("timeline", "--state-dir", str(state), evts[0]["data"]["run_id"])
    assert "parity facts gathered (2): gateway_build = '1.4.2'" in timeline.stdout, timeline.stdout
    report = rollout("report", "last", "--state-dir", str(state))
    assert "## Parity facts" in report.stdout, report.stdout
    assert "| gateway_build | equal | '1.4.2' |" in report.stdout
    assert "| host_name | differ | 'gw-1' (gw-1); 'gw-2' (gw-2) |" in report.stdout


def test_a_fact_that_cannot_be_gathered_is_journaled_with_its_error_and_the_run_goes_on(
    tmp_path: Path, fleet: Fleet
) -> None:
    facts = [{"name": "missing", "command": "cat {{ state }}/no-such-file"}]
    plan = _run_plan(tmp_path, fleet, facts)
    state = tmp_path / "state"

    done = rollout(*run_args(plan, state))
    evts = events(state)

    assert done.returncode == 0, done.stdout + done.stderr
    parity = next(e for e in evts if e["kind"] == "parity.facts")
    assert parity["outcome"] == "incomplete"
    assert parity["data"]["facts"]["missing"]["values"] == {}
    assert set(parity["data"]["facts"]["missing"]["errors"]) == {"gw-1", "gw-2"}
    assert "exited 1" in parity["data"]["facts"]["missing"]["errors"]["gw-1"]


def test_a_plan_without_parity_facts_journals_none(tmp_path: Path, fleet: Fleet) -> None:
    plan = _run_plan(tmp_path, fleet, [])
    state = tmp_path / "state"

    done = rollout(*run_args(plan, state))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "parity.facts" not in kinds(events(state))


def test_ctrl_c_ends_rollout_parity_at_once_with_130_and_names_what_was_not_gathered(
    tmp_path: Path, demo: Fleet, production: Fleet
) -> None:
    facts = [{"name": "slow", "command": "echo $$ > {{ root }}/{{ host }}.pid; exec sleep 30", "timeout": "60s"}]
    plan = _plan(tmp_path, demo, production, facts)
    pidfile = demo.root / "gw-1.pid"
    pidfile.unlink(missing_ok=True)
    proc = start_rollout("parity", plan, "--env", "demo", "--env", "production", "--json")
    pid = int(wait_for_file(pidfile, proc=proc))

    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)

    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    errors = _fact(json.loads(out), "slow")["environments"]["demo"]["errors"]
    assert set(errors) == {"gw-1", "gw-2"}
    assert not pid_alive(pid), "the fact's command outlived the interrupt"
