"""Benchmark metadata validation on 1k, 10k and 100k-record documents.

    python bench/bench_metadata.py [--sizes 1000,10000,100000] [--runs 5] [--json]

For each size it writes a baseline and a new version with 1% of records changed, then
runs, in a fresh interpreter each time, what a pre-check does: parse both documents,
compile the schema, and check schema + invariants + diff + budget. Reported per size:
the median wall time of the check (parse excluded, shown separately) and the peak RSS
of the child process (from wait4, so it is that child's own high-water mark).
Target: 100k records under 3 s and 500 MB.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "examples" / "exchange" / "metadata" / "schema.json"
TARGET_SECONDS = 3.0
TARGET_MB = 500.0
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


def child(directory: Path) -> None:
    """One measured run; prints its timings as JSON."""
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
    t1 = time.perf_counter()
    compiled = compile_schema(schema)
    schema_found = compiled.violations(new)
    t2 = time.perf_counter()
    invariant_found = check_invariants(new, invariants, baseline, key=key)
    t3 = time.perf_counter()
    diff = diff_records(baseline, new, key)
    budget_found = check_budget(diff, Budget(max_changed_pct=2), diff.old_total)
    t4 = time.perf_counter()
    violations = len(schema_found) + len(invariant_found) + len(budget_found)
    assert violations == 0, (schema_found[:3], invariant_found[:3], budget_found[:3])
    assert len(diff.changed) == -(-len(new["instruments"]) // 100)
    print(
        json.dumps(
            {
                "parse": t1 - t0,
                "schema": t2 - t1,
                "invariants": t3 - t2,
                "diff_budget": t4 - t3,
                "check": t4 - t1,
            }
        )
    )


def run_child(directory: Path) -> dict[str, float]:
    """Run one child; its timings plus wall time and peak RSS in MB."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(directory)],
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
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child and args.generate:
        baseline, new = make_documents(args.generate)
        (args.child / "baseline.json").write_text(json.dumps(baseline, indent=1))
        (args.child / "new.json").write_text(json.dumps(new, indent=1))
        return 0
    if args.child:
        child(args.child)
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
            runs = [run_child(directory) for _ in range(args.runs)]
            row: dict[str, Any] = {"records": size, "runs": args.runs}
            for field in ("check", "schema", "invariants", "diff_budget", "parse", "process"):
                row[field] = round(statistics.median(r[field] for r in runs), 4)
            row["rss_mb"] = round(max(r["rss_mb"] for r in runs), 1)
            row["bytes"] = (directory / "new.json").stat().st_size
            rows.append(row)
    big = [r for r in rows if r["records"] >= 100_000]
    ok = all(r["check"] < TARGET_SECONDS and r["rss_mb"] < TARGET_MB for r in big)
    if args.json:
        print(json.dumps({"rows": rows, "target_met": ok}, indent=2))
    else:
        header = f"{'records':>8} {'check s':>8} {'schema':>7} {'invar.':>7} {'diff+b':>7} "
        header += f"{'parse s':>8} {'proc s':>7} {'RSS MB':>7}"
        print(header)
        for r in rows:
            print(
                f"{r['records']:>8} {r['check']:>8.3f} {r['schema']:>7.3f} "
                f"{r['invariants']:>7.3f} {r['diff_budget']:>7.3f} {r['parse']:>8.3f} "
                f"{r['process']:>7.3f} {r['rss_mb']:>7.1f}"
            )
        print(
            f"medians of {args.runs} runs; target for 100k: check < {TARGET_SECONDS:g} s, "
            f"RSS < {TARGET_MB:g} MB: {'met' if ok else 'MISSED'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
