"""Shared fixtures: the real sshd fixture lives in tests/conftest_sshd.py."""

from __future__ import annotations

import pytest

from rollout.cli.app import run_cli
from tests.helpers import Cli, Result

pytest_plugins = ["tests.conftest_sshd"]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run the CLI in-process; returns the exit code and what it printed."""

    def run(*args: str) -> Result:
        code = run_cli(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
