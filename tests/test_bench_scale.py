"""The fleet-scale bench's smoke run still works against the current engine and journal.

bench/bench_scale.py reads journal events (bake, guard states, rollback) and drives a
probe server; when the guard code or the journal changes shape, the bench must fail
here rather than print empty tables. Invariant: a --quick run at N=10 completes, every
guard mode runs, guards against an always-200 server never report failing, probes reach
the server, and the canary's induced failure trips exactly the canary and rolls back. (The steps part
runs only whole CLI commands that other tests cover, so it is left out to keep this short.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_scale.py"


def test_quick_run_measures_every_mode_and_detects_the_canary(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ["--quick", "--bake", "1", "--steps", "1", "--timeout", "90", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    fleet = result["fleet"]
    for mode in ("none", "http", "command"):
        row = fleet[f"{mode}/10"]
        assert not row["timed_out"], row
        assert row["exits"] == [0], row
        assert row["failing_states_total"] == 0, row
        assert row["peak_rss_mb"] > 0, row
        assert row["journal_bytes_per_host"] > 0, row
    assert fleet["http/10"]["probes_per_host"] >= 1, fleet["http/10"]
    detect = result["detection"]
    assert detect["exits"] == [1], detect
    assert detect["tripped_hosts"] == ["h0000"], detect
    assert detect["other_hosts_failing_states"] == 0, detect
    assert detect["first_503_to_rollback_ms"] is not None, detect
