"""The plan JSON Schema, generated from the model (for editors and CI)."""

from __future__ import annotations

from typing import Any

from rollout.model import Plan


def plan_json_schema() -> dict[str, Any]:
    """The plan JSON Schema, generated from the model (for editors and CI)."""
    schema = Plan.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "rollout plan",
    }
