"""Shared fixtures: the real sshd fixture lives in tests/conftest_sshd.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.cli.app import run_cli
from tests.helpers import Cli, Result

pytest_plugins = ["tests.conftest_sshd"]


@pytest.fixture(scope="session", autouse=True)
def session_lock_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Module- and session-scoped fixtures lock here, never in the user's real lock directory."""
    path = tmp_path_factory.mktemp("session-locks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROLLOUT_LOCK_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def lock_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own lock directory (via $ROLLOUT_LOCK_DIR, so rollout subprocesses inherit it).

    Locks are shared by every working directory of a user: without this, one test's
    unrecovered run of a plan would make every later test of that plan refuse.
    """
    path = tmp_path_factory.mktemp("locks")
    monkeypatch.setenv("ROLLOUT_LOCK_DIR", str(path))
    assert os.environ["ROLLOUT_LOCK_DIR"] == str(path)
    return path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run the CLI in-process; returns the exit code and what it printed."""

    def run(*args: str) -> Result:
        code = run_cli(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
