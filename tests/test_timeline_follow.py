"""`rollout timeline RUN --follow` streams a run in progress from another terminal, and stops when it ends."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROLLOUT = [sys.executable, "-m", "rollout"]


def test_follow_streams_a_running_run_and_exits_when_it_ends(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""
name: slow
environments:
  lab:
    rehearsal: true
    hosts: {{ h1: {{}} }}
steps:
  - name: first
    run: sleep 1.5 && touch {tmp_path}/first
    rollback: rm -f {tmp_path}/first
  - name: second
    run: touch {tmp_path}/second
    rollback: rm -f {tmp_path}/second
"""
    )
    state = tmp_path / "state"
    run = subprocess.Popen(
        [*ROLLOUT, "run", str(plan), "--env", "lab", "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        journal = None
        while journal is None and time.monotonic() < deadline:
            found = list(state.glob("runs/*/journal.jsonl"))
            journal = found[0] if found and b"step.intent" in found[0].read_bytes() else None
            time.sleep(0.05)
        assert journal is not None, "the run never started its first step"
        run_id = journal.parent.name
        follow = subprocess.run(
            [*ROLLOUT, "timeline", run_id, "--follow", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        assert run.wait(timeout=30) == 0
    assert follow.returncode == 0
    lines = follow.stdout.splitlines()
    # it printed what happened after it attached: the second step and the end of the run
    assert any("second: run:" in line for line in lines)
    assert "run ended: SUCCEEDED" in lines[-1]
    assert all(line[:4].isdigit() for line in lines)  # every line starts with its UTC timestamp
