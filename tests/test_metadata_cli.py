"""`rollout metadata check` and `rollout metadata diff` on the example exchange's documents, as CI runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import Cli, Result

REPO = Path(__file__).resolve().parents[1]
METADATA = REPO / "examples" / "exchange" / "metadata"
SCHEMA = METADATA / "schema.json"
V1 = METADATA / "v1.json"
V2 = METADATA / "v2.json"
ROLLOUT = Path(sys.executable).with_name("rollout")
KEY = "instruments[].symbol"

# What the sample plan checks: schema, unique symbols, markets point at instruments, a 10% budget.
RULES = [
    "--schema",
    str(SCHEMA),
    "--unique",
    KEY,
    "--references",
    "markets[].instrument=instruments[].symbol",
    "--baseline",
    str(V1),
    "--key",
    KEY,
    "--max-changed",
    "10%",
]


def check(cli: Cli, doc: Path, *extra: str) -> Result:
    return cli("metadata", "check", str(doc), *RULES, *extra)


# --------------------------------------------------------------------------- check


def test_good_v2_against_v1_is_valid_with_schema_invariants_and_budget(cli: Cli) -> None:
    result = check(cli, V2)

    assert result.code == 0, result.out + result.err
    assert "ok" in result.out
    assert "valid (schema, invariants, budget)" in result.out
    assert "2 added, 0 removed, 2 changed" in result.out


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("renamed-field", ["$.instruments[0]: Additional properties are not allowed ('tickSize' was unexpected)"]),
        ("renamed-field", ["$.instruments[0]: 'tick_size' is a required property [schema:required]"]),
        (
            "duplicate-symbol",
            ["$.instruments[42].symbol: duplicate value 'BTC-USD' (first at $.instruments[0].symbol) [unique]"],
        ),
        ("dangling-reference", ["$.markets[0].instrument: 'XRP-JPY' is not among instruments[].symbol [references]"]),
        ("zero-tick", ["$.instruments[0].tick_size: 0 is less than or equal to the minimum of 0"]),
        ("half-removed", ["$.instruments[1]: record symbol='ETH-USD' (in the baseline) was removed", "[budget]"]),
    ],
)
def test_each_broken_variant_is_refused_naming_the_record_and_field(
    cli: Cli, variant: str, expected: list[str]
) -> None:
    result = check(cli, METADATA / f"v2-{variant}.json")

    assert result.code == 3, result.out + result.err
    assert result.out.startswith(f"invalid  {METADATA / f'v2-{variant}.json'}")
    for text in expected:
        assert text in result.out


def test_runtime_break_passes_because_only_running_the_service_shows_it(cli: Cli) -> None:
    result = check(cli, METADATA / "v2-runtime-break.json")

    assert result.code == 0, result.out + result.err


def test_long_violation_lists_are_capped_with_the_full_count(cli: Cli) -> None:
    result = check(cli, METADATA / "v2-renamed-field.json")

    listed = [line for line in result.out.splitlines() if line.startswith("  $.")]
    assert len(listed) == 50
    assert "85 violations" in result.out
    assert "35 more not shown (85 violations in all)" in result.out


def test_removals_pass_when_allowed_and_additions_fail_when_refused(cli: Cli) -> None:
    half = METADATA / "v2-half-removed.json"
    allowed = cli("metadata", "check", str(half), "--schema", str(SCHEMA), "--baseline", str(V2), "--key", KEY)
    allowed_now = cli(
        "metadata", "check", str(half), "--schema", str(SCHEMA), "--baseline", str(V2), "--key", KEY, "--allow-removed"
    )
    no_additions = check(cli, V2, "--no-allow-added")

    assert allowed.code == 3
    assert allowed_now.code == 0, allowed_now.out
    assert no_additions.code == 3
    assert "record symbol='SUI-USD' was added; this budget allows no additions [budget]" in no_additions.out


def test_a_record_count_budget_and_immutable_and_non_empty_fields(cli: Cli) -> None:
    result = check(cli, V2, "--max-changed", "3", "--immutable", "instruments[].tick_size", "--non-empty", "markets")

    assert result.code == 3
    assert "4 records touched (2 added, 0 removed, 2 changed), more than the 3 allowed" in result.out
    assert "$.instruments[1].tick_size: record 'ETH-USD': changed from 0.01 to 0.05 [immutable]" in result.out


def test_json_report_carries_the_violations_counts_and_file_names(cli: Cli) -> None:
    result = check(cli, METADATA / "v2-duplicate-symbol.json", "--json")

    assert result.code == 3
    report = result.json()
    assert report["ok"] is False
    assert report["file"] == str(METADATA / "v2-duplicate-symbol.json")
    assert report["schema_file"] == str(SCHEMA)
    assert report["baseline_file"] == str(V1)
    assert report["checks"] == ["schema", "invariants", "budget"]
    assert report["violation_count"] == 1
    assert report["by_rule"] == {"unique": 1}
    assert report["violations"] == [
        {
            "path": "$.instruments[42].symbol",
            "rule": "unique",
            "message": "duplicate value 'BTC-USD' (first at $.instruments[0].symbol)",
        }
    ]
    assert report["diff"]["added"] == 2


def test_json_report_of_a_valid_document(cli: Cli) -> None:
    report = check(cli, V2, "--json").json()

    assert report["ok"] is True
    assert report["violations"] == []
    assert report["diff"] == {
        "key": KEY,
        "added": 2,
        "removed": 0,
        "changed": 2,
        "unchanged": 38,
        "old_total": 40,
        "new_total": 42,
        "touched": 4,
    }


def test_junit_has_one_testcase_per_check_kind_with_violations_as_failure_text(cli: Cli, tmp_path: Path) -> None:
    xml = tmp_path / "metadata.xml"

    result = check(cli, METADATA / "v2-zero-tick.json", "--junit", str(xml))

    assert result.code == 3
    suite = ET.parse(xml).getroot().find("testsuite")
    assert suite is not None
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == ["schema", "invariants", "budget"]
    assert suite.get("failures") == "2"
    assert cases["invariants"].find("failure") is None
    schema_failure = cases["schema"].find("failure")
    assert schema_failure is not None
    assert "$.instruments[0].tick_size" in (schema_failure.text or "")
    budget_failure = cases["budget"].find("failure")
    assert budget_failure is not None
    assert "5 of 40 records touched" in (budget_failure.text or "")


def test_junit_of_a_valid_document_has_no_failures(cli: Cli, tmp_path: Path) -> None:
    xml = tmp_path / "metadata.xml"

    assert check(cli, V2, "--junit", str(xml)).code == 0

    root = ET.parse(xml).getroot()
    assert root.get("failures") == "0"
    assert root.get("tests") == "3"


def test_yaml_documents_are_read_too(cli: Cli, tmp_path: Path) -> None:
    doc = tmp_path / "release.yaml"
    doc.write_text("version: 2\ninstruments: []\nmarkets: []\n")

    result = cli("metadata", "check", str(doc), "--schema", str(SCHEMA))

    assert result.code == 3
    assert "$.instruments: [] should be non-empty [schema:minItems]" in result.out


# --------------------------------------------------------------------------- bad input


def test_a_missing_document_exits_2_naming_the_file(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"

    result = cli("metadata", "check", str(missing), "--schema", str(SCHEMA))

    assert result.code == 2
    assert f"{missing}: cannot read: No such file or directory" in result.err
    assert result.out == ""


def test_a_json_syntax_error_exits_2_with_file_line_and_column(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 2,\n  "instruments": ]\n}\n')

    result = cli("metadata", "check", str(bad), "--schema", str(SCHEMA))

    assert result.code == 2
    assert f"{bad}:2:18: invalid JSON" in result.err


def test_a_bad_schema_exits_2_naming_the_schema_file(cli: Cli, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": 5}')
    not_json = tmp_path / "schema-broken.json"
    not_json.write_text('{"type": ')

    invalid = cli("metadata", "check", str(V2), "--schema", str(schema))
    unreadable = cli("metadata", "check", str(V2), "--schema", str(not_json))

    assert invalid.code == 2
    assert f"{schema}: invalid JSON Schema at $.type" in invalid.err
    assert unreadable.code == 2
    assert f"{not_json}:1:10: invalid JSON" in unreadable.err


def test_a_missing_baseline_exits_2_naming_it(cli: Cli, tmp_path: Path) -> None:
    result = cli("metadata", "check", str(V2), "--schema", str(SCHEMA), "--baseline", str(tmp_path / "v1.json"))

    assert result.code == 2
    assert "--baseline needs --key" in result.err
    result = cli(
        "metadata", "check", str(V2), "--schema", str(SCHEMA), "--baseline", str(tmp_path / "v1.json"), "--key", KEY
    )
    assert result.code == 2
    assert f"{tmp_path / 'v1.json'}: cannot read" in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--key", "instruments.symbol"], "--key 'instruments.symbol': a record key needs exactly one []"),
        (["--key", "instrumentz[].symbol"], "--key 'instrumentz[].symbol': no list at 'instrumentz'"),
        (["--key", KEY, "--unique", "a..b"], "--unique: malformed key path 'a..b'"),
        (["--key", KEY, "--max-changed", "5x"], "expected a record count (3) or a percentage (5%), got '5x'"),
        (["--key", KEY, "--references", "markets[].instrument"], "expected FROM=TO"),
        (["--key", KEY, "--format", "xml"], "expected json, yaml or auto, got 'xml'"),
    ],
)
def test_bad_key_paths_and_options_exit_2_with_a_clear_message(cli: Cli, args: list[str], message: str) -> None:
    result = cli("metadata", "check", str(V2), "--schema", str(SCHEMA), "--baseline", str(V1), *args)

    assert result.code == 2
    assert message in result.err


def test_options_that_need_a_baseline_say_so(cli: Cli) -> None:
    budget = cli("metadata", "check", str(V2), "--schema", str(SCHEMA), "--max-changed", "10%")
    immutable = cli("metadata", "check", str(V2), "--schema", str(SCHEMA), "--immutable", "version")

    assert (budget.code, immutable.code) == (2, 2)
    assert "--max-changed needs --baseline" in budget.err
    assert "--immutable needs --baseline" in immutable.err


# --------------------------------------------------------------------------- diff


def test_diff_v1_to_v2_counts_records_and_shows_field_changes(cli: Cli) -> None:
    result = cli("metadata", "diff", str(V1), str(V2), "--key", KEY)

    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].endswith("2 added, 0 removed, 2 changed, 38 unchanged (40 -> 42 records)")
    assert "  + instruments[SUI-USD] at $.instruments[40]" in lines
    assert "  + instruments[ARB-USD] at $.instruments[41]" in lines
    assert "  ~ instruments[ETH-USD].tick_size: 0.01 -> 0.05" in lines
    assert "  ~ instruments[SOL-USD].tick_size: 0.001 -> 0.01" in lines
    assert "removed (0):" in lines


def test_diff_is_information_so_even_a_truncated_export_exits_0_and_limit_caps_it(cli: Cli) -> None:
    result = cli("metadata", "diff", str(V2), str(METADATA / "v2-half-removed.json"), "--key", KEY, "--limit", "2")

    assert result.code == 0
    assert "0 added, 21 removed, 0 changed" in result.out
    assert "  - instruments[ETH-USD] (was $.instruments[1])" in result.out
    assert "  ... 19 more removed records (raise --limit to see them)" in result.out


def test_diff_shows_added_and_removed_fields_and_duplicate_keys(cli: Cli) -> None:
    renamed = cli("metadata", "diff", str(V2), str(METADATA / "v2-renamed-field.json"), "--key", KEY, "--limit", "1")
    duplicate = cli("metadata", "diff", str(V2), str(METADATA / "v2-duplicate-symbol.json"), "--key", KEY)

    assert "0 added, 0 removed, 42 changed" in renamed.out
    assert "  ~ instruments[BTC-USD].tickSize: (absent) -> 0.5" in renamed.out
    assert "  ~ instruments[BTC-USD].tick_size: 0.5 -> (absent)" in renamed.out
    assert "  ... 41 more changed records" in renamed.out
    assert "note: $.instruments[42].symbol: duplicate key 'BTC-USD'" in duplicate.out


def test_diff_json(cli: Cli) -> None:
    result = cli("metadata", "diff", str(V1), str(V2), "--key", KEY, "--json")

    data = result.json()
    assert (data["added"], data["removed"], data["changed"]) == (2, 0, 2)
    assert data["added_keys"] == ["SUI-USD", "ARB-USD"]
    assert data["old_file"] == str(V1)
    assert data["new_file"] == str(V2)
    eth = next(c for c in data["changes"] if c["key"] == "ETH-USD")
    assert eth["fields"] == [{"field": "tick_size", "kind": "changed", "old": 0.01, "new": 0.05}]


def test_diff_bad_input_exits_2_naming_the_file(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  oops\n}")

    unreadable = cli("metadata", "diff", str(V1), str(bad), "--key", KEY)
    missing = cli("metadata", "diff", str(tmp_path / "gone.json"), str(V2), "--key", KEY)
    bad_key = cli("metadata", "diff", str(V1), str(V2), "--key", "instruments[]")

    assert (unreadable.code, missing.code, bad_key.code) == (2, 2, 2)
    assert f"{bad}:2:3: invalid JSON" in unreadable.err
    assert f"{tmp_path / 'gone.json'}: cannot read" in missing.err
    assert "a record key needs exactly one [] followed by a field" in bad_key.err


# --------------------------------------------------------------------------- help and a real process


@pytest.mark.parametrize("command", ["check", "diff"])
def test_help_shows_examples(cli: Cli, command: str) -> None:
    result = cli("metadata", command, "--help")

    assert result.code == 0
    assert "Examples:" in result.out
    assert f"rollout metadata {command} " in result.out


def test_a_real_process_checks_and_exits_with_the_ci_contract(tmp_path: Path) -> None:
    good = subprocess.run(
        [str(ROLLOUT), "metadata", "check", str(V2), *RULES], capture_output=True, text=True, timeout=60, check=False
    )
    bad = subprocess.run(
        [str(ROLLOUT), "metadata", "check", str(METADATA / "v2-dangling-reference.json"), *RULES, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert good.returncode == 0, good.stdout + good.stderr
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert json.loads(bad.stdout)["violations"][0]["path"] == "$.markets[0].instrument"


def test_diff_names_records_with_numeric_keys_by_field_so_they_do_not_read_as_indexes(cli: Cli) -> None:
    result = cli("metadata", "diff", str(V1), str(V2), "--key", "$.instruments[].id")

    assert result.code == 0
    assert "  ~ instruments[id=2].tick_size: 0.01 -> 0.05" in result.out.splitlines()
