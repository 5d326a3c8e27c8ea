"""The plain output (CI logs, pipes): one line per event and never a control character.

A failing command's stderr is quoted in the events; if it holds colour codes or cursor
moves, they must not reach the log or the terminal that shows it.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import rollout, run_args, write_plan


def test_a_commands_escape_sequences_never_reach_the_plain_output(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        {
            "name": "plain",
            "environments": {"demo": {"rehearsal": True, "connection": "local", "hosts": {"h1": {}}}},
            "steps": [
                {
                    "name": "colourful",
                    "run": r"printf '\033[31mred\033[0m \033[2J\033]0;title\007 :smile: bell\a' >&2; exit 3",
                    "rollback": "true",
                }
            ],
        },
    )
    result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    failed = [line for line in lines if "colourful" in line and "exited 3" in line]
    assert failed, result.stdout
    assert "red" in failed[0]
    assert ":smile:" in failed[0]  # printed as written, not turned into an emoji
    for line in lines + result.stderr.splitlines():
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in line), repr(line)
