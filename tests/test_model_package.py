"""The model package: its JSON Schema is pinned byte for byte, and every name still imports from `rollout.model`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rollout.model
from tests.helpers import Cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rollout" / "model"

# Every public name `rollout/model.py` defined before it became a package.
PUBLIC_NAMES = (
    "CHECK_KINDS",
    "NAME_PATTERN",
    "BakeDuration",
    "Bound",
    "Check",
    "CommandCheck",
    "CountOrPercent",
    "Delay",
    "DocumentSource",
    "Duration",
    "Environment",
    "FileSink",
    "FreezeWindow",
    "Guard",
    "Host",
    "HttpCheck",
    "MetadataCheck",
    "Model",
    "Name",
    "Notify",
    "ParityFact",
    "Plan",
    "ProbeDuration",
    "Reference",
    "SecretVar",
    "SshOptions",
    "Step",
    "Strategy",
    "TcpCheck",
    "VarValue",
    "Vars",
    "WaveSize",
    "WebhookSink",
)


def test_rollout_schema_prints_the_committed_schema_byte_for_byte(cli: Cli) -> None:
    # docs/plan.schema.json was generated before the model was split; key order counts too.
    result = cli("schema")

    assert result.code == 0
    assert result.out == (ROOT / "docs" / "plan.schema.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_public_model_name_imports_from_rollout_model(name: str) -> None:
    assert name in rollout.model.__all__
    assert getattr(rollout.model, name) is not None


def test_the_model_is_a_package_of_small_modules_each_saying_its_concern() -> None:
    modules = sorted(PACKAGE.glob("*.py"))

    assert {p.name for p in modules} >= {"__init__.py", "base.py", "checks.py", "steps.py", "hosts.py", "plan.py"}
    for path in modules:
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 450, path.name
        assert ast.get_docstring(ast.parse(text)), path.name
