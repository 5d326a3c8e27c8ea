"""`rollout gate` wall time with evidence of 100 runs and parity gathered live over 20 local hosts.

The evidence is real: a small plan (20 local hosts per environment, three parity facts)
is run 100 times on its rehearsal environment, so every journal was written by the
journal writer and every one is verified by the gate. Two cases: the 100 runs in the
state directory, and the same 100 runs as exported bundles in an --evidence directory
(each unpacked and verified). Whole `rollout gate` processes, median of several runs.

    .venv/bin/python bench/bench_gate.py [--runs 5] [--evidence-runs 100] [--hosts 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
ROLLOUT = str(Path(PYTHON).with_name("rollout"))
TARGET_S = 2.0


def plan(hosts: int) -> dict[str, object]:
    """The benchmark plan: `hosts` local hosts in demo and in production, three parity facts."""
    names = {f"h{i:02d}": {} for i in range(1, hosts + 1)}
    return {
        "version": 1,
        "name": "gate-bench",
        "environments": {
            "demo": {"rehearsal": True, "connection": "local", "hosts": names, "facts": {"tier": "gold"}},
            "production": {"connection": "local", "hosts": names, "facts": {"tier": "gold"}},
        },
        "parity": [
            {"name": "build", "command": "echo 1.4.2"},
            {"name": "hostname", "command": "echo {{ host }}", "expect": "differ"},
            {"name": "tier"},
        ],
        "strategy": {"concurrency": hosts},
        "steps": [{"name": "noop", "run": "true", "rollback": "true"}],
    }


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One rollout process."""
    return subprocess.run([ROLLOUT, *args], capture_output=True, text=True, env=env, check=False)


def prepare(work: Path, runs: int, hosts: int, env: dict[str, str]) -> tuple[Path, Path, Path]:
    """The plan, a state dir with `runs` rehearsals, and a directory of their bundles."""
    plan_file = work / "plan.yaml"
    plan_file.write_text(json.dumps(plan(hosts), indent=2))
    state, bundles = work / "state", work / "bundles"
    bundles.mkdir()
    for i in range(runs):
        done = cli("run", str(plan_file), "--env", "demo", "--state-dir", str(state), env=env)
        if done.returncode != 0:
            raise SystemExit(f"rehearsal {i} failed: {done.stderr}")
    for run in sorted((state / "runs").iterdir()):
        done = cli("export", run.name, "-o", str(bundles / f"{run.name}.tar.gz"), "--state-dir", str(state), env=env)
        if done.returncode != 0:
            raise SystemExit(f"export of {run.name} failed: {done.stderr}")
    return plan_file, state, bundles


def time_gate(args: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Wall seconds of whole `rollout gate` processes (one warm-up first); each must open the gate."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        done = cli("gate", *args, env=env)
        took = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"the gate did not open (exit {done.returncode}):\n{done.stdout}{done.stderr}")
        if i:
            times.append(took)
    return times


def main() -> int:
    """Prepare the evidence, time the gate, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--evidence-runs", type=int, default=100)
    parser.add_argument("--hosts", type=int, default=20)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as directory:
        work = Path(directory)
        env = {**os.environ, "ROLLOUT_LOCK_DIR": str(work / "locks"), "NO_COLOR": "1"}
        env.pop("ROLLOUT_STATE_DIR", None)
        began = time.perf_counter()
        plan_file, state, bundles = prepare(work, opts.evidence_runs, opts.hosts, env)
        print(f"prepared {opts.evidence_runs} rehearsals and bundles in {time.perf_counter() - began:.1f}s")
        empty = work / "empty-state"
        cases = [
            (f"{opts.evidence_runs} runs in the state dir", ["--state-dir", str(state)]),
            (f"{opts.evidence_runs} bundles via --evidence", ["--state-dir", str(empty), "--evidence", str(bundles)]),
        ]
        print(f"\n| evidence ({opts.hosts} hosts, parity live) | median s | min s | max s | target |")
        print("|---|---:|---:|---:|---|")
        worst = 0.0
        for label, extra in cases:
            times = time_gate([str(plan_file), "--env", "production", *extra], opts.runs, env)
            median = statistics.median(times)
            worst = max(worst, median)
            print(f"| {label} | {median:.2f} | {min(times):.2f} | {max(times):.2f} | < {TARGET_S:g} s |")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
