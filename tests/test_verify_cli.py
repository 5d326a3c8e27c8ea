"""`rollout verify` on the journal of a real run: intact, then tampered with in every way."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import RUNTIME_BREAK, PlanSpec, rollout, run_args, running_fleet, write_exchange_plan

Tamper = Callable[[list[bytes]], list[bytes]]
MIDDLE = 10  # a line in the middle of the run (1-based), well before the last one


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state directory of one real, rolled-back run."""
    root = tmp_path_factory.mktemp("verify")
    with running_fleet(root / "fleet", 2) as fleet:
        plan = write_exchange_plan(root, fleet, PlanSpec(release=RUNTIME_BREAK, waves=(1, "100%"), probe_verify=False))
        result = rollout(*run_args(plan, root / "state"))
        assert result.returncode == 1, result.stdout + result.stderr
    return root / "state"


def _copy(recorded: Path, tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "state"
    shutil.copytree(recorded, state)
    journal = next((state / "runs").iterdir()) / "journal.jsonl"
    return state, journal


def _verify(state: Path) -> tuple[int, str, dict[str, object]]:
    text = rollout("verify", "last", "--state-dir", state)
    js = rollout("verify", "last", "--state-dir", state, "--json")
    assert js.returncode == text.returncode
    return text.returncode, text.stdout + text.stderr, json.loads(js.stdout)


def test_intact_journal_of_a_real_run_verifies(recorded: Path, tmp_path: Path) -> None:
    state, journal = _copy(recorded, tmp_path)
    code, out, data = _verify(state)
    assert code == 0, out
    assert out.startswith("intact: ")
    lines = journal.read_bytes().splitlines()
    assert data["ok"] is True
    assert data["records"] == len(lines)
    assert data["plan_copy_matches"] is True


def _edit(lines: list[bytes]) -> list[bytes]:
    obj = json.loads(lines[MIDDLE - 1])
    obj["ts"] = "2000-01-01T00:00:00.000Z"
    lines[MIDDLE - 1] = json.dumps(obj, separators=(",", ":")).encode()
    return lines


def _remove(lines: list[bytes]) -> list[bytes]:
    del lines[MIDDLE - 1]
    return lines


def _reorder(lines: list[bytes]) -> list[bytes]:
    lines[MIDDLE - 1], lines[MIDDLE] = lines[MIDDLE], lines[MIDDLE - 1]
    return lines


def _insert(lines: list[bytes]) -> list[bytes]:
    lines.insert(MIDDLE, lines[MIDDLE - 1])
    return lines


def _truncate(lines: list[bytes]) -> list[bytes]:
    lines[-1] = lines[-1][: len(lines[-1]) // 2]
    return lines


@pytest.mark.parametrize(
    ("tamper", "first_bad", "newline_at_end"),
    [
        # an edited line keeps its own prev; the next line's prev no longer matches its hash
        (_edit, MIDDLE + 1, True),
        (_remove, MIDDLE, True),
        (_reorder, MIDDLE, True),
        (_insert, MIDDLE + 1, True),
        (_truncate, None, False),
    ],
    ids=["edited", "removed", "reordered", "inserted", "truncated"],
)
def test_tampered_journal_fails_verification_naming_the_first_bad_line(
    recorded: Path, tmp_path: Path, tamper: Tamper, first_bad: int | None, newline_at_end: bool
) -> None:
    state, journal = _copy(recorded, tmp_path)
    lines = journal.read_bytes().splitlines()
    count = len(lines)
    damaged = tamper(lines)
    journal.write_bytes(b"\n".join(damaged) + (b"\n" if newline_at_end else b""))
    code, out, data = _verify(state)
    expected = count if first_bad is None else first_bad  # a torn last line is the last line
    assert code == 5, out
    assert out.startswith(f"DAMAGED: line {expected}: "), out
    assert data["ok"] is False
    assert data["first_bad_line"] == expected


def test_verify_of_an_unknown_run_is_a_usage_error(recorded: Path) -> None:
    result = rollout("verify", "no-such-run", "--state-dir", recorded)
    assert result.returncode == 2
    assert "no run 'no-such-run'" in result.stderr
