"""Parity facts in the plan language: sources, expectations, and errors at file:line."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rollout import api
from rollout.api.parity import gather
from rollout.errors import PlanError
from rollout.model.hosts import ParityFact

HEAD = """\
name: facts
environments:
  demo:
    vars: { root: ROOT }
    facts: { region: eu }
    hosts: { h1: {}, h2: {} }
  production:
    vars: { root: ROOT }
    facts: { region: eu }
    hosts: { h1: {} }
steps:
  - { name: s, run: 'true', rollback: 'true' }
parity:
"""


def _plan(tmp_path: Path, facts: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(HEAD.replace("ROOT", str(tmp_path)) + facts)
    return path


def test_a_fact_with_two_sources_is_refused_at_its_line(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "  - name: build\n    command: 'true'\n    metadata: { file: x.json }\n")

    checked = api.validate(plan)

    assert not checked.valid
    problem = checked.problems[0]
    assert (problem.file, problem.line) == (str(plan), 14)
    assert "at most one of command, http, metadata (found command, metadata)" in problem.message


def test_a_template_naming_an_unknown_variable_is_refused_at_its_line(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "  - name: db\n    command: hostname\n    template: 'db.{{ enviroment }}'\n")

    checked = api.validate(plan)

    assert not checked.valid
    problem = checked.problems[0]
    assert (problem.file, problem.line) == (str(plan), 16)
    assert "enviroment" in problem.message


def test_template_and_expect_differ_cannot_go_together(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "  - name: db\n    command: hostname\n    template: x\n    expect: differ\n")

    with pytest.raises(PlanError, match="cannot also 'expect: differ'"):
        api.load(plan)


def test_a_fact_knows_its_source_and_how_it_is_compared() -> None:
    assert ParityFact(name="a").source == "declared"
    assert ParityFact(name="a", command="true", expect="differ").mode == "differ"
    fact = ParityFact.model_validate({"name": "a", "http": {"url": "http://x/", "json": "$.build"}, "template": "t"})
    assert (fact.source, fact.mode, fact.timeout) == ("http", "template", 5.0)


def test_declared_facts_are_read_from_each_environment(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "  - name: region\n  - name: zone\n")

    report = api.check_parity(plan, ["demo", "production"])

    region = report.comparison.facts[0]
    assert not region.drift
    assert region.values == {"demo": {"eu": ("h1", "h2")}, "production": {"eu": ("h1",)}}
    zone = report.comparison.facts[1]
    assert zone.drift
    assert "has no `facts: {zone: ...}`" in zone.reasons[0]


def test_an_abort_ends_the_gathering_at_once_and_names_what_was_not_gathered(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path, "  - name: slow\n    command: 'touch {{ root }}/{{ host }}.started; sleep 30'\n    timeout: 60s\n"
    )
    abort = threading.Event()
    result: dict[str, object] = {}

    def gather_in_background() -> None:
        result["facts"] = gather(plan, "demo", abort=abort)

    started = time.monotonic()
    worker = threading.Thread(target=gather_in_background)
    worker.start()
    wait_for_file_created(tmp_path / "h1.started")
    abort.set()
    worker.join(timeout=10)

    assert not worker.is_alive()
    assert time.monotonic() - started < 10
    slow = result["facts"]["slow"]  # type: ignore[index]
    assert slow.values == {}
    assert set(slow.errors) == {"h1", "h2"}
    assert all("interrupted" in why for why in slow.errors.values())


def wait_for_file_created(path: Path) -> None:
    """Until a file exists (an empty one: a command touched it)."""
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
