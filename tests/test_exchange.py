"""The toy exchange is a real target: real gateway processes on 127.0.0.1, real reloads."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from examples.exchange import fleet as fleet_mod
from examples.exchange.fleet import GatewayInfo, start_fleet, stop_fleet

EXCHANGE = Path(fleet_mod.__file__).resolve().parent
METADATA = EXCHANGE / "metadata"
CTL = EXCHANGE / "ctl.py"
FLEET = EXCHANGE / "fleet.py"


def http(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def install(gw: GatewayInfo, name: str) -> None:
    shutil.copyfile(METADATA / name, gw.metadata)


def pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(")")[-1].split()[0] != "Z"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayInfo]]:
    root = tmp_path_factory.mktemp("fleet")
    gateways = start_fleet(root, 2, 0, METADATA / "v1.json")
    yield gateways
    stop_fleet(root)


@pytest.fixture
def gw(fleet: list[GatewayInfo]) -> Iterator[GatewayInfo]:
    gateway = fleet[0]
    yield gateway
    # Every test leaves the gateway green on v1 for the next one.
    install(gateway, "v1.json")
    assert http(gateway.port, "POST", "/reload")[0] == 200


def test_fleet_starts_named_gateways_each_with_its_own_live_metadata(
    fleet: list[GatewayInfo],
) -> None:
    assert [g.host for g in fleet] == ["gw-1", "gw-2"]
    assert len({g.port for g in fleet}) == 2
    for g in fleet:
        assert g.metadata == g.dir / "metadata.json"
        assert g.metadata.read_bytes() == (METADATA / "v1.json").read_bytes()
        status, body = http(g.port, "GET", "/health")
        assert (status, body["version"], body["pid"]) == (200, 1, g.pid)


def test_probe_is_green_on_v1_and_after_reloading_v2(gw: GatewayInfo) -> None:
    assert http(gw.port, "GET", "/probe") == (
        200,
        {"ok": True, "version": 1, "checked": ["BTC-USD", "ETH-USD"], "errors": []},
    )
    install(gw, "v2.json")
    assert http(gw.port, "POST", "/reload")[1]["ok"] is True
    status, body = http(gw.port, "GET", "/probe")
    assert (status, body["ok"], body["version"]) == (200, True, 2)


def test_metadata_endpoint_serves_the_loaded_document(gw: GatewayInfo) -> None:
    install(gw, "v2.json")
    http(gw.port, "POST", "/reload")
    assert http(gw.port, "GET", "/metadata") == (
        200,
        json.loads((METADATA / "v2.json").read_bytes()),
    )


def test_orders_are_placed_amended_and_cancelled(gw: GatewayInfo) -> None:
    status, order = http(
        gw.port,
        "POST",
        "/orders",
        {"symbol": "ETH-USD", "side": "sell", "price": "2000.01", "qty": 0.5},
    )
    assert status == 201
    assert order["market"] == "spot:ETH-USD"
    status, amended = http(gw.port, "POST", f"/orders/{order['id']}/amend", {"price": 1999.5})
    assert (status, amended["price"], amended["qty"]) == (200, "1999.5", "0.5")
    status, cancelled = http(gw.port, "POST", f"/orders/{order['id']}/cancel")
    assert (status, cancelled["status"]) == (200, "cancelled")
    assert http(gw.port, "POST", f"/orders/{order['id']}/cancel")[0] == 409


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"symbol": "NOPE-USD", "side": "buy", "price": 1, "qty": 1}, 404, "unknown symbol"),
        ({"symbol": "TRX-EUR", "side": "buy", "price": 1, "qty": 10}, 409, "halted"),
        ({"symbol": "ETH-USD", "side": "buy", "price": "2000.001", "qty": 1}, 400, "decimals"),
        ({"symbol": "BTC-USD", "side": "buy", "price": "30000.3", "qty": 1}, 400, "tick_size"),
        ({"symbol": "BTC-USD", "side": "buy", "price": 30000, "qty": "0.00005"}, 400, "lot_size"),
        ({"symbol": "BTC-USD", "side": "hold", "price": 30000, "qty": 1}, 400, "side"),
    ],
)
def test_invalid_orders_are_rejected_with_a_reason(
    gw: GatewayInfo, body: dict[str, Any], status: int, error: str
) -> None:
    got_status, got = http(gw.port, "POST", "/orders", body)
    assert got_status == status
    assert error in got["error"]


class Break(NamedTuple):
    """A broken variant, what the probe reports, and a customer order that now fails."""

    variant: str
    probe_error: str
    symbol: str
    status: int
    error: str


BROKEN = [
    Break("v2-renamed-field.json", "KeyError: 'tick_size'", "BTC-USD", 500, "KeyError: 'tick_size'"),
    Break("v2-duplicate-symbol.json", "BTC-USD place: 409", "BTC-USD", 409, "halted"),
    Break("v2-dangling-reference.json", "500 KeyError", "ETH-USD", 500, "KeyError: 'ETH-USD'"),
    Break("v2-zero-tick.json", "BTC-USD place: 500 ZeroDivisionError", "BTC-USD", 500, "ZeroDivision"),
    Break("v2-half-removed.json", "ETH-USD place: 404", "ETH-USD", 404, "unknown symbol"),
    Break("v2-runtime-break.json", "ETH-USD place: 500 ZeroDivision", "ETH-USD", 500, "ZeroDivision"),
]


@pytest.mark.parametrize("case", BROKEN, ids=[b.variant for b in BROKEN])
def test_broken_metadata_turns_the_probe_red_and_fails_orders_without_crashing(gw: GatewayInfo, case: Break) -> None:
    install(gw, case.variant)
    http(gw.port, "POST", "/reload")
    probe_status, probe = http(gw.port, "GET", "/probe")
    assert (probe_status, probe["ok"]) == (503, False)
    assert any(case.probe_error in e for e in probe["errors"]), probe["errors"]
    price = {"BTC-USD": 30000, "ETH-USD": 2000}[case.symbol]
    order = {"symbol": case.symbol, "side": "buy", "price": price, "qty": 1}
    got_status, got = http(gw.port, "POST", "/orders", order)
    assert got_status == case.status
    assert case.error in json.dumps(got)
    assert http(gw.port, "GET", "/health")[0] == 200  # still up, still serving


def test_dangling_reference_reports_the_failed_reload(gw: GatewayInfo) -> None:
    install(gw, "v2-dangling-reference.json")
    status, body = http(gw.port, "POST", "/reload")
    assert (status, body["error"]) == (500, "KeyError: 'XRP-JPY'")


def test_unparseable_file_keeps_the_previous_version_serving(gw: GatewayInfo) -> None:
    gw.metadata.write_text("{not json")
    status, _body = http(gw.port, "POST", "/reload")
    assert status == 500
    assert http(gw.port, "GET", "/probe")[1]["ok"] is True


def test_sighup_reloads_the_live_file(gw: GatewayInfo) -> None:
    install(gw, "v2.json")
    os.kill(gw.pid, signal.SIGHUP)
    deadline = time.monotonic() + 3
    while http(gw.port, "GET", "/health")[1]["version"] != 2:
        assert time.monotonic() < deadline, "SIGHUP did not reload"
        time.sleep(0.02)


def run_ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CTL), *args], capture_output=True, text=True, timeout=10, check=False)


def test_ctl_probe_exit_code_follows_the_probe(gw: GatewayInfo) -> None:
    green = run_ctl("probe", "--port", str(gw.port))
    assert (green.returncode, json.loads(green.stdout)["ok"]) == (0, True)
    install(gw, "v2-zero-tick.json")
    assert run_ctl("reload", "--port", str(gw.port)).returncode == 0
    red = run_ctl("probe", "--port", str(gw.port))
    assert (red.returncode, json.loads(red.stdout)["ok"]) == (1, False)


def test_ctl_metadata_prints_the_served_document(gw: GatewayInfo) -> None:
    out = run_ctl("metadata", "--port", str(gw.port))
    assert out.returncode == 0
    assert json.loads(out.stdout) == json.loads((METADATA / "v1.json").read_bytes())


def test_ctl_unreachable_gateway_exits_2(tmp_path: Path) -> None:
    assert run_ctl("probe", "--port", "1").returncode == 2


def test_stop_leaves_no_gateway_process_behind(tmp_path: Path) -> None:
    gateways = start_fleet(tmp_path, 2, 0, METADATA / "v2.json")
    assert all(pid_alive(g.pid) for g in gateways)
    assert sorted(stop_fleet(tmp_path)) == ["gw-1", "gw-2"]
    assert not any(pid_alive(g.pid) for g in gateways)
    assert not any((g.dir / "gateway.pid").exists() for g in gateways)
    assert fleet_mod.health(gateways[0].port, timeout=0.2) is None
    assert stop_fleet(tmp_path) == []  # stopping twice is harmless


def test_fleet_command_line_start_status_stop(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(FLEET), *args, "--root", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )

    started = cli("start", "--count", "1", "--base-port", "0")
    assert started.returncode == 0, started.stderr
    (gw1,) = json.loads(started.stdout)
    status = cli("status")
    assert status.returncode == 0
    assert json.loads(status.stdout)[0]["health"]["version"] == 1
    assert json.loads(cli("stop").stdout) == {"stopped": ["gw-1"]}
    assert not pid_alive(gw1["pid"])
    assert cli("status").returncode == 1


def test_committed_metadata_files_match_their_generator() -> None:
    from examples.exchange import make_metadata

    assert make_metadata.main(["--check"]) == 0
