"""Step-count benchmarks: what grows with the number of steps in a plan and its journal.

1. Per-step cost of a whole `rollout run` on one local host with N steps (`true`, with a
   `true` rollback so every step joins the host's rollback stack): (wall(N) - wall(1)) / (N - 1),
   so start-up cancels. Flat means the 5,000-step figure is within 20% of the 100-step one.
2. `rollout validate` of a 1-step and a 5,000-step plan (whole process).
   Wall and CPU seconds (user + system of rollout and its `true` children) both: on a
   shared machine the CPU figure is the steadier one.
3. On the 5,000-step run's journal: `rollout verify`, `rollout timeline` and
   `rollout report --format html` (whole processes, output to /dev/null).

4. Memory per idle host (a host queued for its turn in a wave): tracemalloc's peak over an
   in-process run of one `true` step on 100 and on 1,000 local hosts with concurrency 10
   (events go to a sink that keeps nothing), (peak(1000) - peak(100)) / 900.

Every figure is the median of --runs runs after one warm-up.

Usage: python bench/bench_steps.py [--runs 3] [--steps 1,100,1000,5000] [--tree OLD --tree NEW] [--no-memory]
                                   [--bytecode]

With several --tree, each measurement takes turns between the trees (peers side by side).
With --bytecode, each tree's rollout/ is compiled first (as installing a package does): with
PYTHONDONTWRITEBYTECODE set and no __pycache__, every process compiles rollout's modules again,
about 45 ms of each start on this machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ROLLOUT = [PYTHON, "-m", "rollout"]


CPU: list[float] = []  # CPU seconds (user + system, with every child) of each wall() call


def wall(cmd: list[str], cwd: Path | None = None) -> float:
    """Whole-process wall time in seconds (its CPU seconds go to CPU); the command must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
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


def run_wall(work: Path, n: int, tree: Path, keep: Path | None = None) -> float:
    """Wall time of one `rollout run` of the n-step plan from `tree` (state kept in `keep` when given)."""
    path = plan(work / f"plan-{n}.yaml", n)
    state = keep or Path(tempfile.mkdtemp(dir=work))
    try:
        return wall([*ROLLOUT, "run", str(path), "--env", "local", "--state-dir", str(state)], tree)
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


def print_memory(work: Path, runs: int) -> None:
    """Memory per idle host, from the peaks at 100 and 1,000 hosts."""
    small = statistics.median(peak_bytes(work, 100) for _ in range(runs))
    large = statistics.median(peak_bytes(work, 1000) for _ in range(runs))
    per_host = (large - small) / 900 / 1024
    print(f"memory per idle host: {per_host:.1f} KB (peak {small >> 10} KB at 100 hosts, {large >> 10} KB at 1,000)\n")


def interleaved(runs: int, trees: list[Path], fn: Callable[[Path], float]) -> dict[Path, tuple[float, float]]:
    """Per tree, the median (wall, CPU) of `runs` calls of fn(tree), trees taking turns, after one warm-up each."""
    samples: dict[Path, list[tuple[float, float]]] = {t: [] for t in trees}
    for i in range(runs + 1):
        for tree in trees:
            CPU.clear()
            elapsed = fn(tree)
            if i:
                samples[tree].append((elapsed, CPU[-1]))
    return {t: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for t, v in samples.items()}


def main() -> int:
    """Print the per-step, validate and journal-command medians, per source tree."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", default="1,100,1000,5000")
    parser.add_argument("--no-memory", action="store_true", help="skip the in-process memory figure")
    parser.add_argument(
        "--bytecode", action="store_true", help="compile each tree's rollout/ first, as an installed package is"
    )
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="a source tree to run `python -m rollout` from (repeat to compare, side by side); default: this one",
    )
    args = parser.parse_args()
    trees: list[Path] = [t.resolve() for t in args.tree or [REPO]]
    counts = [int(x) for x in args.steps.split(",")]
    if args.bytecode:
        for tree in trees:
            subprocess.run([PYTHON, "-m", "compileall", "-q", str(tree / "rollout")], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["ROLLOUT_LOCK_DIR"] = str(work / "locks")  # never the operator's own locks
        if not args.no_memory:
            print_memory(work, args.runs)
        runs = {n: interleaved(args.runs, trees, lambda t, n=n: run_wall(work, n, t)) for n in counts}
        first = min(counts)
        print("| tree | steps | run wall s | per-step wall ms | run CPU s | per-step CPU ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for tree in trees:
            (w1, c1) = runs[first][tree]
            for n in counts:
                w, c = runs[n][tree]
                per = (w - w1) / (n - first) * 1000 if n > first else float("nan")
                per_cpu = (c - c1) / (n - first) * 1000 if n > first else float("nan")
                print(f"| {tree.name} | {n} | {w:.2f} | {per:.2f} | {c:.2f} | {per_cpu:.2f} |")
        big = max(counts)
        rows: list[tuple[str, dict[Path, tuple[float, float]]]] = []
        for n in (1, big):
            path = plan(work / f"plan-{n}.yaml", n)
            rows.append(
                (
                    f"validate ({n} steps)",
                    interleaved(args.runs, trees, lambda t, p=path: wall([*ROLLOUT, "validate", str(p)], t)),
                )
            )
        state = work / "kept"
        run_wall(work, big, trees[-1], keep=state)
        sd = ["--state-dir", str(state)]
        for name, cmd in (
            ("verify", ["verify", "last", *sd]),
            ("timeline", ["timeline", "last", *sd]),
            ("report --format html", ["report", "last", "--format", "html", *sd]),
        ):
            rows.append(
                (f"{name} ({big} steps)", interleaved(args.runs, trees, lambda t, c=cmd: wall([*ROLLOUT, *c], t)))
            )
        print("\n| command | " + " | ".join(f"{t.name} wall s | {t.name} CPU s" for t in trees) + " |")
        print("|---|" + "---:|---:|" * len(trees))
        for name, by_tree in rows:
            print(f"| {name} | " + " | ".join(f"{by_tree[t][0]:.3f} | {by_tree[t][1]:.3f}" for t in trees) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
