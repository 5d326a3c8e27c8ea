"""The sample metadata plan on a real local fleet: broken releases are refused at the pre-check, v2 goes out.

The plan is plans/order-gateway-metadata.yaml's structure with this fleet's ports, absolute
paths and a tiny bake; `rollout run` goes through the same CLI an operator types.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from examples.exchange.fleet import GatewayInfo, start_fleet, stop_fleet
from rollout.cli.app import run_cli

REPO = Path(__file__).resolve().parents[1]
EXCHANGE = REPO / "examples" / "exchange"
METADATA = EXCHANGE / "metadata"
V1 = METADATA / "v1.json"
V2 = METADATA / "v2.json"

PLAN = """\
version: 1
name: order-gateway-metadata-test
vars:
  release: v2
  metadata_dir: "{metadata_dir}"
  release_file: "{{{{ metadata_dir }}}}/{{{{ release }}}}.json"
  schema_file: "{{{{ metadata_dir }}}}/schema.json"
  ctl: "{ctl}"
  live: "{{{{ root }}}}/{{{{ host }}}}/metadata.json"
  gateway: "http://{{{{ address }}}}:{{{{ port }}}}"
environments:
  demo:
    rehearsal: true
    connection: local
    vars:
      root: "{root}"
    hosts:
{hosts}
prechecks:
  - name: gateway answers
    http: {{ url: "{{{{ gateway }}}}/health", status: 200 }}
    timeout: 2s
  - name: release metadata is valid against what is live
    metadata:
      source: {{ file: "{{{{ release_file }}}}" }}
      schema: "{{{{ schema_file }}}}"
      unique: ["instruments[].symbol"]
      references:
        - {{ from: "markets[].instrument", to: "instruments[].symbol" }}
      non_empty: [instruments, markets]
      bounds:
        - {{ path: "instruments[].tick_size", exclusive_min: 0 }}
        - {{ path: "instruments[].lot_size", exclusive_min: 0 }}
      baseline: {{ url: "{{{{ gateway }}}}/metadata" }}
      key: "instruments[].symbol"
      max_changed: 10%
      allow_removed: false
    timeout: 5s
guards:
  - name: order flow (place, amend, cancel)
    http: {{ url: "{{{{ gateway }}}}/probe", json: {{ "$.ok": true }} }}
    every: 100ms
    timeout: 1s
    fail_after: 3
strategy:
  waves: [canary, 100%]
  bake: 200ms
  failure_budget: 0
steps:
  - name: stage-release
    run: cp {{{{ release_file }}}} {{{{ live }}}}.next
    rollback: rm -f {{{{ live }}}}.next
    timeout: 10s
  - name: activate-release
    run: >-
      cp {{{{ live }}}} {{{{ live }}}}.prev &&
      mv {{{{ live }}}}.next {{{{ live }}}} &&
      python3 {{{{ ctl }}}} reload --port {{{{ port }}}}
    verify:
      - name: gateway serves exactly the release (read-back)
        metadata:
          source: {{ url: "{{{{ gateway }}}}/metadata" }}
          equals: {{ file: "{{{{ release_file }}}}" }}
        retries: 3
        interval: 100ms
    rollback: >-
      cp {{{{ live }}}}.prev {{{{ live }}}} &&
      python3 {{{{ ctl }}}} reload --port {{{{ port }}}}
    timeout: 15s
"""

# Each broken release and what the refusal must name: the record (by JSON path or key) and the field.
BROKEN = {
    "v2-renamed-field": ["$.instruments[0]", "tickSize"],
    "v2-duplicate-symbol": ["$.instruments[42].symbol", "duplicate value 'BTC-USD'"],
    "v2-dangling-reference": ["$.markets[0].instrument", "'XRP-JPY'"],
    "v2-zero-tick": ["$.instruments[0].tick_size"],
    "v2-half-removed": ["$.instruments[1]", "symbol='ETH-USD'", "removed"],
}


@dataclass(frozen=True)
class Fleet:
    """A running fleet and a plan written for it."""

    root: Path
    gateways: list[GatewayInfo]
    plan: Path


def write_plan(path: Path, root: Path, gateways: list[GatewayInfo]) -> Path:
    hosts = "\n".join(
        f"      {g.host}: {{ vars: {{ port: {g.port} }}{', groups: [canary]' if i == 0 else ''} }}"
        for i, g in enumerate(gateways)
    )
    text = PLAN.format(metadata_dir=METADATA, ctl=EXCHANGE / "ctl.py", root=root, hosts=hosts)
    path.write_text(text)
    return path


def start(root: Path, plan: Path) -> Fleet:
    gateways = start_fleet(root / "fleet", 3, base_port=0, metadata=V1)
    return Fleet(root / "fleet", gateways, write_plan(plan, (root / "fleet").resolve(), gateways))


@pytest.fixture(scope="module")
def v1_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Shared by the refusals: none of them may change anything, which each test checks."""
    root = tmp_path_factory.mktemp("refusals")
    fleet = start(root, root / "plan.yaml")
    yield fleet
    stop_fleet(fleet.root)


@pytest.fixture
def fresh_fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = start(tmp_path, tmp_path / "plan.yaml")
    yield fleet
    stop_fleet(fleet.root)


Run = Callable[[Fleet, str, Path], tuple[int, str]]


@pytest.fixture
def rollout_run(capsys: pytest.CaptureFixture[str]) -> Run:
    def run(fleet: Fleet, release: str, state: Path) -> tuple[int, str]:
        code = run_cli(
            ["run", str(fleet.plan), "--env", "demo", "--var", f"release={release}", "--state-dir", str(state)]
        )
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def served_digest(port: int) -> str:
    """sha256 of the canonical form of what a gateway serves at /metadata right now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metadata", timeout=2) as resp:
        doc = json.loads(resp.read())
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(
        json.dumps(json.loads(path.read_text()), sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


@pytest.mark.parametrize("variant", sorted(BROKEN))
def test_a_broken_release_is_refused_at_the_precheck_and_nothing_changes(
    v1_fleet: Fleet, rollout_run: Run, tmp_path: Path, variant: str
) -> None:
    v1 = file_digest(V1)
    assert all(served_digest(g.port) == v1 for g in v1_fleet.gateways)

    code, output = rollout_run(v1_fleet, variant, tmp_path / "state")

    assert code == 3, output
    assert "REFUSED: a pre-check failed; nothing was changed on any host" in output
    assert "release metadata is valid against what is live" in output
    for text in BROKEN[variant]:
        assert text in output, output
    for g in v1_fleet.gateways:
        assert served_digest(g.port) == v1, g.host
        assert file_digest(g.metadata) == v1, g.host
        assert not g.metadata.with_name("metadata.json.next").exists()
        assert not g.metadata.with_name("metadata.json.prev").exists()


def test_the_good_release_passes_the_precheck_and_every_gateway_serves_it(
    fresh_fleet: Fleet, rollout_run: Run, tmp_path: Path
) -> None:
    code, output = rollout_run(fresh_fleet, "v2", tmp_path / "state")

    assert code == 0, output
    assert "SUCCEEDED" in output
    v2 = file_digest(V2)
    for g in fresh_fleet.gateways:
        assert served_digest(g.port) == v2, g.host
        assert file_digest(g.metadata) == v2, g.host
