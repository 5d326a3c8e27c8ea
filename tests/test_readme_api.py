"""The README's Python example runs as printed: a plan run from Python, every event printed, exit 0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import cli_env

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text("utf-8")
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->", text, re.S)
    assert match, "README.md has no api-example block"
    return match.group(1)


def test_the_readme_example_runs_a_plan_and_prints_each_event(tmp_path: Path) -> None:
    example = readme_example()
    assert len(example.strip().splitlines()) <= 10
    (tmp_path / "plans").mkdir()
    shutil.copy(REPO / "plans" / "hello.yaml", tmp_path / "plans" / "hello.yaml")
    proc = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["run.start"]
    assert "step.result h1 write-greeting ok" in lines
    assert "step.result h2 write-greeting ok" in lines
    assert lines[-2].split() == ["run.end", "succeeded"]
    assert lines[-1].startswith("succeeded exit 0 journal .rollout/runs/")
    assert (tmp_path / "hello-out" / "h1.txt").read_text() == "hello from h1\n"
    # the run it made is a run like any other: the CLI verifies it
    verified = subprocess.run(
        [sys.executable, "-m", "rollout", "verify", "last"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
