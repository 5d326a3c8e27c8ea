"""Start, stop and inspect a fleet of toy gateways on 127.0.0.1 (hosts gw-1..gw-N).

    python examples/exchange/fleet.py start --root DIR --count N --base-port P [--metadata FILE] [--build B]
    python examples/exchange/fleet.py stop --root DIR
    python examples/exchange/fleet.py status --root DIR

Each gateway lives in DIR/gw-i/: `metadata.json` (the live file a rollout step replaces),
`gateway.pid`, `gateway.port` and `gateway.log`. DIR/fleet.json records the fleet so a
different process can stop it. Importable: `start_fleet`, `stop_fleet`, `fleet_status`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GATEWAY = HERE / "gateway.py"
DEFAULT_METADATA = HERE / "metadata" / "v1.json"
FLEET_FILE = "fleet.json"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 3.0
DEFAULT_BUILD = "1.4.2"  # gateway.py's default; this file runs as a script, so it cannot import it


@dataclass(frozen=True)
class GatewayInfo:
    """One running gateway: its host name, where it listens and where its files are."""

    host: str
    port: int
    pid: int
    dir: Path
    metadata: Path

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        data = asdict(self)
        data.update(dir=str(self.dir), metadata=str(self.metadata))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GatewayInfo:
        """Inverse of `to_dict`."""
        return cls(
            host=data["host"],
            port=int(data["port"]),
            pid=int(data["pid"]),
            dir=Path(data["dir"]),
            metadata=Path(data["metadata"]),
        )


def health(port: int, timeout: float = 1.0) -> dict[str, Any] | None:
    """The gateway's /health answer, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    # Reap first when the gateway is our child, so a zombie does not count as running.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().split(")")[-1].split()[0] != "Z"
    return True


def _is_gateway(pid: int) -> bool:
    # Guards against pid reuse: never signal a process that is not one of our gateways.
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return "gateway.py" in cmdline.read_bytes().decode(errors="replace")
    except OSError:
        return not Path("/proc/self").exists()  # no /proc: trust the pidfile


def _wait_for_port(portfile: Path, proc: subprocess.Popen[bytes], deadline: float) -> int:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}; see {portfile.parent}/gateway.log")
        with contextlib.suppress(OSError, ValueError):
            return int(portfile.read_text())
        time.sleep(0.02)
    raise TimeoutError(f"gateway did not bind within {START_TIMEOUT}s; see {portfile.parent}/gateway.log")


def start_fleet(
    root: Path,
    count: int,
    base_port: int,
    metadata: Path = DEFAULT_METADATA,
    *,
    build: str = DEFAULT_BUILD,
    builds: Mapping[str, str] | None = None,
) -> list[GatewayInfo]:
    """Start `count` gateways serving a copy of `metadata`; base_port 0 picks free ports.

    Each reports `build` on GET /version, or its own from `builds` (host -> build).
    """
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    for i in range(1, count + 1):
        host = f"gw-{i}"
        gw_dir = root / host
        gw_dir.mkdir(exist_ok=True)
        live = gw_dir / "metadata.json"
        shutil.copyfile(metadata, live)
        (gw_dir / "gateway.port").unlink(missing_ok=True)
        port = 0 if base_port == 0 else base_port + i - 1
        with (gw_dir / "gateway.log").open("ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(GATEWAY),
                    "--port",
                    str(port),
                    "--metadata",
                    str(live),
                    "--pidfile",
                    str(gw_dir / "gateway.pid"),
                    "--portfile",
                    str(gw_dir / "gateway.port"),
                    "--build",
                    (builds or {}).get(host, build),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Own session: a Ctrl-C aimed at the caller must not kill the fleet under test.
                start_new_session=True,
            )
        procs.append((host, gw_dir, proc))
    deadline = time.monotonic() + START_TIMEOUT
    fleet: list[GatewayInfo] = []
    try:
        for host, gw_dir, proc in procs:
            port = _wait_for_port(gw_dir / "gateway.port", proc, deadline)
            while health(port, timeout=0.5) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{host} did not answer /health on port {port}")
                time.sleep(0.02)
            fleet.append(GatewayInfo(host, port, proc.pid, gw_dir, gw_dir / "metadata.json"))
    except BaseException:
        for _, _, proc in procs:
            proc.kill()
            proc.wait()
        raise
    (root / FLEET_FILE).write_text(json.dumps([g.to_dict() for g in fleet], indent=2) + "\n")
    return fleet


def load_fleet(root: Path) -> list[GatewayInfo]:
    """The fleet recorded under `root` (empty when none was started)."""
    path = root / FLEET_FILE
    if not path.exists():
        return []
    return [GatewayInfo.from_dict(d) for d in json.loads(path.read_text())]


def stop_fleet(root: Path, timeout: float = STOP_TIMEOUT) -> list[str]:
    """SIGTERM the gateways under `root`, SIGKILL stragglers; returns the hosts stopped."""
    fleet = load_fleet(root)
    running = [g for g in fleet if _alive(g.pid) and _is_gateway(g.pid)]
    for g in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(g.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(g.pid) for g in running) and time.monotonic() < deadline:
        time.sleep(0.02)
    for g in running:
        if _alive(g.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(g.pid, signal.SIGKILL)
    while any(_alive(g.pid) for g in running) and time.monotonic() < deadline + timeout:
        time.sleep(0.02)
    (root / FLEET_FILE).unlink(missing_ok=True)
    return [g.host for g in running]


def fleet_status(root: Path) -> list[dict[str, Any]]:
    """Each recorded gateway with whether it runs and what /health says."""
    out = []
    for g in load_fleet(root):
        alive = _alive(g.pid)
        out.append({**g.to_dict(), "running": alive, "health": health(g.port) if alive else None})
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints JSON."""
    parser = argparse.ArgumentParser(description="toy gateway fleet on 127.0.0.1")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start")
    start.add_argument("--root", type=Path, required=True)
    start.add_argument("--count", type=int, default=3)
    start.add_argument("--base-port", type=int, default=0, help="0 picks free ports")
    start.add_argument("--metadata", type=Path, default=DEFAULT_METADATA)
    start.add_argument("--build", default=DEFAULT_BUILD, help="the build every gateway reports")
    for name in ("stop", "status"):
        sub.add_parser(name).add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "start":
        if load_fleet(args.root):
            stop_fleet(args.root)
        fleet = start_fleet(args.root, args.count, args.base_port, args.metadata, build=args.build)
        print(json.dumps([g.to_dict() for g in fleet], indent=2))
    elif args.command == "stop":
        print(json.dumps({"stopped": stop_fleet(args.root)}))
    else:
        status = fleet_status(args.root)
        print(json.dumps(status, indent=2))
        return 0 if status and all(s["running"] for s in status) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
