"""The base plan model and the field types every plan model shares.

Durations with their bounds, host counts and percentages, wave sizes, names, and variables
(plain or secret). Pure data with validation, no I/O.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from rollout.units import (
    DURATION_PATTERN,
    HOUR,
    MIN_DURATION,
    WEEK,
    Percent,
    format_duration,
    parse_duration,
    parse_percent,
)


def _duration_schema(minimum: float, maximum: float) -> dict[str, Any]:
    shortest = "0s" if minimum == 0 else format_duration(minimum)
    return {
        "anyOf": [
            {"type": "string", "pattern": DURATION_PATTERN},
            {"type": "number", "minimum": minimum, "maximum": maximum},
        ],
        "description": f"a duration: 500ms, 10s, 5m, 1h (or seconds as a number), from {shortest} to {format_duration(maximum)}",
    }


# The four kinds of duration in a plan, each with its bounds (README, "Durations"):
# Duration: how long one step (or its rollback) may run, 1ms..168h (a week).
Duration = Annotated[
    float,
    BeforeValidator(partial(parse_duration, minimum=MIN_DURATION, maximum=WEEK)),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_duration_schema(MIN_DURATION, WEEK)),
]
# ProbeDuration: a timeout or period of one probe (check, guard, connect, webhook), 1ms..1h.
ProbeDuration = Annotated[
    float,
    BeforeValidator(partial(parse_duration, minimum=MIN_DURATION, maximum=HOUR)),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_duration_schema(MIN_DURATION, HOUR)),
]
# Delay: a pause between attempts, where zero means "at once", 0..1h.
Delay = Annotated[
    float,
    BeforeValidator(partial(parse_duration, minimum=0.0, maximum=HOUR)),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_duration_schema(0.0, HOUR)),
]
# Bake: how long guards must stay green after a wave, where zero means no bake, 0..168h.
BakeDuration = Annotated[
    float,
    BeforeValidator(partial(parse_duration, minimum=0.0, maximum=WEEK)),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_duration_schema(0.0, WEEK)),
]


def _parse_count_or_percent(value: object) -> int | Percent:
    if isinstance(value, bool):
        raise ValueError("expected a host count or a percentage, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a count cannot be negative")
        return value
    return parse_percent(value)


CountOrPercent = Annotated[
    int | Percent,
    BeforeValidator(_parse_count_or_percent),
    PlainSerializer(lambda v: v if isinstance(v, int) else str(v)),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
            ]
        }
    ),
]


def _parse_wave(value: object) -> int | Percent | str:
    if isinstance(value, bool):
        raise ValueError("a wave is a host count, a percentage or a group name, not a boolean")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"a wave of {value} hosts is empty: use a count of at least 1")
        return value
    if isinstance(value, str):
        if "%" in value:
            return parse_percent(value)
        if re.fullmatch(r"[A-Za-z_][\w.-]*", value):
            return value
    raise ValueError(f"a wave is a host count (1), a percentage (25%) or a group name, got {value!r}")


WaveSize = Annotated[
    int | Percent | str,
    BeforeValidator(_parse_wave),
    PlainSerializer(lambda v: str(v) if isinstance(v, Percent) else v),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
                {"type": "string", "description": "a group name"},
            ]
        }
    ),
]

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]


class Model(BaseModel):
    """Base of every plan model: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class SecretVar(Model):
    """A variable whose value never appears in the journal, reports or notifications."""

    value: str | None = None
    env: str | None = Field(default=None, description="read the value from this environment variable")
    secret: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> SecretVar:
        if (self.value is None) == (self.env is None):
            raise ValueError("a secret variable needs exactly one of 'value' or 'env'")
        return self


VarValue = str | int | float | bool | SecretVar


def _check_var_names(value: dict[str, VarValue]) -> dict[str, VarValue]:
    for name in value:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"variable name {name!r} must be letters, digits and _")
    return value


Vars = Annotated[dict[str, VarValue], AfterValidator(_check_var_names)]
