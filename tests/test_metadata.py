"""Metadata validation: parsing, schema, invariants, change budget, read-back, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.checks.metadata import (
    Bound,
    Budget,
    Invariants,
    MetadataReport,
    Violation,
    canonical_bytes,
    check_budget,
    check_invariants,
    compile_schema,
    diff_records,
    document_digest,
    json_path,
    parse_document,
    parse_key_path,
    read_back,
    schema_violations,
    validate_document,
)
from rollout.errors import MetadataError

METADATA = Path(__file__).resolve().parents[1] / "examples" / "exchange" / "metadata"
KEY = "instruments[].symbol"


def load(name: str) -> Any:
    return parse_document((METADATA / name).read_bytes(), fmt="json", name=name)


def doc(*records: dict[str, Any], markets: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"version": 1, "instruments": list(records), "markets": markets or []}


def inst(symbol: str, **fields: Any) -> dict[str, Any]:
    return {"symbol": symbol, "tick_size": 0.01, "status": "trading", **fields}


# ----------------------------------------------------------------------------- parsing


def test_json_is_parsed() -> None:
    assert parse_document(b'{"a": [1, 2.5, "x"]}', fmt="json", name="d") == {"a": [1, 2.5, "x"]}


@pytest.mark.parametrize(
    ("data", "fmt", "expected"),
    [
        (b'{\n  "a": 1,\n  "b": }', "json", "m.json:3:8: invalid JSON"),
        (b'{"a": NaN}', "json", "NaN is not valid JSON"),
        (b'{"a": 1, "a": 2}', "json", "duplicate key 'a'"),
        (b"\xff\xfe", "json", "not UTF-8"),
        (b"a: 1\na: 2\n", "yaml", "m.json"),
        (b"a: [1, 2\n", "yaml", "m.json"),
    ],
)
def test_unreadable_documents_raise_metadata_error_naming_the_source(data: bytes, fmt: Any, expected: str) -> None:
    with pytest.raises(MetadataError, match=expected.replace("(", r"\(")) as info:
        parse_document(data, fmt=fmt, name="m.json")
    assert "m.json" in str(info.value)


def test_yaml_and_auto_detection() -> None:
    assert parse_document(b"a:\n  - 1\n  - x\n", fmt="yaml", name="y") == {"a": [1, "x"]}
    assert parse_document(b"a: 1\n", fmt="auto", name="y") == {"a": 1}
    assert parse_document(b'  ["j"]', fmt="auto", name="j") == ["j"]


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    assert canonical_bytes({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'.encode()


def test_canonical_bytes_reject_non_json_values() -> None:
    with pytest.raises(MetadataError):
        canonical_bytes({"a": float("nan")})


# ----------------------------------------------------------------------------- key paths


@pytest.mark.parametrize(
    ("path", "tokens"),
    [
        ("version", ("version",)),
        ("instruments[].symbol", ("instruments", "[]", "symbol")),
        ("a.b[].c", ("a", "b", "[]", "c")),
        ("$.m[][].x", ("m", "[]", "[]", "x")),
    ],
)
def test_key_paths_parse(path: str, tokens: tuple[str, ...]) -> None:
    assert tuple(str(t) for t in parse_key_path(path)) == tokens


@pytest.mark.parametrize("path", ["", "a..b", "a[", "[].x", "a[0].b", "a.[]"])
def test_malformed_key_paths_are_refused(path: str) -> None:
    with pytest.raises(MetadataError):
        parse_key_path(path)


def test_json_paths_quote_odd_names() -> None:
    assert json_path(["instruments", 17, "tick_size"]) == "$.instruments[17].tick_size"
    assert json_path(["a b", 0]) == '$["a b"][0]'


# ----------------------------------------------------------------------------- schema

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["instruments"],
    "properties": {
        "instruments": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["symbol", "tick_size"],
                "properties": {
                    "symbol": {"type": "string", "minLength": 1},
                    "tick_size": {"type": "number", "exclusiveMinimum": 0},
                },
            },
        }
    },
}


def test_schema_reports_every_violation_with_path_and_keyword_in_path_order() -> None:
    bad = {
        "instruments": [
            inst("A"),
            inst("B", tick_size=0),
            *[inst(f"C{i}") for i in range(8)],
            {"symbol": ""},
        ]
    }
    assert schema_violations(bad, SCHEMA) == [
        Violation(
            "$.instruments[1].tick_size",
            "schema:exclusiveMinimum",
            "0 is less than or equal to the minimum of 0",
        ),
        Violation("$.instruments[10]", "schema:required", "'tick_size' is a required property"),
        Violation("$.instruments[10].symbol", "schema:minLength", "'' should be non-empty"),
    ]


def test_a_valid_document_has_no_schema_violations() -> None:
    assert schema_violations(doc(inst("A"), inst("B")), compile_schema(SCHEMA)) == []


def test_an_invalid_schema_raises_metadata_error() -> None:
    with pytest.raises(MetadataError, match="invalid JSON Schema"):
        compile_schema({"type": "no-such-type"})


def test_keywords_outside_the_fast_subset_still_validate() -> None:
    schema = {"oneOf": [{"type": "string"}, {"type": "integer", "multipleOf": 3}]}
    assert schema_violations("x", schema) == []
    assert schema_violations(9, schema) == []
    assert [v.rule for v in schema_violations(4, schema)] == ["schema:oneOf"]


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-5, 5), st.text(max_size=3))
RECORDS = st.dictionaries(st.sampled_from(["symbol", "tick_size", "status", "extra"]), JSON_SCALARS, max_size=4)
FAST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/r"}},
    },
    "$defs": {
        "r": {
            "type": "object",
            "required": ["symbol"],
            "additionalProperties": False,
            "properties": {
                "symbol": {"type": "string", "pattern": "^[a-z]", "maxLength": 2},
                "tick_size": {"type": ["number", "null"], "minimum": 0, "exclusiveMaximum": 3},
                "status": {"enum": ["trading", 1, None, True]},
                "extra": {"type": "integer"},
            },
        }
    },
}


@settings(max_examples=300, deadline=None)
@given(st.lists(RECORDS, max_size=4))
def test_fast_schema_check_agrees_with_jsonschema(records: list[dict[str, Any]]) -> None:
    from jsonschema import Draft202012Validator

    document = {"items": records}
    expected = sorted(
        (json_path(e.absolute_path), e.validator) for e in Draft202012Validator(FAST_SCHEMA).iter_errors(document)
    )
    got = sorted((v.path, v.rule.removeprefix("schema:")) for v in schema_violations(document, FAST_SCHEMA))
    assert got == expected


# ----------------------------------------------------------------------------- invariants

INVARIANT_CASES: list[tuple[str, Any, Invariants, list[str]]] = [
    (
        "duplicate symbol names both records",
        doc(inst("A"), inst("B"), inst("A")),
        Invariants(unique=(KEY,)),
        ["$.instruments[2].symbol: duplicate value 'A' (first at $.instruments[0].symbol)"],
    ),
    (
        "true and 1 are different values",
        {"x": [{"k": True}, {"k": 1}]},
        Invariants(unique=("x[].k",)),
        [],
    ),
    (
        "dangling market reference",
        doc(inst("A"), markets=[{"instrument": "A"}, {"instrument": "XRP-EUR"}]),
        Invariants(references=(("markets[].instrument", KEY),)),
        ["$.markets[1].instrument: 'XRP-EUR' is not among instruments[].symbol"],
    ),
    (
        "a null reference is an absent optional one",
        doc(inst("A"), markets=[{"instrument": None}]),
        Invariants(references=(("markets[].instrument", KEY),)),
        [],
    ),
    (
        "empty and missing values",
        {"instruments": [], "name": ""},
        Invariants(non_empty=("instruments", "name", "owner")),
        ["$.instruments: is empty ([])", "$.name: is empty ('')", "$.owner: missing"],
    ),
    (
        "non-empty record fields",
        doc(inst("A", status=""), {"tick_size": 1}),
        Invariants(non_empty=("instruments[].status",)),
        ["$.instruments[0].status: is empty ('')", "$.instruments[1].status: missing"],
    ),
    (
        "numeric bounds",
        doc(inst("A", tick_size=0), inst("B", tick_size=5), inst("C", tick_size="x")),
        Invariants(bounds=(Bound("instruments[].tick_size", exclusive_minimum=0, maximum=1),)),
        [
            "$.instruments[0].tick_size: 0 is not > 0",
            "$.instruments[1].tick_size: 5 is not <= 1",
            "$.instruments[2].tick_size: 'x' is not a number",
        ],
    ),
    (
        "allowed values",
        doc(inst("A", status="halted"), inst("B", status="gone")),
        Invariants(bounds=(Bound("instruments[].status", one_of=("trading", "halted")),)),
        ["$.instruments[1].status: 'gone' is not one of 'trading', 'halted'"],
    ),
]


@pytest.mark.parametrize(
    ("document", "invariants", "expected"),
    [case[1:] for case in INVARIANT_CASES],
    ids=[case[0] for case in INVARIANT_CASES],
)
def test_invariant_violations_name_the_record_and_field(
    document: Any, invariants: Invariants, expected: list[str]
) -> None:
    assert [str(v) for v in check_invariants(document, invariants)] == expected


def test_immutable_fields_compare_records_matched_by_key() -> None:
    baseline = doc(inst("A", id=1), inst("B", id=2), inst("C", id=3))
    new = doc(inst("B", id=2), inst("A", id=7), inst("D", id=9), inst("C"))
    found = check_invariants(new, Invariants(immutable=("instruments[].id", "version")), baseline, key=KEY)
    assert [str(v) for v in found] == [
        "$.instruments[1].id: record 'A': changed from 1 to 7",
        "$.instruments[3].id: record 'C': changed from 3 to (absent)",
    ]
    assert all(v.rule == "immutable" for v in found)


def test_immutable_plain_field() -> None:
    found = check_invariants({"schema": 2}, Invariants(immutable=("schema",)), {"schema": 1})
    assert [str(v) for v in found] == ["$.schema: changed from 1 to 2"]


def test_immutable_record_field_without_a_key_is_a_usage_error() -> None:
    with pytest.raises(MetadataError, match="needs a record key"):
        check_invariants(doc(), Invariants(immutable=("instruments[].id",)), doc())


# ----------------------------------------------------------------------------- diff and budget


def test_diff_classifies_records_by_key() -> None:
    old = doc(inst("A"), inst("B"), inst("C", limits={"max": 5, "min": 1}))
    new = doc(inst("C", limits={"max": 6, "min": 1}), inst("A"), inst("D"))
    diff = diff_records(old, new, KEY)
    assert [r.key for r in diff.added] == ["D"]
    assert [(r.key, r.path) for r in diff.removed] == [("B", "$.instruments[1]")]
    (change,) = diff.changed
    assert (change.key, change.path) == ("C", "$.instruments[0]")
    assert [(f.field, f.old, f.new) for f in change.fields] == [("limits.max", 5, 6)]
    assert (diff.unchanged, diff.old_total, diff.new_total, diff.touched) == (1, 3, 3, 3)


def test_diff_reports_field_added_and_removed_and_bool_versus_int() -> None:
    diff = diff_records(doc(inst("A", flag=1, gone=1)), doc(inst("A", flag=True, new=2)), KEY)
    fields = {f.field: f.to_dict() for f in diff.changed[0].fields}
    assert fields == {
        "flag": {"field": "flag", "kind": "changed", "old": 1, "new": True},
        "gone": {"field": "gone", "kind": "removed", "old": 1},
        "new": {"field": "new", "kind": "added", "new": 2},
    }


def test_duplicate_and_missing_keys_are_violations_not_crashes() -> None:
    old = doc(inst("A"), inst("A"))
    new = doc(inst("A"), {"tick_size": 1})
    diff = diff_records(old, new, KEY)
    assert [str(p) for p in diff.problems] == [
        "$.instruments[1].symbol: baseline: duplicate key 'A' (first at $.instruments[0]); only the first is compared",
        "$.instruments[1]: record has no symbol",
    ]
    assert check_budget(diff, Budget(), 2)[: len(diff.problems)] == list(diff.problems)


def test_diff_of_a_missing_collection_is_empty() -> None:
    diff = diff_records({}, {"instruments": "nope"}, KEY)
    assert diff.empty
    assert [str(p) for p in diff.problems] == ["$.instruments: is not a list of records"]


@pytest.mark.parametrize("key", ["instruments", "instruments[]", "a[].b[].c"])
def test_record_keys_need_exactly_one_list_and_a_field(key: str) -> None:
    with pytest.raises(MetadataError):
        diff_records(doc(), doc(), key)


BASE = doc(*[inst(f"S{i}") for i in range(20)])
TWO_CHANGED = doc(*[inst(f"S{i}", tick_size=0.5 if i < 2 else 0.01) for i in range(20)])
ONE_ADDED = doc(*BASE["instruments"], inst("NEW"))
ONE_REMOVED = doc(*BASE["instruments"][1:])

BUDGET_CASES: list[tuple[str, Any, Budget, list[str]]] = [
    ("no change passes a zero budget", BASE, Budget(max_changed=0), []),
    ("2 of 20 is exactly 10%", TWO_CHANGED, Budget(max_changed_pct=10), []),
    (
        "2 of 20 exceeds 5%",
        TWO_CHANGED,
        Budget(max_changed_pct=5),
        ["$.instruments: 2 of 20 records touched (10.0%: 0 added, 0 removed, 2 changed), more than the 5% allowed"],
    ),
    (
        "count limit",
        TWO_CHANGED,
        Budget(max_changed=1),
        ["$.instruments: 2 records touched (0 added, 0 removed, 2 changed), more than the 1 allowed"],
    ),
    ("additions allowed by default", ONE_ADDED, Budget(max_changed=1), []),
    (
        "additions refused",
        ONE_ADDED,
        Budget(allow_added=False),
        ["$.instruments[20]: record symbol='NEW' was added; this budget allows no additions"],
    ),
    (
        "removals refused by default",
        ONE_REMOVED,
        Budget(),
        ["$.instruments[0]: record symbol='S0' (in the baseline) was removed; this budget allows no removals"],
    ),
    ("removals allowed", ONE_REMOVED, Budget(allow_removed=True, max_changed=1), []),
]


@pytest.mark.parametrize(
    ("new", "budget", "expected"),
    [case[1:] for case in BUDGET_CASES],
    ids=[case[0] for case in BUDGET_CASES],
)
def test_change_budget(new: Any, budget: Budget, expected: list[str]) -> None:
    diff = diff_records(BASE, new, KEY)
    found = check_budget(diff, budget, diff.old_total)
    assert [str(v) for v in found] == expected
    assert all(v.rule == "budget" for v in found)


def test_any_change_against_an_empty_baseline_is_100_percent() -> None:
    diff = diff_records(doc(), doc(inst("A")), KEY)
    assert "100.0%" in str(check_budget(diff, Budget(max_changed_pct=50), 0)[0])


# ----------------------------------------------------------------------------- read-back


def test_read_back_ignores_key_order_and_formatting() -> None:
    result = read_back({"a": 1, "b": [1, 2]}, json.loads('{ "b": [1,2],\n "a": 1 }'))
    assert result.equal
    assert result.intended_digest == result.served_digest
    assert result.diff == ""


def test_read_back_shows_a_readable_capped_diff() -> None:
    intended = {"instruments": [inst(f"S{i}") for i in range(300)]}
    served = {"instruments": [inst(f"S{i}", tick_size=0) for i in range(300)]}
    result = read_back(intended, served, max_lines=20)
    assert not result.equal
    lines = result.diff.splitlines()
    assert lines[:2] == ["--- intended", "+++ served"]
    assert '-      "tick_size": 0.01' in lines
    assert '+      "tick_size": 0' in lines
    assert len(lines) == 21
    assert lines[-1].endswith("more diff lines)")


# ----------------------------------------------------------------------------- report


def test_report_keeps_the_full_count_and_caps_what_it_shows() -> None:
    document = doc(*[inst("A") for _ in range(80)])
    report = validate_document(document, invariants=Invariants(unique=(KEY,)), max_shown=50)
    data = report.to_dict()
    assert (report.ok, len(report.violations), len(report.shown)) == (False, 79, 50)
    assert data["violation_count"] == 79
    assert len(data["violations"]) == 50
    assert data["truncated"] is True
    assert data["by_rule"] == {"unique": 79}
    assert data["digest"] == document_digest(document)
    json.dumps(data)  # the journal stores it as is


def test_a_budget_without_a_baseline_is_a_usage_error() -> None:
    with pytest.raises(MetadataError):
        validate_document(doc(), budget=Budget())


# ----------------------------------------------------------------------------- the example exchange

EXCHANGE_INVARIANTS = Invariants(
    unique=(KEY, "markets[].id"),
    references=(("markets[].instrument", KEY),),
    non_empty=("instruments",),
    immutable=("instruments[].id", "instruments[].base", "instruments[].quote"),
)


def check_example(name: str) -> MetadataReport:
    return validate_document(
        load(name),
        name=name,
        schema=load("schema.json"),
        invariants=EXCHANGE_INVARIANTS,
        baseline=load("v1.json"),
        key=KEY,
        budget=Budget(max_changed_pct=10),
    )


@pytest.mark.parametrize("name", ["v1.json", "v2.json", "v2-runtime-break.json"])
def test_good_versions_and_the_runtime_break_pass_every_static_check(name: str) -> None:
    report = check_example(name)
    assert report.ok, [str(v) for v in report.violations]
    assert report.checks == ("schema", "invariants", "budget")


def test_v2_is_within_the_ten_percent_budget() -> None:
    diff = check_example("v2.json").diff
    assert diff is not None
    assert (len(diff.added), len(diff.removed), len(diff.changed), diff.old_total) == (2, 0, 2, 40)


@pytest.mark.parametrize(
    ("name", "rule", "first"),
    [
        (
            "v2-renamed-field.json",
            "schema:required",
            "$.instruments[0]: 'tick_size' is a required property",
        ),
        (
            "v2-duplicate-symbol.json",
            "unique",
            "$.instruments[42].symbol: duplicate value 'BTC-USD' (first at $.instruments[0].symbol)",
        ),
        (
            "v2-dangling-reference.json",
            "references",
            "$.markets[0].instrument: 'XRP-JPY' is not among instruments[].symbol",
        ),
        (
            "v2-zero-tick.json",
            "schema:exclusiveMinimum",
            "$.instruments[0].tick_size: 0 is less than or equal to the minimum of 0",
        ),
        (
            "v2-half-removed.json",
            "budget",
            "$.instruments[1]: record symbol='ETH-USD' (in the baseline) was removed; this budget allows no removals",
        ),
    ],
)
def test_each_broken_version_fails_naming_the_record_and_field(name: str, rule: str, first: str) -> None:
    report = check_example(name)
    assert not report.ok
    assert first in [str(v) for v in report.violations if v.rule == rule]


# ----------------------------------------------------------------------------- properties

SYMBOLS = st.text(alphabet="ABCXYZ-", min_size=1, max_size=4)
DOCS = st.lists(
    st.fixed_dictionaries(
        {"symbol": SYMBOLS, "tick_size": st.sampled_from([0.01, 0.5, 1, 0])},
        optional={"status": st.sampled_from(["trading", "halted"]), "flag": st.booleans()},
    ),
    max_size=12,
    unique_by=lambda r: r["symbol"],
).map(lambda records: {"instruments": records})


@given(DOCS)
def test_a_document_diffed_with_itself_is_empty(document: Any) -> None:
    diff = diff_records(document, document, KEY)
    assert diff.empty
    assert diff.unchanged == len(document["instruments"])


@given(DOCS, DOCS)
def test_swapping_sides_swaps_added_and_removed(a: Any, b: Any) -> None:
    forward, backward = diff_records(a, b, KEY), diff_records(b, a, KEY)
    assert {r.key for r in forward.added} == {r.key for r in backward.removed}
    assert {r.key for r in forward.removed} == {r.key for r in backward.added}
    assert {c.key for c in forward.changed} == {c.key for c in backward.changed}


@given(
    st.recursive(
        JSON_SCALARS,
        lambda inner: st.dictionaries(st.text(max_size=3), inner, max_size=4) | st.lists(inner, max_size=4),
        max_leaves=20,
    )
)
def test_digest_ignores_key_order_and_formatting(value: Any) -> None:
    def reverse_keys(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: reverse_keys(x) for k, x in reversed(list(v.items()))}
        if isinstance(v, list):
            return [reverse_keys(x) for x in v]
        return v

    reformatted = json.loads(json.dumps(reverse_keys(value), indent=3))
    assert document_digest(reformatted) == document_digest(value)
    assert canonical_bytes(reformatted) == canonical_bytes(value)


@given(DOCS, DOCS)
def test_a_zero_budget_rejects_any_change(a: Any, b: Any) -> None:
    diff = diff_records(a, b, KEY)
    found = check_budget(diff, Budget(max_changed=0, allow_removed=True), diff.old_total)
    assert bool(found) == (not diff.empty)
