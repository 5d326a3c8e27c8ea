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


def test_a_stuck_holder_can_be_forced_out_only_with_its_lock_id(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    state = tmp_path / "state"
    holder = start_rollout(*run_args(plan, state, "--var", "seconds=30"), env=cli_env())
    try:
        wait_for_event(state, is_event("step.intent", step="hold"), proc=holder)
        refused = rollout(*run_args(plan, state))
        assert refused.returncode == 3
        lock_id = (refused.stderr + refused.stdout).split("lock id ")[1].split()[0].strip(",;")

        wrong = rollout("unlock", "demo", "--lock-id", "0000000000000000", "--state-dir", str(state))
        assert wrong.returncode == 3
        assert "does not match" in wrong.stderr
        assert rollout(*run_args(plan, state)).returncode == 3  # still locked

        forced = rollout("unlock", "demo", "--lock-id", lock_id, "--state-dir", str(state))
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert str(holder.pid) in forced.stdout
        assert "rollout recover" in forced.stdout
        assert list((state / "locks").glob(f"demo.lock.forced-{lock_id}"))  # kept as evidence

        started = time.monotonic()
        after = rollout(*run_args(plan, state))
        assert after.returncode == 0, after.stdout + after.stderr
        assert time.monotonic() - started < 5
        assert rollout("unlock", "demo", "--lock-id", lock_id, "--state-dir", str(state)).returncode == 2
    finally:
        holder.kill()
        kill_pidfile(tmp_path / "step.pid")
