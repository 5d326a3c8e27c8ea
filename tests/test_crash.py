"""The orchestrator dies right after each line of a real run's journal; recover puts every target back.

A real `rollout run` on local targets (three hosts, two waves, two steps with verify and
rollback, a guard) is SIGKILLed by itself the moment journal line k is written (and
fsynced, for the lines the engine syncs): the launcher below wraps Journal.append and
holds every other append off until the kill, so the journal ends exactly at line k.
Then `rollout recover` runs, and every target must be back at its start version (or at
the new one, when line k was the run's successful end), nothing of the dead run may
still be running, and `rollout verify` must pass.

`make test` tries a sample of positions (those with a command in flight among them); `make fuzz` (ROLLOUT_CRASH_ALL=1) tries all N.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli_env, events, marked_pids, rollout, run_args, run_id_of, write_plan

HOSTS = ("h1", "h2", "h3")

# Runs the real CLI, SIGKILLing itself right after journal line $ROLLOUT_CRASH_AFTER.
LAUNCHER = """
import os, signal, sys, threading
import rollout.journal as journal
after = os.environ["ROLLOUT_CRASH_AFTER"]
after = 10**9 if after == "end" else int(after)
original = journal.Journal.append
gate = threading.Lock()
def append(self, event, *, sync=False):
    with gate:  # no other line can be written between line `after` and the kill
        record = original(self, event, sync=sync)
        # run.end is the last line of every run, however many lines this one has
        if record.seq >= after or record.kind == "run.end":
            os.kill(os.getpid(), signal.SIGKILL)
    return record
journal.Journal.append = append
from rollout.cli import run_cli
sys.exit(run_cli(sys.argv[1:]))
"""


def crash_plan(tmp_path: Path) -> tuple[Path, Path]:
    """Hosts at v1; stage (writes v2 aside), then activate (slowly copies it live); a guard."""
    work = tmp_path / "hosts"
    work.mkdir(parents=True)
    for host in HOSTS:
        (work / f"{host}.version").write_text("v1\n")
    live = f"{work}/{{{{ host }}}}.version"
    plan: dict[str, Any] = {
        "version": 1,
        "name": "crash",
        "vars": {"live": live, "staged": f"{live}.staged"},
        "environments": {"demo": {"rehearsal": True, "connection": "local", "hosts": {h: {} for h in HOSTS}}},
        "guards": [
            {
                "name": "a version is live",
                "command": {"run": "grep -qx -e v1 -e v2 {{ live }}"},
                "every": "100ms",
                "fail_after": 3,
            }
        ],
        "strategy": {"waves": [1, "100%"], "bake": "100ms", "concurrency": len(HOSTS)},
        "steps": [
            {
                "name": "stage",
                "run": "echo v2 > {{ staged }}",
                "verify": [{"name": "staged", "command": {"run": "cat {{ staged }}", "stdout": "^v2$"}}],
                "rollback": "rm -f {{ staged }}",
            },
            {
                "name": "activate",
                # Slow enough that a kill after its process.start line leaves it running for recover.
                "run": "sleep 0.3; cp {{ staged }} {{ live }}",
                "verify": [{"name": "live", "command": {"run": "cat {{ live }}", "stdout": "^v2$"}}],
                "rollback": "echo v1 > {{ live }}",
            },
        ],
    }
    return write_plan(tmp_path / "plan.yaml", plan), work


def at_start(work: Path, host: str) -> bool:
    """The host is where it started: v1 live, nothing staged."""
    return (work / f"{host}.version").read_text() == "v1\n" and not (work / f"{host}.version.staged").exists()


def at_end(work: Path, host: str) -> bool:
    """The host completed the upgrade."""
    return (work / f"{host}.version").read_text() == "v2\n"


def complete_run(tmp_path: Path) -> list[dict[str, Any]]:
    """The journal of a complete, successful run of the crash plan."""
    plan, work = crash_plan(tmp_path / "reference")
    state = tmp_path / "reference" / "state"
    result = rollout(*run_args(plan, state))
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(at_end(work, h) for h in HOSTS)
    return events(state)


END = "end"  # the position after run.end, whatever its line number


def sample(journal: list[dict[str, Any]]) -> list[int | str]:
    """A spread of positions, weighted to where a command is in flight (after its process.start)."""
    n = len(journal)
    first = {}
    for k, e in enumerate(journal, start=1):
        first.setdefault((e["kind"], e.get("step")), k)
    # The last line is named, not numbered: how often a bake is extended (waiting for a fresh
    # guard probe) depends on timing, so a run may have a line more or less than the reference.
    picks: set[int | str] = {1, n // 2, END}
    picks.add(first[("process.start", "activate")])  # activate sleeps: recover must end it
    picks.add(first[("verify.result", "activate")])
    picks.add(first[("bake.start", None)])
    return sorted(picks, key=lambda k: (k == END, k if isinstance(k, int) else 0))


@pytest.fixture(scope="module")
def positions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int | str]]:
    """The journal positions to kill at: all of them under `make fuzz`, a spread sample otherwise."""
    journal = complete_run(tmp_path_factory.mktemp("crash"))
    if os.environ.get("ROLLOUT_CRASH_ALL"):
        yield [*range(1, len(journal)), END]
    else:
        yield sample(journal)


def crash_and_recover(tmp_path: Path, k: int | str) -> str | None:
    """Kill a run after journal line k, recover it and check the targets; the failure, or None."""
    plan, work = crash_plan(tmp_path)
    state = tmp_path / "state"
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *run_args(plan, state)],
        env=cli_env(ROLLOUT_CRASH_AFTER=str(k)),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != -9:
        return f"line {k}: the run was not killed (exit {proc.returncode}): {proc.stderr[-500:]}"
    run_id = run_id_of(state)
    written = events(state)
    if written[-1]["kind"] != "run.end" and len(written) != k:
        return f"line {k}: the journal has {len(written)} lines, the last a {written[-1]['kind']}"
    succeeded = written[-1]["kind"] == "run.end" and written[-1]["outcome"] == "succeeded"
    recovered = rollout("recover", run_id, "--state-dir", state)
    left = marked_pids(run_id)
    for pid in left:
        os.kill(pid, 9)
    where = f"line {k} ({written[-1]['kind']})"
    if recovered.returncode not in (0, 1):
        return f"{where}: recover exited {recovered.returncode}: {recovered.stdout[-800:]}{recovered.stderr[-400:]}"
    if left:
        return f"{where}: recover left {len(left)} process(es) of the dead run running"
    wrong = [h for h in HOSTS if not (at_end(work, h) if succeeded else at_start(work, h))]
    if wrong:
        return f"{where}: {', '.join(wrong)} not back at the start after recover: {recovered.stdout[-800:]}"
    verified = rollout("verify", run_id, "--state-dir", state)
    if verified.returncode != 0:
        return f"{where}: verify exited {verified.returncode}: {verified.stdout[-400:]}"
    return None


# Every position costs three CLI processes (run, recover, verify): all of them take minutes.
@pytest.mark.timeout(900 if os.environ.get("ROLLOUT_CRASH_ALL") else 300)
def test_recover_after_a_kill_at_each_journal_position_puts_every_target_back(
    tmp_path: Path, positions: list[int | str]
) -> None:
    failures = [f for k in positions if (f := crash_and_recover(tmp_path / f"k{k}", k)) is not None]
    assert failures == [], "\n".join(failures)
