"""The metadata check kind as a guard: what the live system serves is validated continuously."""

from __future__ import annotations

from pathlib import Path

from rollout.cli.app import run_cli
from tests.helpers import METADATA, V1, PlanSpec, events, exchange_plan, running_fleet, write_plan


def test_a_metadata_guard_trips_when_a_gateway_serves_invalid_metadata(tmp_path: Path) -> None:
    renamed = METADATA / "v2-renamed-field.json"
    with running_fleet(tmp_path / "fleet", 2) as fleet:
        # no metadata pre-check and no probe: only the guard stands between the release and customers
        plan = exchange_plan(fleet, PlanSpec(release=renamed, guard=False, probe_verify=False, bake="1s"))
        plan["guards"] = [
            {
                "name": "served metadata is valid",
                "metadata": {
                    "source": {"url": "{{ gateway }}/metadata"},
                    "schema": str(METADATA / "schema.json"),
                    "unique": ["instruments[].symbol"],
                },
                "every": "100ms",
                "timeout": "1s",
                "fail_after": 2,
            }
        ]
        state = tmp_path / "state"
        code = run_cli(
            ["run", str(write_plan(tmp_path / "plan.yaml", plan)), "--env", "demo", "--state-dir", str(state)]
        )
        assert code == 1
        trips = [e for e in events(state) if e["kind"] == "guard.state" and e["outcome"] == "tripped"]
        assert trips
        assert trips[0]["host"] == "gw-1"
        assert "tickSize" in trips[0]["data"]["summary"]
        for host in fleet.hosts:
            assert fleet.is_at(host, V1)
