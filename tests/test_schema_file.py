"""The committed plan schema (docs/plan.schema.json) is what `rollout schema` prints."""

import json
from pathlib import Path

from rollout.planfile import plan_json_schema

ROOT = Path(__file__).resolve().parents[1]


def test_committed_schema_matches_the_model() -> None:
    committed = json.loads((ROOT / "docs" / "plan.schema.json").read_text())
    assert committed == plan_json_schema(), "regenerate with: rollout schema > docs/plan.schema.json"
