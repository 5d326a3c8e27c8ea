"""One run per plan and environment: a second run is refused at once, naming the holder; a dead holder frees the lock, but its run must be recovered first."""

from __future__ import annotations

import signal
import stat
import subprocess
import time
from pathlib import Path

from tests.helpers import (
    cli_env,
    is_event,
    kill_pidfile,
    rollout,
    run_args,
    run_id_of,
    start_rollout,
    wait_for_event,
)


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
        dead = run_id_of(state)

        # the lock died with its holder, but the dead run left a step applied: refused until recovered
        started = time.monotonic()
        third = rollout(*run_args(plan, state))
        assert time.monotonic() - started < 5
        assert third.returncode == 3, third.stdout + third.stderr
        assert f"rollout recover {dead}" in third.stderr

        assert rollout("recover", dead, "--state-dir", state).returncode == 1
        fourth = rollout(*run_args(plan, state))
        assert fourth.returncode == 0, fourth.stdout + fourth.stderr
    finally:
        holder.kill()
        kill_pidfile(tmp_path / "step.pid")


def test_a_stuck_holder_can_be_forced_out_only_with_its_lock_id(tmp_path: Path, lock_dir: Path) -> None:
    plan = _plan(tmp_path)
    state = tmp_path / "state"
    holder = start_rollout(*run_args(plan, state, "--var", "seconds=30"), env=cli_env())
    try:
        wait_for_event(state, is_event("step.intent", step="hold"), proc=holder)
        refused = rollout(*run_args(plan, state))
        assert refused.returncode == 3
        lock_id = (refused.stderr + refused.stdout).split("lock id ")[1].split()[0].strip(",;")
        assert f"rollout unlock demo --plan lock --lock-id {lock_id}" in refused.stderr

        wrong = rollout("unlock", "demo", "--plan", "lock", "--lock-id", "0000000000000000")
        assert wrong.returncode == 3
        assert "does not match" in wrong.stderr
        assert rollout(*run_args(plan, state)).returncode == 3  # still locked

        forced = rollout("unlock", "demo", "--plan", "lock", "--lock-id", lock_id)
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert str(holder.pid) in forced.stdout
        assert "rollout recover" in forced.stdout
        assert list(lock_dir.glob(f"lock@demo.lock.forced-{lock_id}"))  # kept as evidence
        assert rollout("unlock", "demo", "--plan", "lock", "--lock-id", lock_id).returncode == 2

        # the lock is free, but the forced run has not settled: a new run refuses until it is recovered
        run_id = run_id_of(state)
        after = rollout(*run_args(plan, state))
        assert after.returncode == 3, after.stdout + after.stderr
        assert f"rollout recover {run_id}" in after.stderr
        holder.kill()
        holder.communicate(timeout=10)
        kill_pidfile(tmp_path / "step.pid")
        assert rollout("recover", run_id, "--state-dir", state).returncode == 1

        started = time.monotonic()
        again = rollout(*run_args(plan, state))
        assert again.returncode == 0, again.stdout + again.stderr
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        kill_pidfile(tmp_path / "step.pid")


def _hold(plan: Path, state: Path) -> subprocess.Popen[str]:
    holder = start_rollout(*run_args(plan, state, "--var", "seconds=30"), env=cli_env())
    wait_for_event(state, is_event("step.intent", step="hold"), proc=holder)
    return holder


def test_the_lock_is_shared_by_every_state_directory_and_keyed_by_plan_and_environment(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    holder = _hold(plan, tmp_path / "operator-a")
    try:
        # the same plan on the same environment from another directory: refused, naming the holder
        second = rollout(*run_args(plan, tmp_path / "operator-b"))
        assert second.returncode == 3, second.stdout + second.stderr
        assert f"pid {holder.pid}" in second.stderr
        assert not (tmp_path / "operator-b" / "runs").exists() or not any((tmp_path / "operator-b" / "runs").iterdir())

        # another plan that also names its environment "demo" is not the same change: it runs
        other = tmp_path / "other.yaml"
        other.write_text(
            "name: unrelated\n"
            "environments: {demo: {rehearsal: true, hosts: {h1: {}}}}\n"
            "steps:\n  - {name: quick, run: 'true', rollback: 'true'}\n"
        )
        unrelated = rollout(*run_args(other, tmp_path / "operator-b"))
        assert unrelated.returncode == 0, unrelated.stdout + unrelated.stderr
    finally:
        holder.kill()
        holder.communicate(timeout=10)
        kill_pidfile(tmp_path / "step.pid")


def test_a_dead_unrecovered_run_blocks_new_runs_from_every_directory_until_recovered(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    first = tmp_path / "operator-a"
    holder = _hold(plan, first)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=10)
    kill_pidfile(tmp_path / "step.pid")
    dead = run_id_of(first)

    elsewhere = tmp_path / "operator-b"
    refused = rollout(*run_args(plan, elsewhere))
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert dead in refused.stderr
    assert str((first / "runs" / dead).resolve()) in refused.stderr
    assert f"rollout recover {dead} --state-dir {first.resolve()}" in refused.stderr
    assert not (elsewhere / "runs").exists() or not any((elsewhere / "runs").iterdir())

    recovered = rollout("recover", dead, "--state-dir", first)
    assert recovered.returncode == 1, recovered.stdout + recovered.stderr
    after = rollout(*run_args(plan, elsewhere))
    assert after.returncode == 0, after.stdout + after.stderr


def test_a_run_that_ended_rollback_failed_blocks_new_runs_until_recovered(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.touch()
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: stuck\n"
        "vars: {fail: 'no'}\n"
        "environments: {demo: {rehearsal: true, hosts: {h1: {}}}}\n"
        "steps:\n"
        f"  - {{name: s1, run: 'true', rollback: 'test ! -e {broken}', timeout: 10s}}\n"
        "  - {name: s2, run: 'test {{ fail }} = no', rollback: 'true', timeout: 10s}\n"
    )
    state = tmp_path / "state"
    assert rollout(*run_args(plan, state, "--var", "fail=yes")).returncode == 4
    run_id = run_id_of(state)
    refused = rollout(*run_args(plan, tmp_path / "elsewhere"))
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "rollback_failed" in refused.stderr
    assert f"rollout recover {run_id}" in refused.stderr

    broken.unlink()
    assert rollout("recover", run_id, "--state-dir", state).returncode == 1
    after = rollout(*run_args(plan, tmp_path / "elsewhere"))
    assert after.returncode == 0, after.stdout + after.stderr


def test_the_lock_directory_is_the_users_xdg_state_directory_unless_told(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    env = {k: v for k, v in cli_env().items() if k != "ROLLOUT_LOCK_DIR"}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    assert rollout(*run_args(plan, tmp_path / "state"), env=env).returncode == 0
    locks = tmp_path / "xdg" / "rollout" / "locks"
    assert (locks / "lock@demo.lock").is_file()
    assert stat.S_IMODE(locks.stat().st_mode) == 0o700

    env["ROLLOUT_LOCK_DIR"] = str(tmp_path / "from-env")
    assert rollout(*run_args(plan, tmp_path / "state"), env=env).returncode == 0
    assert (tmp_path / "from-env" / "lock@demo.lock").is_file()

    given = tmp_path / "from-option"
    assert rollout(*run_args(plan, tmp_path / "state", "--lock-dir", str(given)), env=env).returncode == 0
    assert (given / "lock@demo.lock").is_file()
