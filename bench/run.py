"""Run every benchmark in this directory, one after another (`make bench`).

Each bench prints its own table; numbers and method are recorded in bench/README.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    "bench_startup.py",
    "bench_local.py",
    "bench_engine.py",
    "bench_ssh.py",
    "bench_metadata.py",
    "bench_scale.py",
    "bench_steps.py",
    "bench_gate.py",
]


def main() -> int:
    """Run each bench that exists; report which failed."""
    failed = []
    for name in ORDER:
        script = HERE / name
        if not script.exists():
            continue
        print(f"\n=== {name}", flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
