"""The generated fast path and jsonschema agree on every document.

Invariant: for every schema in the subset the fast path compiles, and every JSON
document, the generated checker says "valid" exactly when jsonschema's
`Draft202012Validator.is_valid` does, and `CompiledSchema.violations` names the same
(path, keyword) pairs as jsonschema's `iter_errors`. The fast path reports no paths of its
own, so its verdict is what is compared; the report is compared as a whole.

Hypothesis draws schemas from the supported keywords (types, enum/const, required,
properties, additionalProperties, items, size and numeric limits, pattern, `$ref`s into
`$defs`), then documents drawn to satisfy them, and the same documents mutated (a value
replaced, a key dropped or added) so that about half are invalid. `make test` runs a
fixed set of examples (ROLLOUT_FUZZ_EXAMPLES, default 150, derandomized); `make fuzz`
draws many more, fresh.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rollout.checks.metadata import compile_schema, json_path
from rollout.checks.metadata.fastschema import compile_fast_check

pytestmark = pytest.mark.fuzz

DEFAULT_EXAMPLES = 150
EXAMPLES = int(os.environ.get("ROLLOUT_FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES)))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=EXAMPLES <= DEFAULT_EXAMPLES,  # the bounded run in `make test` is the same every time
)

NAMES = ["a", "b", "c", "id"]
TYPES = ["object", "array", "string", "boolean", "null", "number", "integer"]
PATTERNS = ["^[a-z]", "[0-9]$", "^x*$", "b"]
# Integral floats matter: 2.0 is an integer to JSON Schema, and True is not 1.
NUMBERS = st.sampled_from([-2, -1, 0, 1, 2, 3, 0.5, -1.5, 2.0, 1.0, 0.0, 10**20])
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.sampled_from(["", "a", "b1", "xx", "A", "9"]))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES), inner, max_size=3),
    max_leaves=6,
)

# --------------------------------------------------------------------------- schemas


def _limits(keywords: list[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keywords), values, max_size=2)


LEAF_SCHEMAS: st.SearchStrategy[Any] = st.one_of(
    st.booleans(),
    st.builds(lambda t: {"type": t}, st.sampled_from(TYPES)),
    st.builds(lambda ts: {"type": ts}, st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True)),
    st.builds(lambda xs: {"enum": xs}, st.lists(JSON_VALUES, min_size=1, max_size=4)),
    st.builds(lambda x: {"const": x}, JSON_VALUES),
    st.builds(
        lambda typed, pattern, sizes: {**({"type": "string"} if typed else {}), **pattern, **sizes},
        st.booleans(),
        st.sampled_from([{}, *({"pattern": p} for p in PATTERNS)]),
        _limits(["minLength", "maxLength"], st.integers(0, 3)),
    ),
    st.builds(
        lambda t, limits: {**({"type": t} if t else {}), **limits},
        st.sampled_from([None, "number", "integer"]),
        _limits(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"], NUMBERS),
    ),
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    objects = st.builds(
        lambda typed, props, required, extra, sizes: {
            **({"type": "object"} if typed else {}),
            "properties": props,
            **({"required": required} if required else {}),
            **({} if extra is None else {"additionalProperties": extra}),
            **sizes,
        },
        st.booleans(),
        st.dictionaries(st.sampled_from(NAMES), inner, max_size=3),
        st.lists(st.sampled_from(NAMES), max_size=2, unique=True),
        st.one_of(st.none(), st.just(False), inner),
        _limits(["minProperties", "maxProperties"], st.integers(0, 3)),
    )
    arrays = st.builds(
        lambda typed, items, sizes: {**({"type": "array"} if typed else {}), "items": items, **sizes},
        st.booleans(),
        inner,
        _limits(["minItems", "maxItems"], st.integers(0, 3)),
    )
    return objects | arrays


NODE_SCHEMAS = st.recursive(LEAF_SCHEMAS, _containers, max_leaves=6)


@st.composite
def schemas(draw: st.DrawFn) -> Any:
    """A schema of the fast subset; sometimes with a `$defs` entry that the body refers to (recursively too)."""
    body = draw(NODE_SCHEMAS)
    if not draw(st.booleans()):
        return body
    shared = draw(NODE_SCHEMAS)
    if isinstance(shared, dict) and draw(st.booleans()):
        # a recursive definition: a tree whose children are trees
        shared = {**shared, "properties": {**shared.get("properties", {}), "c": {"$ref": "#/$defs/r"}}}
    return {
        "$defs": {"r": shared},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/r"}, "b": {"type": "array", "items": {"$ref": "#/$defs/r"}}, "c": body},
    }


# --------------------------------------------------------------------------- documents


def _resolve(schema: Any, root: Any) -> Any:
    if isinstance(schema, dict) and "$ref" in schema:
        return root["$defs"]["r"]
    return schema


def _instance(draw: st.DrawFn, schema: Any, root: Any, depth: int = 0) -> Any:
    """A value drawn to satisfy `schema` where that is easy; anything else is fine too (the test compares verdicts)."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > 3:
        return draw(JSON_VALUES)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return draw(st.sampled_from(schema["enum"]))
    kind = schema.get("type")
    kind = draw(st.sampled_from(kind)) if isinstance(kind, list) else kind
    if kind == "object" or "properties" in schema:
        return _object_instance(draw, schema, root, depth)
    if kind == "array" or "items" in schema:
        count = draw(st.integers(schema.get("minItems", 0), max(schema.get("minItems", 0), 3)))
        return [_instance(draw, schema.get("items", True), root, depth + 1) for _ in range(count)]
    return draw(_scalar_instances(kind, schema))


def _object_instance(draw: st.DrawFn, schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    properties, required = schema.get("properties", {}), schema.get("required", [])
    chosen = [n for n in sorted(set(properties) | set(required)) if n in required or draw(st.booleans())]
    return {n: _instance(draw, properties.get(n, True), root, depth + 1) for n in chosen}


def _scalar_instances(kind: str | None, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if kind == "string" or "pattern" in schema or "minLength" in schema:
        return st.sampled_from(["a", "ab9", "x", "xx", "b", "a1", ""])
    if kind in ("number", "integer") or "minimum" in schema or "maximum" in schema:
        return NUMBERS
    return {"boolean": st.booleans(), "null": st.none()}.get(kind or "", JSON_VALUES)


def _mutate(draw: st.DrawFn, value: Any) -> Any:
    """The value with one place changed: replaced, or a key dropped or added, or an element appended."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(value)))
        action = draw(st.sampled_from(["descend", "drop"]))
        if action == "drop":
            return {k: v for k, v in value.items() if k != name}
        return {**value, name: _mutate(draw, value[name])}
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], _mutate(draw, value[i]), *value[i + 1 :]]
    if isinstance(value, dict) and draw(st.booleans()):
        return {**value, draw(st.sampled_from([*NAMES, "zz"])): draw(JSON_VALUES)}
    if isinstance(value, list) and draw(st.booleans()):
        return [*value, draw(JSON_VALUES)]
    return draw(JSON_VALUES)


@st.composite
def schemas_and_documents(draw: st.DrawFn) -> tuple[Any, Any]:
    """A schema and a document drawn for it, mutated half of the time."""
    schema = draw(schemas())
    document = _instance(draw, schema, schema)
    if draw(st.booleans()):
        document = _mutate(draw, document)
    # Through JSON text, as every document arrives: plain dict/list/str/int/float/bool/None.
    return schema, json.loads(json.dumps(document))


# --------------------------------------------------------------------------- the property


@FUZZ
@given(schemas_and_documents())
def test_the_fast_path_and_jsonschema_give_the_same_verdict(case: tuple[Any, Any]) -> None:
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    schema, document = case
    Draft202012Validator.check_schema(schema)
    fast = compile_fast_check(schema)
    assert fast is not None, f"the generator left the fast subset: {schema}"
    validator = Draft202012Validator(schema)
    valid = validator.is_valid(document)
    event("valid" if valid else "invalid")
    assert fast(document) is valid, f"schema {schema}\ndocument {document}"
    expected = sorted((json_path(e.absolute_path), f"schema:{e.validator}") for e in validator.iter_errors(document))
    got = sorted((v.path, v.rule) for v in compile_schema(schema).violations(document))
    assert got == expected


def test_the_generator_draws_valid_and_invalid_documents_alike() -> None:
    """The property above only means something if both verdicts occur often."""
    from jsonschema import Draft202012Validator

    verdicts: list[bool] = []

    @settings(max_examples=100, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(schemas_and_documents())
    def collect(case: tuple[Any, Any]) -> None:
        verdicts.append(Draft202012Validator(case[0]).is_valid(case[1]))

    collect()
    assert 0.25 < sum(verdicts) / len(verdicts) < 0.85, sum(verdicts)


@pytest.mark.parametrize(
    ("schema", "document"),
    [
        ({"type": "integer"}, 2.0),
        ({"type": "integer"}, True),
        ({"enum": [1]}, True),
        ({"const": 1}, 1.0),
        ({"const": [1]}, [1.0]),
        ({"enum": [[True], {"a": [0.0]}]}, [1]),
        ({"enum": [[True], {"a": [0.0]}]}, {"a": [0]}),
        ({"const": {"a": False}}, {"a": 0}),
        ({"maxLength": 1}, "ab"),
        ({"minimum": 0}, "text"),
        ({"required": ["a"]}, []),
    ],
)
def test_edge_values_get_the_same_verdict(schema: Any, document: Any) -> None:
    from jsonschema import Draft202012Validator

    fast = compile_fast_check(schema)
    assert fast is not None
    assert fast(document) is Draft202012Validator(schema).is_valid(document)
