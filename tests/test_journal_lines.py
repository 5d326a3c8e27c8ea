"""Every check the reader makes on one line, each alone: the other lines re-chained, so only it can fail.

Invariant: a line is accepted only as a JSON object with exactly the journal's keys in
order and values of the right JSON types; anything else is named, at its line, with the
reason. The reader decodes the lines the writer writes on a fast path; these lines are
the ones it must hand to the full checks, and what those checks say must not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rollout.errors import JournalCorrupt
from rollout.journal import Event, Journal, Record, read_journal

RUN_ID = "20261125T000000Z-lines"
DIGEST = "cd" * 32


def _journal(path: Path) -> list[bytes]:
    """A four-line journal's lines (without newlines)."""
    with Journal.create(path, run_id=RUN_ID, plan_digest=DIGEST) as journal:
        journal.append(Event("run.start", data={"run_id": RUN_ID, "plan_digest": DIGEST}), sync=True)
        journal.append(Event("step.intent", wave=1, host="h1", step="s", data={"command": "true"}), sync=True)
        journal.append(Event("step.result", wave=1, host="h1", step="s", outcome="ok", data={}), sync=True)
        journal.append(Event("run.end", outcome="succeeded"), sync=True)
    return path.read_bytes().split(b"\n")[:-1]


def _rechained(lines: list[bytes], n: int, new_line: bytes) -> bytes:
    """The journal with line n replaced and every later line's prev recomputed, so the chain holds."""
    out = [*lines[: n - 1], new_line]
    for raw in lines[n:]:
        obj = json.loads(raw)
        obj["prev"] = hashlib.sha256(out[-1]).hexdigest()
        out.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())
    return b"\n".join(out) + b"\n"


def _edit(change: Callable[[dict[str, Any]], object]) -> Callable[[bytes], bytes]:
    def edit(raw: bytes) -> bytes:
        obj = json.loads(raw)
        change(obj)
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    return edit


def _set(key: str, value: object) -> Callable[[bytes], bytes]:
    return _edit(lambda obj: obj.__setitem__(key, value))


BAD_LINES: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("missing key", _edit(lambda o: o.pop("outcome")), "wrong key set: missing ['outcome']"),
    ("extra key", _set("extra", 1), "wrong key set: unexpected ['extra']"),
    ("keys out of order", _edit(lambda o: o.update(seq=o.pop("seq"))), "wrong key set: keys out of order"),
    ("seq a string", _set("seq", "2"), "'seq' must be an integer"),
    ("seq a boolean", _set("seq", True), "'seq' must be an integer"),
    ("seq a float", _set("seq", 2.0), "'seq' must be an integer"),
    ("ts a number", _set("ts", 5), "'ts' must be a string"),
    ("mono a string", _set("mono", "1.0"), "'mono' must be a number"),
    ("mono a boolean", _set("mono", False), "'mono' must be a number"),
    ("prev not hex", _set("prev", "z" * 64), "'prev' must be a sha256 hex digest"),
    ("prev upper case", _set("prev", "A" * 64), "'prev' must be a sha256 hex digest"),
    ("prev a number", _set("prev", 7), "'prev' must be a sha256 hex digest"),
    ("kind empty", _set("kind", ""), "'kind' must be a non-empty string"),
    ("kind null", _set("kind", None), "'kind' must be a non-empty string"),
    ("wave a string", _set("wave", "1"), "'wave' must be an integer or null"),
    ("wave a boolean", _set("wave", True), "'wave' must be an integer or null"),
    ("host a number", _set("host", 1), "'host' must be a string or null"),
    ("step a list", _set("step", ["s"]), "'step' must be a string or null"),
    ("outcome a mapping", _set("outcome", {}), "'outcome' must be a string or null"),
    ("data a list", _set("data", []), "'data' must be an object"),
    ("data null", _set("data", None), "'data' must be an object"),
    ("not an object", lambda raw: b"[" + raw + b"]", "not a JSON object but list"),
    ("two objects", lambda raw: raw + b"," + raw, "not valid JSON (Extra data"),
    ("byte order mark", lambda raw: "\ufeff".encode() + raw, "not valid JSON (Unexpected UTF-8 BOM"),
    ("NaN", lambda raw: raw.replace(b'"mono":', b'"mono":NaN,"x":', 1), "not valid JSON (NaN is not valid JSON"),
    ("not UTF-8", lambda raw: raw.replace(b'"h1"', b'"h\xff"', 1), "not valid UTF-8"),
    ("cut short", lambda raw: raw[:-1], "not valid JSON"),
]


@pytest.mark.parametrize(("damage", "reason"), [(e, r) for _, e, r in BAD_LINES], ids=[n for n, _, _ in BAD_LINES])
def test_a_line_of_the_wrong_shape_is_named_with_its_reason(
    tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    path = tmp_path / "journal.jsonl"
    lines = _journal(path)
    path.write_bytes(_rechained(lines, 2, damage(lines[1])))

    with pytest.raises(JournalCorrupt) as caught:
        read_journal(path)

    assert caught.value.line == 2
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "pad",
    [lambda raw: b" " + raw, lambda raw: raw + b" \t", lambda raw: b"\t" + raw + b" "],
    ids=["leading space", "trailing whitespace", "both"],
)
def test_whitespace_around_a_line_is_read_as_json_reads_it(tmp_path: Path, pad: Callable[[bytes], bytes]) -> None:
    path = tmp_path / "journal.jsonl"
    lines = _journal(path)
    padded = pad(lines[1])
    path.write_bytes(_rechained(lines, 2, padded))

    records = read_journal(path).records

    assert len(records) == 4
    assert records[1].hash == hashlib.sha256(padded).hexdigest()
    assert records[1].kind == "step.intent"


def test_every_record_read_equals_the_record_built_field_by_field(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    lines = _journal(path)

    records = read_journal(path).records

    names = [f.name for f in dataclasses.fields(Record)]
    for line_no, (raw, record) in enumerate(zip(lines, records, strict=True), start=1):
        obj = json.loads(raw)
        built = Record(
            **{**obj, "mono": float(obj["mono"]), "hash": hashlib.sha256(raw).hexdigest(), "line_no": line_no}
        )
        assert record == built
        assert vars(record) == {name: getattr(built, name) for name in names}  # no field more, none less
        assert type(record.mono) is float
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.seq = 0  # type: ignore[misc]
