"""Generate the exchange metadata documents: v1, a good v2, and v2 variants broken on purpose.

Run `python examples/exchange/make_metadata.py` to rewrite `metadata/`. The output is
deterministic (no clock, no randomness), so a re-run produces byte-identical files and
`git diff` shows only deliberate changes.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "metadata"

# The symbols the gateway's /probe trades; every variant that must go red breaks one of them.
PROBE_SYMBOLS = ("BTC-USD", "ETH-USD")

QUOTES = ("USD", "EUR")
# base: (tick_size, lot_size, price_precision); plausible values, not market data.
BASES: dict[str, tuple[float, float, int]] = {
    "BTC": (0.5, 0.0001, 1),
    "ETH": (0.01, 0.001, 2),
    "SOL": (0.001, 0.01, 3),
    "XRP": (0.0001, 1, 4),
    "ADA": (0.0001, 1, 4),
    "DOGE": (0.00001, 10, 5),
    "DOT": (0.001, 0.1, 3),
    "LTC": (0.01, 0.01, 2),
    "LINK": (0.001, 0.1, 3),
    "AVAX": (0.001, 0.01, 3),
    "MATIC": (0.0001, 1, 4),
    "ATOM": (0.001, 0.1, 3),
    "UNI": (0.001, 0.1, 3),
    "XLM": (0.00001, 10, 5),
    "BCH": (0.01, 0.001, 2),
    "ETC": (0.001, 0.01, 3),
    "FIL": (0.001, 0.1, 3),
    "TRX": (0.00001, 10, 5),
    "NEAR": (0.001, 0.1, 3),
    "APT": (0.001, 0.01, 3),
}
HALTED = {"TRX-EUR"}
MARGIN = ("BTC-USD", "ETH-USD", "SOL-USD")

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://rollout.example/schemas/exchange-metadata.json",
    "title": "Exchange instrument metadata",
    "type": "object",
    "required": ["version", "instruments", "markets"],
    "additionalProperties": False,
    "properties": {
        "version": {"type": "integer", "minimum": 1},
        "instruments": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/instrument"}},
        "markets": {"type": "array", "items": {"$ref": "#/$defs/market"}},
    },
    "$defs": {
        "instrument": {
            "type": "object",
            "required": [
                "id",
                "symbol",
                "base",
                "quote",
                "tick_size",
                "lot_size",
                "price_precision",
                "status",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "symbol": {"type": "string", "pattern": "^[A-Z0-9]+-[A-Z]+$"},
                "base": {"type": "string", "pattern": "^[A-Z0-9]+$"},
                "quote": {"type": "string", "pattern": "^[A-Z]+$"},
                "tick_size": {"type": "number", "exclusiveMinimum": 0},
                "lot_size": {"type": "number", "exclusiveMinimum": 0},
                "price_precision": {"type": "integer", "minimum": 0, "maximum": 12},
                "status": {"enum": ["trading", "halted", "post_only"]},
            },
        },
        "market": {
            "type": "object",
            "required": ["id", "instrument", "type"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "minLength": 1},
                "instrument": {"type": "string"},
                "type": {"enum": ["spot", "margin"]},
            },
        },
    },
}


def instrument(ident: int, base: str, quote: str, spec: tuple[float, float, int]) -> dict[str, Any]:
    """One instrument record."""
    symbol = f"{base}-{quote}"
    return {
        "id": ident,
        "symbol": symbol,
        "base": base,
        "quote": quote,
        "tick_size": spec[0],
        "lot_size": spec[1],
        "price_precision": spec[2],
        "status": "halted" if symbol in HALTED else "trading",
    }


def markets_for(instruments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A spot market per instrument, plus margin markets for the majors."""
    spot = [{"id": f"spot:{i['symbol']}", "instrument": i["symbol"], "type": "spot"} for i in instruments]
    symbols = {i["symbol"] for i in instruments}
    margin = [{"id": f"margin:{s}", "instrument": s, "type": "margin"} for s in MARGIN if s in symbols]
    return spot + margin


def make_v1() -> dict[str, Any]:
    """The live version: 40 instruments, ordered USD pairs first so the probe symbols lead."""
    records = []
    for quote in QUOTES:
        for base, spec in BASES.items():
            records.append(instrument(len(records) + 1, base, quote, spec))
    return {"version": 1, "instruments": records, "markets": markets_for(records)}


def make_v2(v1: dict[str, Any]) -> dict[str, Any]:
    """The good upgrade: 2 instruments added, 2 tick sizes changed (4 of 40 records, 10%)."""
    doc = copy.deepcopy(v1)
    doc["version"] = 2
    by_symbol = {i["symbol"]: i for i in doc["instruments"]}
    by_symbol["ETH-USD"]["tick_size"] = 0.05
    by_symbol["SOL-USD"]["tick_size"] = 0.01
    next_id = len(doc["instruments"]) + 1
    doc["instruments"].append(instrument(next_id, "SUI", "USD", (0.0001, 0.1, 4)))
    doc["instruments"].append(instrument(next_id + 1, "ARB", "USD", (0.0001, 0.1, 4)))
    doc["markets"] = markets_for(doc["instruments"])
    return doc


def renamed_field(v2: dict[str, Any]) -> dict[str, Any]:
    """A serializer change: every instrument's tick_size is now tickSize."""
    doc = copy.deepcopy(v2)
    doc["instruments"] = [
        {("tickSize" if k == "tick_size" else k): v for k, v in i.items()} for i in doc["instruments"]
    ]
    return doc


def duplicate_symbol(v2: dict[str, Any]) -> dict[str, Any]:
    """A stale, halted BTC-USD record appended by a bad merge; the later record wins on load."""
    doc = copy.deepcopy(v2)
    stale = copy.deepcopy(doc["instruments"][0])
    stale.update(id=len(doc["instruments"]) + 1, status="halted")
    doc["instruments"].append(stale)
    return doc


def dangling_reference(v2: dict[str, Any]) -> dict[str, Any]:
    """A market for an instrument that was never added, placed first in the list."""
    doc = copy.deepcopy(v2)
    doc["markets"].insert(0, {"id": "spot:XRP-JPY", "instrument": "XRP-JPY", "type": "spot"})
    return doc


def zero_tick(v2: dict[str, Any]) -> dict[str, Any]:
    """BTC-USD's tick_size lost to a unit conversion that rounded it to 0."""
    doc = copy.deepcopy(v2)
    doc["instruments"][0]["tick_size"] = 0
    return doc


def half_removed(v2: dict[str, Any]) -> dict[str, Any]:
    """A truncated export: every second instrument (ETH-USD among them) and its markets gone."""
    doc = copy.deepcopy(v2)
    doc["instruments"] = doc["instruments"][::2]
    doc["markets"] = markets_for(doc["instruments"])
    return doc


def runtime_break(v2: dict[str, Any]) -> dict[str, Any]:
    """ETH-USD tick 0.005 instead of 0.05: valid on its own, finer than its 2-decimal precision.

    The gateway prices in integer minor units (10**price_precision); a tick of half a
    minor unit truncates to 0 there, so every ETH-USD order fails. Schema, invariants and
    change budget all accept it: only running the service shows the break.
    """
    doc = copy.deepcopy(v2)
    eth = next(i for i in doc["instruments"] if i["symbol"] == "ETH-USD")
    eth["tick_size"] = 0.005
    return doc


def render(doc: Any) -> str:
    """Stable, reviewable JSON."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def documents() -> dict[str, Any]:
    """Every file this script writes, by name."""
    v1 = make_v1()
    v2 = make_v2(v1)
    return {
        "schema.json": SCHEMA,
        "v1.json": v1,
        "v2.json": v2,
        "v2-renamed-field.json": renamed_field(v2),
        "v2-duplicate-symbol.json": duplicate_symbol(v2),
        "v2-dangling-reference.json": dangling_reference(v2),
        "v2-zero-tick.json": zero_tick(v2),
        "v2-half-removed.json": half_removed(v2),
        "v2-runtime-break.json": runtime_break(v2),
    }


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) the generated documents."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="fail if files differ")
    args = parser.parse_args(argv)
    stale = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, doc in documents().items():
        path = args.out / name
        text = render(doc)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date: " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
