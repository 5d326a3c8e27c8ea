"""The gate against the example exchange: a demo fleet rehearsed (rollback included), production fleets gathered live.

One rehearsal serves every test: production's ports come in through `--var`, so each
production fleet (started with the gateway builds a test needs) is gated with the very
plan digest that was rehearsed. Invariant: the gate opens only when production's facts,
gathered now, equal the facts the rehearsal journaled, and every environment agrees
with itself.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from examples.exchange.fleet import start_fleet, stop_fleet
from tests.helpers import V1, V2, Fleet, PlanSpec, exchange_plan, rollout, write_plan

FACTS: list[dict[str, Any]] = [
    {"name": "gateway_build", "http": {"url": "{{ gateway }}/version", "json": "$.build"}, "timeout": "2s"},
    {"name": "python", "command": "python3 --version"},
    {"name": "host_name", "command": "echo {{ env }}-{{ host }}", "expect": "differ"},
    {"name": "tier", "command": "echo exchange-{{ env }}", "template": "exchange-{{ env }}"},
]


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """(plan, state dir, run id): the exchange upgrade rehearsed on demo with --rehearse-rollback."""
    work = tmp_path_factory.mktemp("gate-exchange")
    root = work / "demo"
    demo = Fleet(root.resolve(), start_fleet(root, 2, base_port=0, metadata=V1))
    try:
        plan = exchange_plan(demo, PlanSpec(waves=(1, "100%"), bake="100ms"))
        plan["vars"].update({"prod_port_1": "1", "prod_port_2": "1"})
        plan["environments"]["production"] = {
            "connection": "local",
            "hosts": {
                "gw-1": {"vars": {"port": "{{ prod_port_1 }}"}, "groups": ["canary"]},
                "gw-2": {"vars": {"port": "{{ prod_port_2 }}"}},
            },
        }
        plan["parity"] = FACTS
        path = write_plan(work / "plan.yaml", plan)
        state = work / "state"
        done = rollout("run", path, "--env", "demo", "--rehearse-rollback", "--state-dir", state)
        assert done.returncode == 0, done.stdout + done.stderr
        assert demo.is_at("gw-1", V2)
        yield path, state, sorted((state / "runs").iterdir())[-1].name
    finally:
        stop_fleet(root)


@pytest.fixture
def production(tmp_path: Path) -> Iterator[Any]:
    """Start a production fleet with the builds a test asks for; stopped afterwards."""
    roots: list[Path] = []

    def start(builds: Mapping[str, str] | None = None) -> list[str]:
        root = tmp_path / f"production-{len(roots)}"
        roots.append(root)
        gateways = start_fleet(root, 2, base_port=0, metadata=V1, builds=builds)
        return [f"prod_port_{i}={g.port}" for i, g in enumerate(gateways, start=1)]

    try:
        yield start
    finally:
        for root in roots:
            stop_fleet(root)


def gate(plan: Path, state: Path, ports: list[str], *extra: str | Path) -> tuple[int, dict[str, Any]]:
    args: list[str | Path] = ["gate", plan, "--env", "production", "--state-dir", state, "--json", *extra]
    for port in ports:
        args += ["--var", port]
    done = rollout(*args)
    assert done.returncode in (0, 3), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def parity(result: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in result["conditions"] if c["name"] == "parity")


def test_open_when_production_matches_the_rehearsal(
    rehearsed: tuple[Path, Path, str], production: Any, tmp_path: Path
) -> None:
    plan, state, run_id = rehearsed
    junit = tmp_path / "gate.xml"
    code, result = gate(plan, state, production(), "--require-rollback-rehearsal", "--junit", junit)
    assert code == 0, result
    assert parity(result)["summary"] == f"4 facts match run {run_id}"
    names = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase")]
    assert names == ["valid", "freeze", "rehearsed", "rollback-rehearsed", "parity", "lock", "unrecovered"]
    facts = {f["name"]: f for f in parity(result)["evidence"]["facts"]}
    assert facts["gateway_build"]["environments"]["production"]["values"] == {"1.4.2": ["gw-1", "gw-2"]}
    assert facts["host_name"]["drift"] is False  # expect: differ


def test_closed_when_production_runs_another_gateway_build(rehearsed: tuple[Path, Path, str], production: Any) -> None:
    plan, state, _ = rehearsed
    code, result = gate(plan, state, production(builds={"gw-1": "1.5.0", "gw-2": "1.5.0"}))
    assert code == 3
    assert [c["name"] for c in result["conditions"] if not c["passed"]] == ["parity"]
    summary = parity(result)["summary"]
    assert "gateway_build" in summary
    assert "'1.4.2'" in summary
    assert "'1.5.0'" in summary


def test_closed_when_the_hosts_of_production_disagree(rehearsed: tuple[Path, Path, str], production: Any) -> None:
    plan, state, _ = rehearsed
    code, result = gate(plan, state, production(builds={"gw-2": "1.4.3"}))
    assert code == 3
    summary = parity(result)["summary"]
    assert "hosts of production disagree" in summary
    assert "gw-2" in summary


def test_closed_when_a_production_fact_cannot_be_gathered(rehearsed: tuple[Path, Path, str], production: Any) -> None:
    plan, state, _ = rehearsed
    ports = production()
    ports[1] = "prod_port_2=1"  # nothing listens there
    code, result = gate(plan, state, ports)
    assert code == 3
    assert "could not be gathered" in parity(result)["summary"]
    assert "gw-2" in parity(result)["summary"]
