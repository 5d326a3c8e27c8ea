"""What `rollout run` refuses before changing anything: freeze windows, unconfirmed production runs."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.engine.freeze import freeze_window_now
from rollout.model import FreezeWindow

ROLLOUT = [sys.executable, "-m", "rollout"]


def _plan(tmp_path: Path, *, freeze: str = "", rehearsal: bool = True) -> Path:
    marker = tmp_path / "changed"
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""
name: guardrails
environments:
  prod:
    rehearsal: {"true" if rehearsal else "false"}
    hosts: {{ h1: {{}} }}
steps:
  - name: change
    run: touch {marker}
    rollback: rm -f {marker}
{freeze}
"""
    )
    return plan


def _run(plan: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ROLLOUT, "run", str(plan), "--env", "prod", "--state-dir", str(tmp_path / "state"), *extra],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def test_a_run_inside_a_freeze_window_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    start = (now - dt.timedelta(hours=1)).isoformat()
    end = (now + dt.timedelta(hours=1)).isoformat()
    plan = _plan(tmp_path, freeze=f'freeze:\n  - {{ start: "{start}", end: "{end}", reason: year-end freeze }}')
    result = _run(plan, tmp_path)
    assert result.returncode == 3
    assert "frozen" in result.stderr
    assert "year-end freeze" in result.stderr
    assert not (tmp_path / "changed").exists()


def test_a_run_outside_the_freeze_window_goes_ahead(tmp_path: Path) -> None:
    plan = _plan(tmp_path, freeze='freeze:\n  - { start: "2001-01-01T00:00:00Z", end: "2001-01-02T00:00:00Z" }')
    result = _run(plan, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "changed").exists()


@pytest.mark.parametrize(
    ("when", "frozen"),
    [
        (dt.datetime(2026, 11, 27, 17, 0, tzinfo=dt.UTC), True),  # a Friday, 17:00 UTC
        (dt.datetime(2026, 11, 27, 15, 59, tzinfo=dt.UTC), False),  # Friday before the window
        (dt.datetime(2026, 11, 26, 17, 0, tzinfo=dt.UTC), False),  # Thursday
    ],
)
def test_weekly_freeze_windows_cover_their_days_and_hours(when: dt.datetime, frozen: bool) -> None:
    window = FreezeWindow(days=["fri"], start="16:00", end="23:59", reason="no Friday evening changes")
    assert (freeze_window_now([window], when) is not None) is frozen


def test_a_non_rehearsal_environment_needs_confirmation_off_a_terminal(tmp_path: Path) -> None:
    plan = _plan(tmp_path, rehearsal=False)
    refused = _run(plan, tmp_path)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert not (tmp_path / "changed").exists()
    confirmed = _run(plan, tmp_path, "--yes")
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert (tmp_path / "changed").exists()


def test_a_bad_duration_option_is_a_usage_error(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    result = _run(plan, tmp_path, "--grace", "ten seconds")
    assert result.returncode == 2
    assert "--grace" in result.stderr
    assert not (tmp_path / "changed").exists()


def test_plan_with_prechecks_runs_them_for_real_and_changes_nothing(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    plan = _plan(tmp_path)
    plan.write_text(plan.read_text() + f"prechecks:\n  - name: ready flag\n    command: test -f {ready}\n")
    args = [*ROLLOUT, "plan", str(plan), "--env", "prod", "--prechecks"]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 3
    assert "pre-check 'ready flag' failed" in refused.stdout
    ready.touch()
    passed = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert passed.returncode == 0
    assert "every pre-check passed on every host" in passed.stdout
    assert not (tmp_path / "changed").exists()
    assert not (tmp_path / "state").exists()
