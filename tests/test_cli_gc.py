"""Who pauses the garbage collector in the CLI: the bounded commands, for the whole process, and nothing else.

Invariant: `validate`, `schema`, `runs`, `timeline`, `verify` and `report` read their input,
answer and exit, and run from start-up to the end with the collector paused; `run`,
`recover` and `timeline --follow` last as long as a rollout and run with it on. Either
way `run_cli` hands the collector back as it found it (tests and Python callers embed it).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rollout.api
from tests.helpers import Cli

PLAN = """\
name: gc
environments:
  lab:
    rehearsal: true
    hosts: { h1: {} }
steps:
  - { name: one, run: 'true', rollback: 'true' }
"""


@pytest.fixture
def collector_on() -> Iterator[None]:
    """The collector is on when the command starts, and must be on again when it returns."""
    assert gc.isenabled()
    yield
    assert gc.isenabled(), "the collector was left switched off"


def _recording(monkeypatch: pytest.MonkeyPatch, name: str) -> list[bool]:
    """Wrap `rollout.api.<name>` (what the command calls) so each call records whether the collector was on."""
    seen: list[bool] = []
    real: Callable[..., Any] = getattr(rollout.api, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(rollout.api, name, wrapper)
    return seen


@pytest.fixture
def finished_run(cli: Cli, tmp_path: Path) -> tuple[Path, Path]:
    """(plan, state dir) of one finished run."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    state = tmp_path / "state"
    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(state))
    assert result.code == 0, result.out + result.err
    return plan, state


@pytest.mark.usefixtures("collector_on")
@pytest.mark.parametrize(
    ("api_name", "args"),
    [
        ("validate", ("validate", "{plan}")),
        ("json_schema", ("schema",)),
        ("runs", ("runs", "--state-dir", "{state}")),
        ("timeline", ("timeline", "last", "--state-dir", "{state}")),
        ("verify", ("verify", "last", "--state-dir", "{state}")),
        ("report", ("report", "last", "--format", "html", "--state-dir", "{state}")),
    ],
)
def test_a_bounded_command_runs_with_the_collector_paused_and_hands_it_back(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    finished_run: tuple[Path, Path],
    api_name: str,
    args: tuple[str, ...],
) -> None:
    plan, state = finished_run
    seen = _recording(monkeypatch, api_name)

    result = cli(*(a.format(plan=plan, state=state) for a in args))

    assert result.code == 0, result.out + result.err
    assert seen == [False]


@pytest.mark.usefixtures("collector_on")
def test_run_and_timeline_follow_run_with_the_collector_on(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    state = tmp_path / "state"
    ran, followed = _recording(monkeypatch, "run"), _recording(monkeypatch, "timeline")

    assert cli("run", str(plan), "--env", "lab", "--state-dir", str(state)).code == 0
    result = cli("timeline", "last", "--follow", "--state-dir", str(state))

    assert result.code == 0, result.out + result.err
    assert "run ended: SUCCEEDED" in result.out
    assert ran == [True]
    assert followed == [True]


def test_a_caller_that_paused_the_collector_gets_it_back_paused(cli: Cli, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    state = tmp_path / "state"
    gc.disable()
    try:
        assert cli("validate", str(plan)).code == 0
        assert not gc.isenabled()
        assert cli("run", str(plan), "--env", "lab", "--state-dir", str(state)).code == 0
        assert cli("timeline", "last", "--follow", "--state-dir", str(state)).code == 0
        assert not gc.isenabled()
    finally:
        gc.enable()
