"""Per-step cost of local no-op commands: the subprocess floor against LocalExecutor.

Also measures the capture strategies that were considered for LocalExecutor, so the
choice can be re-checked on another machine:

- pipes + communicate(): simplest, but buffers unbounded output in memory;
- temp files: bounded memory, but waiting with a timeout means Popen.wait() polling;
- pipes + poll() + pidfd (what LocalExecutor does): bounded memory, no polling.

Usage: python bench/bench_local.py [-n 100] [--runs 7] [--json]
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rollout.executors.base import Target
from rollout.executors.local import LocalExecutor


def floor(n: int) -> None:
    """A bare subprocess.run loop: the cheapest way Python can run a command."""
    for _ in range(n):
        subprocess.run(["true"], check=False)


def sh_floor(n: int) -> None:
    """subprocess.run through /bin/sh -c with captured output: what a step must do."""
    for _ in range(n):
        subprocess.run(["/bin/sh", "-c", "true"], capture_output=True, check=False)


def communicate(n: int) -> None:
    """Alternative: pipes + communicate(timeout) in a new session."""
    for _ in range(n):
        proc = subprocess.Popen(
            ["/bin/sh", "-c", "true"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        proc.communicate(timeout=60)


def temp_files(n: int) -> None:
    """Alternative: output to temp files, wait(timeout), read the tails back."""
    for _ in range(n):
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", "true"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            proc.wait(timeout=60)
            for handle in (out, err):
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - 65536))
                handle.read()


def executor(n: int) -> None:
    """LocalExecutor.run, as the engine calls it (with a timeout)."""
    ex = LocalExecutor(Target("bench"))
    for _ in range(n):
        ex.run("true", timeout=60)
    ex.close()


CASES: dict[str, Callable[[int], None]] = {
    "floor: subprocess.run(['true'])": floor,
    "subprocess.run(sh -c, capture)": sh_floor,
    "alt: pipes + communicate": communicate,
    "alt: temp files + wait": temp_files,
    "LocalExecutor.run": executor,
}


def main() -> None:
    """Run every case `runs` times and print the median per-step cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="commands per run")
    parser.add_argument("--runs", type=int, default=7, help="runs per case (median)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    samples: dict[str, list[float]] = {}
    for _ in range(args.runs):  # interleave cases so machine noise hits them alike
        for name, case in CASES.items():
            started = time.perf_counter()
            case(args.n)
            per_step = (time.perf_counter() - started) / args.n * 1000
            samples.setdefault(name, []).append(per_step)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians["floor: subprocess.run(['true'])"]
    if args.json:
        print(json.dumps({"n": args.n, "runs": args.runs, "ms_per_step": medians}, indent=2))
        return
    print(f"N={args.n} commands, median of {args.runs} runs, ms per step")
    for name, value in medians.items():
        print(f"  {name:<34} {value:7.3f}   {value - base:+7.3f} vs floor")


if __name__ == "__main__":
    main()
