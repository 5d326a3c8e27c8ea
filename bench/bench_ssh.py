"""SSH per-command cost against a throwaway local sshd: paramiko floors vs SshExecutor.

The server is started with the same helpers as the test fixture (tests/conftest_sshd.py):
fresh keys, root's login shell (bash) with HOME pointed at an empty directory so that
~/.bashrc costs nothing. Medians over several runs.

Usage: python bench/bench_ssh.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paramiko

from rollout.executors.ssh import SshExecutor
from tests.conftest_sshd import SshdServer, start_sshd, stop_sshd

HOSTS = 20
COMMANDS_PER_HOST = 5


def raw_connect(server: SshdServer, *, nodelay: bool) -> paramiko.SSHClient:
    """paramiko connect + auth on a socket we open, with or without TCP_NODELAY."""
    sock = socket.create_connection((server.host, server.port), timeout=10)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = paramiko.SSHClient()
    client.load_system_host_keys(server.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        server.host,
        port=server.port,
        username=server.user,
        key_filename=server.identity_file,
        look_for_keys=False,
        allow_agent=False,
        sock=sock,
    )
    return client


def raw_exec(client: paramiko.SSHClient, command: str = "true") -> int:
    """One command on a kept connection, reading to EOF: the paramiko floor."""
    _, stdout, stderr = client.exec_command(command)
    stdout.read()
    stderr.read()
    return stdout.channel.recv_exit_status()


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of `repeat` calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def fan_out_executor(server: SshdServer) -> None:
    """20 SshExecutors in a thread pool, 5 commands each (connects included)."""
    executors = [SshExecutor(server.target(f"host-{i}")) for i in range(HOSTS)]

    def host(ex: SshExecutor) -> None:
        for _ in range(COMMANDS_PER_HOST):
            ex.run("true")

    with ThreadPoolExecutor(HOSTS) as pool:
        list(pool.map(host, executors))
    for ex in executors:
        ex.close()


def fan_out_raw(server: SshdServer, *, nodelay: bool) -> None:
    """The same fan-out with raw paramiko connections in a thread pool."""

    def host(_: int) -> None:
        client = raw_connect(server, nodelay=nodelay)
        for _ in range(COMMANDS_PER_HOST):
            raw_exec(client)
        client.close()

    with ThreadPoolExecutor(HOSTS) as pool:
        list(pool.map(host, range(HOSTS)))


def measure(server: SshdServer, runs: int) -> dict[str, float]:
    """Every measurement, median of `runs` rounds (each round itself a median)."""
    rounds: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        rounds.setdefault(name, []).append(value)

    kept = raw_connect(server, nodelay=True)
    kept_default = raw_connect(server, nodelay=False)
    executor = SshExecutor(server.target())
    executor.run("true")  # connect outside the timing
    try:
        for _ in range(runs):
            record(
                "connect+auth, default socket",
                timed(lambda: raw_connect(server, nodelay=False).close(), 5),
            )
            record(
                "connect+auth, TCP_NODELAY",
                timed(lambda: raw_connect(server, nodelay=True).close(), 5),
            )
            record("raw exec('true'), default socket", timed(lambda: raw_exec(kept_default), 5))
            record("floor: raw exec('true'), TCP_NODELAY", timed(lambda: raw_exec(kept), 30))
            record("SshExecutor.run('true')", timed(lambda: executor.run("true"), 30))
            record(
                "fan-out 20x5: raw paramiko, default socket",
                timed(lambda: fan_out_raw(server, nodelay=False), 1),
            )
            record(
                "fan-out 20x5: raw paramiko, TCP_NODELAY",
                timed(lambda: fan_out_raw(server, nodelay=True), 1),
            )
            record("fan-out 20x5: SshExecutor", timed(lambda: fan_out_executor(server), 1))
    finally:
        kept.close()
        kept_default.close()
        executor.close()
    return {name: statistics.median(values) for name, values in rounds.items()}


def main() -> None:
    """Start a throwaway sshd, measure, print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds per measurement (median)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rollout-bench-sshd-") as tmp:
        server = start_sshd(Path(tmp))
        try:
            medians = measure(server, args.runs)
        finally:
            stop_sshd(server)
    floor = medians["floor: raw exec('true'), TCP_NODELAY"]
    ours = medians["SshExecutor.run('true')"]
    fan_floor = medians["fan-out 20x5: raw paramiko, TCP_NODELAY"]
    fan_ours = medians["fan-out 20x5: SshExecutor"]
    ratios = {"per_command_vs_floor": ours / floor, "fan_out_vs_floor": fan_ours / fan_floor}
    if args.json:
        print(json.dumps({"runs": args.runs, "ms": medians, "ratios": ratios}, indent=2))
        return
    print(f"sshd on 127.0.0.1, login shell bash with an empty rc; median of {args.runs} rounds")
    for name, value in medians.items():
        print(f"  {name:<44} {value:9.2f} ms")
    print(f"  SshExecutor per command vs floor: {ratios['per_command_vs_floor']:.2f}x")
    print(f"  SshExecutor fan-out vs floor:     {ratios['fan_out_vs_floor']:.2f}x")


if __name__ == "__main__":
    main()
