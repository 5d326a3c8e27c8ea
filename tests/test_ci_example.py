"""The CI example cannot rot: run the GitHub Actions workflow's commands, job by job, for real.

Each job runs in a directory of its own (what a fresh runner checks out: examples/ and
plans/), with its own state directory, so evidence reaches the production job only through
the artefacts the workflow uploads and downloads, as on a real CI system. The example
exchange stands in for demo and production (two local fleets on the workflow's ports, under
a temporary CI_ROOT). The GitLab pipeline must run the same commands in the same order.

Outcomes a pipeline owner cares about: every step passes, demo was rehearsed with its
rollback, the gate opened with one JUnit case per condition, and production ends on the
release, run from the pinned plan.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO, cli_env

CI = REPO / "examples" / "ci"
FLEET = REPO / "examples" / "exchange" / "fleet.py"
RELEASE = REPO / "examples" / "exchange" / "metadata" / "v2.json"
INSTALL = "pip install ."


def _workflow() -> dict[str, Any]:
    return dict(yaml.safe_load((CI / "github-actions.yml").read_text()))


def _job_order(jobs: dict[str, Any]) -> list[str]:
    """Jobs in an order that honours `needs` (the order they are written in, checked)."""
    done: list[str] = []
    for name, job in jobs.items():
        needs = job.get("needs", [])
        assert set([needs] if isinstance(needs, str) else needs) <= set(done), f"{name} needs a later job"
        done.append(name)
    return done


def _github_commands() -> list[str]:
    jobs = _workflow()["jobs"]
    return [step["run"] for name in _job_order(jobs) for step in jobs[name]["steps"] if "run" in step]


def test_gitlab_runs_the_same_commands_in_the_same_order() -> None:
    gitlab = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    stages = gitlab["stages"]
    jobs = sorted(
        ((name, job) for name, job in gitlab.items() if isinstance(job, dict) and "stage" in job),
        key=lambda item: stages.index(item[1]["stage"]),
    )
    commands = [line for _, job in jobs for line in job["script"]]
    assert gitlab["default"]["before_script"] == [INSTALL]
    assert commands == [c for c in _github_commands() if c != INSTALL]
    assert gitlab["variables"] == _workflow()["env"]


@pytest.fixture
def ci_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "ci"
    yield root
    for env in ("demo", "production"):  # the runners' fleets; a real runner is thrown away
        if (root / env).exists():
            subprocess.run([sys.executable, str(FLEET), "stop", "--root", str(root / env)], check=False)


def _checkout(job_dir: Path) -> None:
    for part in ("examples", "plans"):
        shutil.copytree(REPO / part, job_dir / part, ignore=shutil.ignore_patterns("__pycache__", ".rollout"))


def _run_step(step: dict[str, Any], job_dir: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", step["run"]],
        cwd=job_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    where = f"step {step.get('name', step['run'])!r} in {job_dir.name}"
    assert result.returncode == 0, f"{where} exited {result.returncode}\n{result.stdout}\n{result.stderr}"


def _artefact(step: dict[str, Any], job_dir: Path, artefacts: dict[str, Path], store: Path) -> None:
    action, options = step["uses"].split("@")[0], step.get("with", {})
    if action == "actions/upload-artifact":
        source = job_dir / options["path"]
        kept = store / options["name"]
        if source.is_dir():
            shutil.copytree(source, kept)
        else:
            kept.mkdir(parents=True)
            shutil.copy2(source, kept / source.name)
        artefacts[options["name"]] = kept
    elif action == "actions/download-artifact":
        shutil.copytree(artefacts[options["name"]], job_dir / options["path"], dirs_exist_ok=True)
    elif action == "actions/checkout":
        _checkout(job_dir)
    else:
        assert action == "actions/setup-python", f"the test does not know {action}"


def test_the_github_workflow_rehearses_gates_and_upgrades_production(tmp_path: Path, ci_root: Path) -> None:
    workflow = _workflow()
    env = {**cli_env(), **workflow["env"], "CI_ROOT": str(ci_root)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `rollout`, `python3`
    artefacts: dict[str, Path] = {}
    store = tmp_path / "artefacts"
    jobs = workflow["jobs"]
    for name in _job_order(jobs):
        job_dir = tmp_path / "jobs" / name
        job_dir.mkdir(parents=True)
        for step in jobs[name]["steps"]:
            if "uses" in step:
                _artefact(step, job_dir, artefacts, store)
            elif step["run"] != INSTALL:  # rollout is installed in this test's environment already
                _run_step(step, job_dir, env)

    rehearsal = json.loads((tmp_path / "jobs" / "rehearse" / "demo-run.json").read_text())
    assert rehearsal["outcome"] == "succeeded"
    assert rehearsal["exit_code"] == 0
    production = json.loads((tmp_path / "jobs" / "production" / "production-run.json").read_text())
    assert production["outcome"] == "succeeded", production
    assert production["environment"] == "production"
    assert production["plan"]["digest"] == rehearsal["plan"]["digest"], "production ran the rehearsed plan"

    gate = ET.parse(tmp_path / "jobs" / "production" / "gate.xml").getroot()
    cases = gate.findall(".//testcase")
    names = [c.get("name") for c in cases]
    assert {"rehearsed", "rollback-rehearsed", "parity"} <= set(names), names
    assert not gate.findall(".//failure"), "the gate opened"

    release = json.loads(RELEASE.read_text())
    for env_name in ("demo", "production"):
        for host in ("gw-1", "gw-2", "gw-3", "gw-4"):
            live = json.loads((ci_root / env_name / host / "metadata.json").read_text())
            assert live == release, f"{env_name}/{host} does not serve the release"
