"""A secret given on the command line stays secret: redacted everywhere, never stored, asked for again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rollout.cli.app import run_cli

SECRET = "cmdline-s3cret-value"


def _plan(tmp_path: Path) -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""
name: secret-override
vars:
  token: {{ value: placeholder-token, secret: true }}
environments:
  lab:
    rehearsal: true
    hosts: {{ h1: {{}} }}
steps:
  - name: use-token
    run: echo using {{{{ token }}}} && touch {tmp_path}/done
    rollback: rm -f {tmp_path}/done
"""
    )
    return plan


def test_a_secret_overridden_with_var_is_redacted_and_not_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    code = run_cli(["run", str(_plan(tmp_path)), "--env", "lab", "--state-dir", str(state), "--var", f"token={SECRET}"])
    assert code == 0
    assert (tmp_path / "done").exists()
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    run_dir = next((state / "runs").iterdir())
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["vars"] == {"token": "***"}
    assert meta["redacted_vars"] == ["token"]


def test_recover_asks_again_for_a_secret_var_it_could_not_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    plan = _plan(tmp_path)
    assert run_cli(["run", str(plan), "--env", "lab", "--state-dir", str(state), "--var", f"token={SECRET}"]) == 0
    run_dir = next((state / "runs").iterdir())
    # make the run look like the orchestrator died after the step: drop everything after its result
    journal = run_dir / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if b'"kind":"step.result"' in line) + 1
    journal.write_bytes(b"".join(lines[:cut]))
    capsys.readouterr()
    assert run_cli(["recover", run_dir.name, "--state-dir", str(state)]) == 2
    assert "--var token=" in capsys.readouterr().err
    assert (tmp_path / "done").exists()
    code = run_cli(["recover", run_dir.name, "--state-dir", str(state), "--var", f"token={SECRET}"])
    assert code == 1
    assert not (tmp_path / "done").exists()
    assert SECRET not in journal.read_text()
