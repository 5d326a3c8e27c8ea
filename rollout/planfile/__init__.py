"""YAML plan files -> a validated Plan, with file:line:column on every error.

One concern a module: `locations` (marks, the source map, located errors), `marked_yaml`
(YAML -> data with marks; the only yaml importer in rollout/), `validation` (pydantic
errors -> PlanError), `loading` (bounded reading, includes, the digest, `load_plan`),
`render` (variables in scope for a host, and strings rendered for it) and `schema` (the
plan JSON Schema). Import from `rollout.planfile`.

It must never run anything or touch a target: loading a plan has no side effects.
"""

from rollout.errors import TemplateError
from rollout.planfile.loading import MAX_PLAN_BYTES, LoadedPlan, load_plan, plan_digest, plan_file_digest
from rollout.planfile.locations import Loc, Mark, SourceMap, error_at, format_loc
from rollout.planfile.marked_yaml import MAX_DEPTH, MAX_NODES, MarkedDocument, load_yaml_document, parse_marked
from rollout.planfile.render import (
    BUILTIN_VARIABLES,
    REDACTED,
    SHELL_FIELDS,
    Variables,
    check_overrides,
    host_variables,
    plan_variable_names,
    render_model,
)
from rollout.planfile.schema import plan_json_schema
from rollout.planfile.validation import MAX_REPORTED_ERRORS, PlanInvalid, translate_validation_error

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
