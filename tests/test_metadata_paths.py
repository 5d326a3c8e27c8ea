"""A metadata key path that matches no value is an error, never a silent pass.

Invariant: a rule over a path that reaches no value in the document checks nothing, so it
must not read as "valid". The command line says so with exit 2, naming the path and the
nearest existing field; in a plan the check fails with a violation that says the same,
beside every other finding. A path into an empty collection matches nothing too, but
vacuously: that is a valid empty document, not a typo.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rollout.checks.metadata import Bound, Invariants, check_invariants, diff_records
from rollout.errors import MetadataError
from tests.helpers import Cli

REPO = Path(__file__).resolve().parents[1]
METADATA = REPO / "examples" / "exchange" / "metadata"
SCHEMA = METADATA / "schema.json"
V1 = METADATA / "v1.json"
V2 = METADATA / "v2.json"
DUPLICATE = METADATA / "v2-duplicate-symbol.json"


def test_unique_with_a_typo_is_exit_2_on_a_file_with_a_duplicate(cli: Cli) -> None:
    result = cli("metadata", "check", str(DUPLICATE), "--schema", str(SCHEMA), "--unique", "instruments[].symbl")

    assert result.code == 2, result.out
    assert (
        "--unique 'instruments[].symbl' matches no value; nearest existing field: instruments[].symbol "
        "(no field 'symbl' at instruments[])"
    ) in result.err


@pytest.mark.parametrize(
    ("reference", "typo", "nearest"),
    [
        ("markets[].instrment=instruments[].symbol", "markets[].instrment", "markets[].instrument"),
        ("markets[].instrument=instrumnts[].symbol", "instrumnts[].symbol", "instruments[].symbol"),
    ],
)
def test_references_with_a_typo_on_either_side_is_exit_2(cli: Cli, reference: str, typo: str, nearest: str) -> None:
    result = cli("metadata", "check", str(V2), "--schema", str(SCHEMA), "--references", reference)

    assert result.code == 2, result.out
    assert f"--references {typo!r} matches no value" in result.err
    assert f"nearest existing field: {nearest}" in result.err


def test_diff_with_a_key_typo_is_exit_2_not_zero_changes(cli: Cli) -> None:
    result = cli("metadata", "diff", str(V1), str(V2), "--key", "instruments[].sym")

    assert result.code == 2, result.out
    assert "--key 'instruments[].sym' matches no value" in result.err
    assert "nearest existing field: instruments[].symbol" in result.err


def test_check_with_a_record_key_typo_is_exit_2(cli: Cli) -> None:
    result = cli(
        "metadata", "check", str(V2), "--schema", str(SCHEMA), "--baseline", str(V1), "--key", "instruments[].sym"
    )

    assert result.code == 2, result.out
    assert "--key 'instruments[].sym' matches no value" in result.err


def test_diff_notes_are_capped_by_limit(cli: Cli, tmp_path: Path) -> None:
    old = {"instruments": [{"symbol": f"S{i}", "v": 1} for i in range(30)]}
    # five records keep their key, twenty-five lose it: one note each
    new = {"instruments": [{"symbol": f"S{i}", "v": 1} if i < 5 else {"v": 1} for i in range(30)]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))

    result = cli(
        "metadata", "diff", str(tmp_path / "old.json"), str(tmp_path / "new.json"), "--key", "instruments[].symbol"
    )
    capped = cli(
        "metadata",
        "diff",
        str(tmp_path / "old.json"),
        str(tmp_path / "new.json"),
        "--key",
        "instruments[].symbol",
        "--limit",
        "3",
    )

    assert result.code == capped.code == 0
    notes = [line for line in capped.out.splitlines() if line.startswith("note:")]
    assert notes[:3] == [f"note: $.instruments[{i}]: record has no symbol" for i in (5, 6, 7)]
    assert notes[3:] == ["note: ... 22 more notes (raise --limit to see them)"]
    assert sum(line.startswith("note:") for line in result.out.splitlines()) == 21  # 20 + the count


@pytest.mark.parametrize(
    ("invariants", "message"),
    [
        (Invariants(unique=("instruments[].symbl",)), "unique path 'instruments[].symbl' matches no value"),
        (
            Invariants(references=(("markets[].instrument", "instruments[].sym"),)),
            "references path 'instruments[].sym' matches no value",
        ),
        (
            Invariants(bounds=(Bound(path="instruments[].tick", minimum=0),)),
            "bounds path 'instruments[].tick' matches no value; nearest existing field: instruments[].tick_size "
            "(no field 'tick' at instruments[])",
        ),
        (Invariants(immutable=("instruments[].bse",)), "immutable path 'instruments[].bse' matches no value"),
        (Invariants(immutable=("verison",)), "nearest existing field: version"),
    ],
    ids=["unique", "references", "bounds", "immutable record field", "immutable field"],
)
def test_every_rule_over_a_path_that_matches_nothing_is_a_violation(invariants: Invariants, message: str) -> None:
    doc = json.loads(V2.read_text())

    found = check_invariants(doc, invariants, json.loads(V1.read_text()), key="instruments[].symbol")

    assert len(found) == 1
    assert message in found[0].message


def test_a_record_key_that_no_record_has_is_an_error() -> None:
    with pytest.raises(MetadataError, match=r"record key 'instruments\[\]\.sym' matches no value"):
        diff_records(json.loads(V1.read_text()), json.loads(V2.read_text()), "instruments[].sym")


def test_a_path_into_an_empty_collection_is_vacuously_valid() -> None:
    empty = {"instruments": [], "markets": []}

    found = check_invariants(
        empty,
        Invariants(
            unique=("instruments[].symbol",),
            references=(("markets[].instrument", "instruments[].symbol"),),
            bounds=(Bound(path="instruments[].tick_size", minimum=0),),
        ),
    )

    assert found == []
    assert diff_records(empty, empty, "instruments[].symbol").empty


def test_a_path_through_a_value_that_is_not_a_list_says_so() -> None:
    found = check_invariants({"version": 3}, Invariants(unique=("version[].x",)))

    assert [str(v) for v in found] == ["$.version: unique path 'version[].x' matches no value: version is not a list"]


PLAN = """\
name: metadata-typo
environments:
  demo:
    hosts:
      a: {{}}
prechecks:
  - name: release metadata
    metadata:
      source: {{ file: "{doc}" }}
      unique: ["instruments[].symbl"]
steps:
  - name: first
    run: "true"
    rollback: none
"""


def test_a_plan_metadata_check_with_a_path_typo_fails(cli: Cli, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(doc=DUPLICATE))
    state = tmp_path / "state"

    result = cli("run", str(plan), "--env", "demo", "--yes", "--state-dir", str(state))

    assert result.code == 3, result.out + result.err
    assert "pre-check 'release metadata' failed" in result.out
    assert "unique path 'instruments[].symbl' matches no value" in result.out
    # the terminal cuts a summary to a line; the journal keeps it whole
    (journal,) = state.glob("runs/*/journal.jsonl")
    assert "nearest existing field: instruments[].symbol" in journal.read_text()
