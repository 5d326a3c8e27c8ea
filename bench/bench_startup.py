"""Whole-process start-up time of `rollout --help` and `rollout validate`, against baselines.

Medians over several runs after a warm-up. Uses hyperfine when it is installed (its JSON
export), else time.perf_counter around subprocess runs. Prints a Markdown table and the
ratio validate / (import typer, rich, yaml, pydantic), the figure the target is set on.

    .venv/bin/python bench/bench_startup.py [--runs 10] [--warmup 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ROLLOUT = str(Path(PYTHON).with_name("rollout"))
PLAN = "plans/order-gateway-metadata.yaml"

CASES: list[tuple[str, list[str]]] = [
    ("python -c pass", [PYTHON, "-c", "pass"]),
    (
        "python -c 'import typer, rich, yaml, pydantic'",
        [PYTHON, "-c", "import typer, rich, yaml, pydantic"],
    ),
    ("rollout --help", [ROLLOUT, "--help"]),
    (f"rollout validate {PLAN}", [ROLLOUT, "validate", PLAN]),
]
BASELINE = CASES[1][0]
VALIDATE = CASES[3][0]
HELP = CASES[2][0]

# Aims (milliseconds) and the ratio target.
HELP_AIM_MS = 250
VALIDATE_AIM_MS = 350
RATIO_TARGET = 1.5


def _with_hyperfine(runs: int, warmup: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as directory:
        export = Path(directory) / "hyperfine.json"
        subprocess.run(
            [
                "hyperfine",
                "--style",
                "none",
                "-N",
                "--warmup",
                str(warmup),
                "--runs",
                str(runs),
                "--export-json",
                str(export),
                *(shlex.join(argv) for _, argv in CASES),
            ],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        results = json.loads(export.read_text())["results"]
    return {name: r["times"] for (name, _), r in zip(CASES, results, strict=True)}


def _with_perf_counter(runs: int, warmup: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, argv in CASES:
        times = []
        for i in range(warmup + runs):
            started = time.perf_counter()
            subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            if i >= warmup:
                times.append(time.perf_counter() - started)
        out[name] = times
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    """Run the benchmark and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the medians here")
    args = parser.parse_args()

    tool = "hyperfine" if shutil.which("hyperfine") else "perf_counter"
    runner = _with_hyperfine if tool == "hyperfine" else _with_perf_counter
    times = runner(args.runs, args.warmup)
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    ratio = medians[VALIDATE] / medians[BASELINE]

    print(
        f"machine: {os.cpu_count()} CPUs, {_cpu_model()}; Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; {tool}, median of {args.runs} runs after {args.warmup} warm-up"
    )
    print()
    print("| command | median ms | min ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, t in times.items():
        print(f"| `{name}` | {medians[name]:.0f} | {min(t) * 1000:.0f} | {max(t) * 1000:.0f} |")
    print()
    print(f"validate / baseline imports: {ratio:.2f}x (target {RATIO_TARGET}x)")
    print(f"--help: {medians[HELP]:.0f} ms (aim {HELP_AIM_MS} ms)")
    print(f"validate: {medians[VALIDATE]:.0f} ms (aim {VALIDATE_AIM_MS} ms)")
    if args.json:
        args.json.write_text(json.dumps({"medians_ms": medians, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
