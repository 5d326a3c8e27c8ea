"""State directories and files are never followed through a planted link, and are the user's own.

Real `rollout` processes against real planted symlinks: the link's target must come out
untouched and the command must refuse, naming the path.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROLLOUT, cli_env, rollout, run_args, run_id_of


def _plan(tmp_path: Path) -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: links\n"
        "environments: {demo: {rehearsal: true, hosts: {h1: {}}}}\n"
        f"steps:\n  - {{name: mark, run: 'touch {tmp_path}/applied', rollback: 'rm -f {tmp_path}/applied'}}\n"
    )
    return plan


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text("precious\n")
    return path


def test_a_symlink_planted_at_the_lock_path_is_refused_and_its_target_untouched(
    tmp_path: Path, lock_dir: Path, victim: Path
) -> None:
    (lock_dir / "links@demo.lock").symlink_to(victim)
    result = rollout(*run_args(_plan(tmp_path), tmp_path / "state"))
    assert result.returncode == 5, result.stdout + result.stderr
    assert str(lock_dir / "links@demo.lock") in result.stderr
    assert "symbolic link" in result.stderr
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "applied").exists()


def test_a_symlink_planted_at_the_last_run_record_is_never_written_through(
    tmp_path: Path, lock_dir: Path, victim: Path
) -> None:
    (lock_dir / "links@demo.last-run").symlink_to(victim)
    result = rollout(*run_args(_plan(tmp_path), tmp_path / "state"))
    assert result.returncode == 5, result.stdout + result.stderr
    assert "links@demo.last-run" in result.stderr
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "applied").exists()


@pytest.mark.parametrize("linked", ["state root", "runs"])
def test_a_symlinked_state_directory_is_refused_and_nothing_is_written_through_it(tmp_path: Path, linked: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state = tmp_path / "state"
    if linked == "state root":
        state.symlink_to(elsewhere)
        link = state
    else:
        state.mkdir()
        link = state / "runs"
        link.symlink_to(elsewhere)
    result = rollout(*run_args(_plan(tmp_path), state))
    assert result.returncode == 5, result.stdout + result.stderr
    assert f"{link}: is a symbolic link" in result.stderr
    assert list(elsewhere.iterdir()) == []
    assert not (tmp_path / "applied").exists()


def test_a_symlinked_journal_is_neither_read_nor_appended_through(tmp_path: Path, victim: Path) -> None:
    plan = _plan(tmp_path)
    state = tmp_path / "state"
    assert rollout(*run_args(plan, state)).returncode == 0
    run_id = run_id_of(state)
    journal = state / "runs" / run_id / "journal.jsonl"
    journal.unlink()
    journal.symlink_to(victim)
    for command in (["verify", run_id], ["recover", run_id], ["timeline", run_id]):
        result = rollout(*command, "--state-dir", state)
        assert result.returncode == 5, (command, result.stdout + result.stderr)
        assert str(journal) in result.stderr + result.stdout
    assert victim.read_text() == "precious\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_state_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True)
    os.chown(state / "runs", 65534, 65534)
    result = rollout(*run_args(_plan(tmp_path), state))
    assert result.returncode == 5, result.stdout + result.stderr
    assert f"{state / 'runs'}: is owned by uid 65534" in result.stderr
    assert not (tmp_path / "applied").exists()


def test_state_and_lock_directories_are_created_private_even_under_umask_000(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"
    locks = tmp_path / "deep" / "locks"
    result = subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", str(ROLLOUT), *run_args(_plan(tmp_path), state)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(ROLLOUT_LOCK_DIR=str(locks)),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = state / "runs" / run_id_of(state)
    for directory in (tmp_path / "deep", state, state / "runs", run_dir, locks):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for file in (run_dir / "journal.jsonl", run_dir / "run.json", locks / "links@demo.lock"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
