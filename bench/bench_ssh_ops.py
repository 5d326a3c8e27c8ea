"""What one SSH operation costs the client and the rest of the machine (the sshd and the shells it starts).

One throwaway sshd (as the test fixture starts it) and one paramiko connection on our own
socket with TCP_NODELAY, as the executor opens it. Each operation runs `--n` times in a row;
the client's CPU comes from getrusage, the rest from /proc/stat's busy time minus the
client's (so it includes the kernel's loopback work). Medians over `--runs` rounds.

- session, bare: `echo stepN >> FILE` on a channel of its own (what the floor runs);
- session, rollout's wrapper: `echo $$; export ...; exec /bin/sh -c '...'` (what a step runs:
  the group id first, then the command under /bin/sh);
- session, wrapper without /bin/sh: `echo $$; ...` (what the group-id line alone costs);
- kept shell round trip: one clean-up script sent to the kept shell and its report read back
  (what ends a command's leftovers, see rollout/executors/ssh_control.py);
- handshake: a new connection, host key checked, key authentication, then closed;
- executor: `SshExecutor.run` of the step's command, as a step runs it (by the kept shell's
  supervisor where the host has perl, see rollout/executors/ssh_kept.py; else on a session
  with the wrapper), the executor's own Python work included.

Usage: python bench/bench_ssh_ops.py [--n 200] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import paramiko  # noqa: E402
from bench_ssh import raw_connect  # noqa: E402

from rollout.executors import CommandResult, open_executor  # noqa: E402
from tests.conftest_sshd import start_sshd, stop_sshd  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _busy() -> float:
    """Seconds the machine's CPUs were busy since boot (all but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _session(client: paramiko.SSHClient, command: str) -> None:
    transport = client.get_transport()
    assert transport is not None
    channel = transport.open_session()
    channel.exec_command(command)
    channel.shutdown_write()
    while channel.recv(4096):
        pass
    if channel.recv_exit_status() != 0:
        raise RuntimeError(f"{command!r} failed")
    channel.close()


def _ok(result: CommandResult) -> None:
    if not result.ok:
        raise RuntimeError(f"{result.command!r} failed: {result}")


def _measure(op: Callable[[int], None], n: int) -> tuple[float, float, float]:
    """(wall, client CPU, rest of the machine's CPU) per operation, in milliseconds."""
    busy, cpu, wall = _busy(), _client_cpu(), time.perf_counter()
    for i in range(n):
        op(i)
    wall, cpu, busy = time.perf_counter() - wall, _client_cpu() - cpu, _busy() - busy
    return wall / n * 1000, cpu / n * 1000, max(0.0, busy - cpu) / n * 1000


def main() -> None:
    """Start the sshd, measure each operation `--runs` times, print medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="operations per measurement")
    parser.add_argument("--runs", type=int, default=3, help="measurements per operation (median)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="rollout-bench-ops-") as tmp:
        work = Path(tmp)
        server = start_sshd(work / "sshd")
        try:
            client = raw_connect(server, nodelay=True)
            executor = open_executor(server.target("bench"))
            assert executor.run("true").ok  # connected
            shell = client.get_transport().open_session()  # type: ignore[union-attr]
            shell.exec_command("exec /bin/sh -s @rollout-control")

            def kept(i: int) -> None:
                script = f"if kill -TERM -99999{i % 10} 2>/dev/null; then :; fi; true"
                shell.sendall(f'{{ {script}\n}} </dev/null >/dev/null 2>&1; echo "@rollout-control {i} $?"\n'.encode())
                answer = b""
                while b"\n" not in answer:
                    answer += shell.recv(4096)

            ops: dict[str, tuple[Callable[[int], None], int]] = {
                "session, bare": (lambda i: _session(client, f"echo step{i} >> {work}/a"), args.n),
                "session, rollout's wrapper": (
                    lambda i: _session(
                        client,
                        f"echo $$; export ROLLOUT_RUN=r; export ROLLOUT_ATTEMPT=a; exec /bin/sh -c 'echo step{i} >> {work}/b'",
                    ),
                    args.n,
                ),
                "session, wrapper without /bin/sh": (
                    lambda i: _session(client, f"echo $$; echo step{i} >> {work}/c"),
                    args.n,
                ),
                "kept shell round trip": (kept, args.n),
                "handshake": (lambda i: raw_connect(server, nodelay=True).close(), max(10, args.n // 5)),
                "executor": (lambda i: _ok(executor.run(f"echo step{i} >> {work}/d")), args.n),
            }
            for _ in range(args.runs):
                for name, (op, n) in ops.items():
                    results.setdefault(name, []).append(_measure(op, n))
            shell.close()
            client.close()
            executor.close()
        finally:
            stop_sshd(server)
    rows = {
        name: {
            "wall_ms": round(statistics.median(r[0] for r in runs), 2),
            "client_cpu_ms": round(statistics.median(r[1] for r in runs), 2),
            "rest_cpu_ms": round(statistics.median(r[2] for r in runs), 2),
        }
        for name, runs in results.items()
    }
    if args.json:
        print(json.dumps({"n": args.n, "runs": args.runs, "results": rows}, indent=2))
        return
    print(f"per operation, median of {args.runs} runs of {args.n} (handshakes: {max(10, args.n // 5)})")
    print(f"{'operation':<36} {'wall ms':>8} {'client CPU ms':>14} {'rest CPU ms':>12}")
    for name, row in rows.items():
        print(f"{name:<36} {row['wall_ms']:>8.2f} {row['client_cpu_ms']:>14.2f} {row['rest_cpu_ms']:>12.2f}")


if __name__ == "__main__":
    main()
