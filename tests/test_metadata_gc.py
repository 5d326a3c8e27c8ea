"""Who may switch the process-wide garbage collector: the command that owns the process, never the library.

Invariant: the metadata checks (schema, invariants, diff, budget, a whole validation)
never call `gc.disable` or `gc.enable`, so a caller that embeds them (the engine's
pre-check inside `rollout run`, a test suite, a Python user) keeps its collector as it
set it. `rollout metadata check` and `rollout metadata diff` pause it around parsing and
checking (it pays for big documents: bench/README.md) and switch it back on before they
return.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.api import metadata as api_md
from rollout.checks import metadata as md
from tests.helpers import Cli

METADATA = Path(__file__).resolve().parents[1] / "examples" / "exchange" / "metadata"
SCHEMA, V1, V2 = METADATA / "schema.json", METADATA / "v1.json", METADATA / "v2.json"
KEY = "instruments[].symbol"


@pytest.fixture
def gc_switches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every gc.disable/gc.enable call, in order (the real ones still run)."""
    calls: list[str] = []
    real_disable, real_enable = gc.disable, gc.enable

    def disable() -> None:
        calls.append("disable")
        real_disable()

    def enable() -> None:
        calls.append("enable")
        real_enable()

    monkeypatch.setattr(gc, "disable", disable)
    monkeypatch.setattr(gc, "enable", enable)
    assert gc.isenabled()
    yield calls
    assert gc.isenabled(), "the collector was left switched off"


def load(path: Path) -> Any:
    return md.parse_document(path.read_bytes(), fmt="json", name=path.name)


def test_the_checks_leave_the_garbage_collector_alone(gc_switches: list[str]) -> None:
    old, new, schema = load(V1), load(V2), load(SCHEMA)
    invariants = md.Invariants(unique=(KEY,), references=(("markets[].instrument", KEY),), immutable=(KEY,))

    md.compile_schema(schema).violations(new)
    md.schema_violations({"instruments": "not a list"}, schema)  # the jsonschema path too
    md.check_invariants(new, invariants, old, key=KEY)
    md.check_budget(md.diff_records(old, new, KEY), md.Budget(max_changed=1), 3)
    md.validate_document(new, schema=schema, invariants=invariants, baseline=old, key=KEY, budget=md.Budget())
    md.read_back(new, old)

    assert gc_switches == []


def _recording_gc_state(monkeypatch: pytest.MonkeyPatch, name: str) -> list[bool]:
    """Wrap the API's `<name>` (what the commands call) so each call records whether the collector was on."""
    seen: list[bool] = []
    real: Callable[..., Any] = getattr(api_md, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(api_md, name, wrapper)
    return seen


def test_metadata_check_pauses_the_collector_while_checking_and_restores_it(
    cli: Cli, gc_switches: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _recording_gc_state(monkeypatch, "validate_document")

    result = cli("metadata", "check", str(V2), "--schema", str(SCHEMA), "--baseline", str(V1), "--key", KEY)

    assert result.code == 0, result.out + result.err
    assert seen == [False]
    assert gc_switches == ["disable", "enable"]


def test_metadata_check_restores_the_collector_when_the_input_is_bad(
    cli: Cli, gc_switches: list[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"instruments": [}')

    result = cli("metadata", "check", str(broken), "--schema", str(SCHEMA))

    assert result.code == 2, result.out + result.err
    assert gc_switches == ["disable", "enable"]


def test_metadata_diff_pauses_the_collector_while_diffing_and_restores_it(
    cli: Cli, gc_switches: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _recording_gc_state(monkeypatch, "diff_records")

    result = cli("metadata", "diff", str(V1), str(V2), "--key", KEY)

    assert result.code == 0, result.out + result.err
    assert seen == [False]
    assert gc_switches == ["disable", "enable"]
