"""YAML plan files -> a validated Plan, with file:line:column on every error.

One concern a module: `locations` (marks, the source map, located errors), `marked_yaml`
(YAML -> data with marks; the only yaml importer in rollout/), `validation` (pydantic
errors -> PlanError), `loading` (bounded reading, includes, the digest, `load_plan`),
`render` (variables in scope for a host, and strings rendered for it) and `schema` (the
plan JSON Schema). Import from `rollout.planfile`; each name imports its module on first use,
so reading a plan's digest (verify) never builds the pydantic model.

It must never run anything or touch a target: loading a plan has no side effects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollout.errors import TemplateError as TemplateError
    from rollout.planfile.loading import MAX_PLAN_BYTES as MAX_PLAN_BYTES
    from rollout.planfile.loading import LoadedPlan as LoadedPlan
    from rollout.planfile.loading import load_plan as load_plan
    from rollout.planfile.loading import plan_digest as plan_digest
    from rollout.planfile.loading import plan_file_digest as plan_file_digest
    from rollout.planfile.locations import Loc as Loc
    from rollout.planfile.locations import Mark as Mark
    from rollout.planfile.locations import SourceMap as SourceMap
    from rollout.planfile.locations import error_at as error_at
    from rollout.planfile.locations import format_loc as format_loc
    from rollout.planfile.marked_yaml import MAX_DEPTH as MAX_DEPTH
    from rollout.planfile.marked_yaml import MAX_NODES as MAX_NODES
    from rollout.planfile.marked_yaml import MarkedDocument as MarkedDocument
    from rollout.planfile.marked_yaml import load_yaml_document as load_yaml_document
    from rollout.planfile.marked_yaml import parse_marked as parse_marked
    from rollout.planfile.render import BUILTIN_VARIABLES as BUILTIN_VARIABLES
    from rollout.planfile.render import REDACTED as REDACTED
    from rollout.planfile.render import SHELL_FIELDS as SHELL_FIELDS
    from rollout.planfile.render import Variables as Variables
    from rollout.planfile.render import check_overrides as check_overrides
    from rollout.planfile.render import host_variables as host_variables
    from rollout.planfile.render import plan_variable_names as plan_variable_names
    from rollout.planfile.render import render_model as render_model
    from rollout.planfile.schema import plan_json_schema as plan_json_schema
    from rollout.planfile.validation import MAX_REPORTED_ERRORS as MAX_REPORTED_ERRORS
    from rollout.planfile.validation import PlanInvalid as PlanInvalid
    from rollout.planfile.validation import translate_validation_error as translate_validation_error

_HOMES = {
    "rollout.errors": ("TemplateError",),
    "rollout.planfile.loading": ("MAX_PLAN_BYTES", "LoadedPlan", "load_plan", "plan_digest", "plan_file_digest"),
    "rollout.planfile.locations": ("Loc", "Mark", "SourceMap", "error_at", "format_loc"),
    "rollout.planfile.marked_yaml": ("MAX_DEPTH", "MAX_NODES", "MarkedDocument", "load_yaml_document", "parse_marked"),
    "rollout.planfile.render": (
        "BUILTIN_VARIABLES",
        "REDACTED",
        "SHELL_FIELDS",
        "Variables",
        "check_overrides",
        "host_variables",
        "plan_variable_names",
        "render_model",
    ),
    "rollout.planfile.schema": ("plan_json_schema",),
    "rollout.planfile.validation": ("MAX_REPORTED_ERRORS", "PlanInvalid", "translate_validation_error"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "BUILTIN_VARIABLES",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_PLAN_BYTES",
    "MAX_REPORTED_ERRORS",
    "REDACTED",
    "SHELL_FIELDS",
    "LoadedPlan",
    "Loc",
    "Mark",
    "MarkedDocument",
    "PlanInvalid",
    "SourceMap",
    "TemplateError",
    "Variables",
    "check_overrides",
    "error_at",
    "format_loc",
    "host_variables",
    "load_plan",
    "load_yaml_document",
    "parse_marked",
    "plan_digest",
    "plan_file_digest",
    "plan_json_schema",
    "plan_variable_names",
    "render_model",
    "translate_validation_error",
]


def __getattr__(name: str) -> Any:
    """Import a name's module on first use (PEP 562)."""
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'rollout.planfile' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
