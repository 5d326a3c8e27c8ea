"""Benchmark metadata validation on 1k, 10k and 100k-record documents.

    python bench/bench_metadata.py [--sizes 1000,10000,100000] [--runs 5] [--json]

For each size it writes a baseline and a new version with 1% of records changed, then
runs, in a fresh interpreter each time, what a pre-check does: parse both documents,
compile the schema, and check schema + invariants + diff + budget. Reported per size:
the median wall time of the check (parse excluded, shown separately) and the peak RSS
of the child process (from wait4, so it is that child's own high-water mark).
Target: 100k records under 3 s and 500 MB. The check and the invalid-document check are
also reported in process CPU seconds, which another load on the machine disturbs far
less than wall time.

The validation library leaves the garbage collector alone; `rollout metadata check`
pauses it around parsing and checking. So every size runs both ways, alternating in the
same run: "gc on" (the library as a caller gets it) and "gc paused" (as the CLI runs
it). A third document with 1% of its records invalid measures the slow path, where
jsonschema's `iter_errors` names every violation, both ways too.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "examples" / "exchange" / "metadata" / "schema.json"
TARGET_SECONDS = 3.0
TARGET_MB = 500.0
GC_MODES = ("on", "paused")
FIELDS = (
    "check",
    "schema",
    "invariants",
    "diff_budget",
    "parse",
    "process",
    "invalid_schema",
    "check_cpu",
    "invalid_cpu",
)
BASES = ["BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "DOT", "LTC", "LINK", "AVAX"]


def make_documents(size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A baseline with `size` instruments (and a market each) and a copy with 1% changed."""
    instruments = [
        {
            "id": i + 1,
            "symbol": f"{BASES[i % len(BASES)]}{i}-USD",
            "base": f"{BASES[i % len(BASES)]}{i}",
            "quote": "USD",
            "tick_size": 0.01,
            "lot_size": 0.001,
            "price_precision": 2,
            "status": "trading",
        }
        for i in range(size)
    ]
    markets = [{"id": f"spot:{r['symbol']}", "instrument": r["symbol"], "type": "spot"} for r in instruments]
    baseline = {"version": 1, "instruments": instruments, "markets": markets}
    new = json.loads(json.dumps(baseline))
    new["version"] = 2
    for record in new["instruments"][::100]:
        record["tick_size"] = 0.05
    return baseline, new


def make_invalid(new: dict[str, Any]) -> dict[str, Any]:
    """A copy of `new` with every 100th instrument breaking the schema (a tick size of 0)."""
    invalid = json.loads(json.dumps(new))
    for record in invalid["instruments"][1::100]:
        record["tick_size"] = 0
    return invalid


def child(directory: Path, gc_mode: str) -> None:
    """One measured run; prints its timings as JSON. `gc_mode` "paused" pauses the
    collector around parsing and checking, the way `rollout metadata check` does."""
    if gc_mode == "paused":
        gc.disable()
    from rollout.checks.metadata import (
        Bound,
        Budget,
        Invariants,
        check_budget,
        check_invariants,
        compile_schema,
        diff_records,
        parse_document,
    )

    key = "instruments[].symbol"
    invariants = Invariants(
        unique=(key, "markets[].id"),
        references=(("markets[].instrument", key),),
        non_empty=("instruments",),
        immutable=("instruments[].id", "instruments[].base"),
        bounds=(Bound("instruments[].price_precision", minimum=0, maximum=12),),
    )
    t0 = time.perf_counter()
    baseline = parse_document((directory / "baseline.json").read_bytes(), fmt="json", name="b")
    new = parse_document((directory / "new.json").read_bytes(), fmt="json", name="n")
    schema = parse_document(SCHEMA.read_bytes(), fmt="json", name="schema")
    t1, c1 = time.perf_counter(), time.process_time()
    compiled = compile_schema(schema)
    schema_found = compiled.violations(new)
    t2 = time.perf_counter()
    invariant_found = check_invariants(new, invariants, baseline, key=key)
    t3 = time.perf_counter()
    diff = diff_records(baseline, new, key)
    budget_found = check_budget(diff, Budget(max_changed_pct=2), diff.old_total)
    t4, c4 = time.perf_counter(), time.process_time()
    violations = len(schema_found) + len(invariant_found) + len(budget_found)
    assert violations == 0, (schema_found[:3], invariant_found[:3], budget_found[:3])
    assert len(diff.changed) == -(-len(new["instruments"]) // 100)
    # The two versions go first, so the third document does not raise the peak RSS above.
    del baseline, new, diff
    invalid = parse_document((directory / "invalid.json").read_bytes(), fmt="json", name="i")
    t5, c5 = time.perf_counter(), time.process_time()
    invalid_found = compiled.violations(invalid)
    t6, c6 = time.perf_counter(), time.process_time()
    assert len(invalid_found) == len(invalid["instruments"][1::100]), invalid_found[:3]
    print(
        json.dumps(
            {
                "parse": t1 - t0,
                "schema": t2 - t1,
                "invariants": t3 - t2,
                "diff_budget": t4 - t3,
                "check": t4 - t1,
                "invalid_schema": t6 - t5,
                "check_cpu": c4 - c1,
                "invalid_cpu": c6 - c5,
            }
        )
    )


def run_child(directory: Path, gc_mode: str) -> dict[str, float]:
    """Run one child; its timings plus wall time and peak RSS in MB."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(directory), "--gc", gc_mode],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed with {proc.returncode}")
    result: dict[str, float] = json.loads(out)
    result["process"] = time.perf_counter() - start
    result["rss_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--gc", choices=GC_MODES, default="on", help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child and args.generate:
        baseline, new = make_documents(args.generate)
        (args.child / "baseline.json").write_text(json.dumps(baseline, indent=1))
        (args.child / "new.json").write_text(json.dumps(new, indent=1))
        (args.child / "invalid.json").write_text(json.dumps(make_invalid(new), indent=1))
        return 0
    if args.child:
        child(args.child, args.gc)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-metadata-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            directory = Path(tmp) / str(size)
            directory.mkdir()
            # Generated in a child too: ru_maxrss carries over fork+exec, so a parent
            # holding the documents would inflate every child's peak.
            subprocess.run(
                [sys.executable, __file__, "--generate", str(size), "--child", str(directory)],
                check=True,
            )
            # Alternating, so a change in the machine's load hits both modes alike.
            runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in GC_MODES}
            for _ in range(args.runs):
                for mode in GC_MODES:
                    runs[mode].append(run_child(directory, mode))
            for mode in GC_MODES:
                row: dict[str, Any] = {"records": size, "gc": mode, "runs": args.runs}
                for field in FIELDS:
                    row[field] = round(statistics.median(r[field] for r in runs[mode]), 4)
                row["rss_mb"] = round(max(r["rss_mb"] for r in runs[mode]), 1)
                row["bytes"] = (directory / "new.json").stat().st_size
                rows.append(row)
    big = [r for r in rows if r["records"] >= 100_000]
    ok = all(r["check"] < TARGET_SECONDS and r["rss_mb"] < TARGET_MB for r in big)
    if args.json:
        print(json.dumps({"rows": rows, "target_met": ok}, indent=2))
    else:
        header = f"{'records':>8} {'gc':>6} {'check s':>8} {'schema':>7} {'invar.':>7} {'diff+b':>7} "
        header += f"{'parse s':>8} {'proc s':>7} {'RSS MB':>7} {'invalid':>8} {'chk CPU':>8} {'inv CPU':>8}"
        print(header)
        for r in rows:
            print(
                f"{r['records']:>8} {r['gc']:>6} {r['check']:>8.3f} {r['schema']:>7.3f} "
                f"{r['invariants']:>7.3f} {r['diff_budget']:>7.3f} {r['parse']:>8.3f} "
                f"{r['process']:>7.3f} {r['rss_mb']:>7.1f} {r['invalid_schema']:>8.3f} "
                f"{r['check_cpu']:>8.3f} {r['invalid_cpu']:>8.3f}"
            )
        print(
            f"medians of {args.runs} runs per mode; invalid = schema check of a document with 1% of "
            f"records invalid; CPU = process CPU seconds (steadier than wall time on a shared machine); target for 100k, both ways: check < {TARGET_SECONDS:g} s, "
            f"RSS < {TARGET_MB:g} MB: {'met' if ok else 'MISSED'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
