"""Step-count benchmarks: what grows with the number of steps in a plan and its journal.

1. Per-step cost of a whole `rollout run` on one local host with N steps (`true`, with a
   `true` rollback so every step joins the host's rollback stack): (wall(N) - wall(1)) / (N - 1),
   so start-up cancels. Flat means the 5,000-step figure is within 20% of the 100-step one.
2. `rollout validate` of a 1-step and a 5,000-step plan (whole process).
3. On the 5,000-step run's journal: `rollout verify`, `rollout timeline` and
   `rollout report --format html` (whole processes, output to /dev/null).

4. Memory per idle host (a host queued for its turn in a wave): tracemalloc's peak over an
   in-process run of one `true` step on 100 and on 1,000 local hosts with concurrency 10
   (events go to a sink that keeps nothing), (peak(1000) - peak(100)) / 900.

Every figure is the median of --runs runs after one warm-up.

Usage: python bench/bench_steps.py [--runs 3] [--steps 1,100,1000,5000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PYTHON = sys.executable
ROLLOUT = [PYTHON, "-m", "rollout"]


def wall(cmd: list[str]) -> float:
    """Whole-process wall time in seconds; the command must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2:5]} exited {proc.returncode}: {proc.stderr[-800:]!r}")
    return elapsed


def median_of(runs: int, fn: Callable[[], float]) -> float:
    """Median of `runs` calls after one warm-up."""
    fn()
    return statistics.median(fn() for _ in range(runs))


def plan(path: Path, n: int) -> Path:
    """A plan of n no-op steps on one local host, each with a no-op rollback."""
    steps = "".join(f"  - {{name: s{i}, run: 'true', rollback: 'true'}}\n" for i in range(n))
    path.write_text(f"name: steps\nenvironments: {{local: {{rehearsal: true, hosts: {{h1: {{}}}}}}}}\nsteps:\n{steps}")
    return path


def run_wall(work: Path, n: int, keep: Path | None = None) -> float:
    """Wall time of one `rollout run` of the n-step plan (state kept in `keep` when given)."""
    path = plan(work / f"plan-{n}.yaml", n)
    state = keep or Path(tempfile.mkdtemp(dir=work))
    try:
        return wall([*ROLLOUT, "run", str(path), "--env", "local", "--state-dir", str(state)])
    finally:
        if keep is None:
            shutil.rmtree(state, ignore_errors=True)


class _Discard:
    """A sink that keeps nothing: the events of a run are not what is measured."""

    def emit(self, event: object, *, sync: bool) -> None:
        """Drop the event."""


def peak_bytes(work: Path, hosts: int) -> int:
    """tracemalloc's peak over an in-process run of one step on `hosts` local hosts, concurrency 10."""
    import tracemalloc

    from rollout.engine.apply import Engine
    from rollout.engine.events import Bus
    from rollout.engine.prepare import prepare_schedule
    from rollout.planfile import load_plan

    path = work / f"hosts-{hosts}.yaml"
    fleet = ", ".join(f"h{i}: {{}}" for i in range(hosts))
    path.write_text(
        f"name: idle\nenvironments: {{lab: {{hosts: {{{fleet}}}}}}}\n"
        "strategy: {concurrency: 10}\nsteps:\n  - {name: s, run: 'true', rollback: none}\n"
    )
    schedule = prepare_schedule(load_plan(path), "lab", run_id="idle")
    tracemalloc.start()
    try:
        engine = Engine(schedule, Bus(_Discard()))  # type: ignore[arg-type]
        outcome = engine.run().outcome
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if outcome != "succeeded":
        raise RuntimeError(f"the {hosts}-host run ended {outcome}")
    return peak


def main() -> int:
    """Print the per-step, validate and journal-command medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", default="1,100,1000,5000")
    args = parser.parse_args()
    counts = [int(x) for x in args.steps.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["ROLLOUT_LOCK_DIR"] = str(work / "locks")  # never the operator's own locks
        small = statistics.median(peak_bytes(work, 100) for _ in range(args.runs))
        large = statistics.median(peak_bytes(work, 1000) for _ in range(args.runs))
        print(
            f"memory per idle host: {(large - small) / 900 / 1024:.1f} KB (peak {small >> 10} KB at 100 hosts, {large >> 10} KB at 1,000)\n"
        )
        walls = {n: median_of(args.runs, lambda n=n: run_wall(work, n)) for n in counts}
        print("| steps | run wall s | per-step ms |")
        print("|---:|---:|---:|")
        base = walls[min(counts)]
        for n in counts:
            per = (walls[n] - base) / (n - min(counts)) * 1000 if n > min(counts) else float("nan")
            print(f"| {n} | {walls[n]:.2f} | {per:.2f} |")
        big = max(counts)
        print("\n| command | median s |")
        print("|---|---:|")
        for n in (1, big):
            path = plan(work / f"plan-{n}.yaml", n)
            print(
                f"| validate ({n} steps) | {median_of(args.runs, lambda p=path: wall([*ROLLOUT, 'validate', str(p)])):.3f} |"
            )
        state = work / "kept"
        run_wall(work, big, keep=state)
        sd = ["--state-dir", str(state)]
        for name, cmd in (
            ("verify", ["verify", "last", *sd]),
            ("timeline", ["timeline", "last", *sd]),
            ("report --format html", ["report", "last", "--format", "html", *sd]),
        ):
            print(f"| {name} ({big} steps) | {median_of(args.runs, lambda c=cmd: wall([*ROLLOUT, *c])):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
