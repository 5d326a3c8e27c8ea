"""One run per environment: a second run is refused at once, naming the holder; a dead holder frees it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.helpers import cli_env, is_event, kill_pidfile, rollout, run_args, start_rollout, wait_for_event


def _plan(tmp_path: Path) -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: lock\n"
        f"vars: {{seconds: '0', pidfile: '{tmp_path}/step.pid'}}\n"
        "environments: {demo: {rehearsal: true, hosts: {h1: {}}}}\n"
        "steps:\n"
        "  - {name: hold, run: 'echo $$ > {{ pidfile }}; exec sleep {{ seconds }}', rollback: 'true', timeout: 60s}\n"
    )
    return plan


def test_a_second_run_on_the_same_environment_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    state = tmp_path / "state"
    holder = start_rollout(*run_args(plan, state, "--var", "seconds=30"), env=cli_env())
    try:
        wait_for_event(state, is_event("step.intent", step="hold"), proc=holder)
        started = time.monotonic()
        second = rollout(*run_args(plan, state))
        assert time.monotonic() - started < 5
        assert second.returncode == 3, second.stdout + second.stderr
        assert str(holder.pid) in second.stderr + second.stdout

        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)
        kill_pidfile(tmp_path / "step.pid")

        started = time.monotonic()
        third = rollout(*run_args(plan, state))
        assert third.returncode == 0, third.stdout + third.stderr
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        kill_pidfile(tmp_path / "step.pid")
