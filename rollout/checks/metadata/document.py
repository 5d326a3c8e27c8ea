"""Reading a document (JSON or YAML bytes), its canonical JSON form and its digest.

The only module here that turns bytes into data; it raises `MetadataError` naming the
file (and line:column) when the input cannot be read at all. YAML goes through
`rollout.planfile`, the one module that imports yaml, and only when a document is YAML.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from rollout.errors import MetadataError


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MetadataError(f"duplicate key {key!r} in a JSON object")
            seen.add(key)
    return obj


def parse_document(data: bytes, *, fmt: Literal["json", "yaml", "auto"], name: str) -> Any:
    """Parse JSON or YAML bytes; MetadataError naming `name` (and line:column) if unreadable."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{name}: not UTF-8 (byte {exc.start})") from exc
    if fmt == "auto":
        fmt = "json" if text.lstrip()[:1] in ("{", "[") else "yaml"
    if fmt == "json":
        try:
            return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{name}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
        except MetadataError as exc:
            raise MetadataError(f"{name}: {exc}") from exc
        except (ValueError, RecursionError) as exc:
            raise MetadataError(f"{name}: invalid JSON: {exc}") from exc
    # Deferred: planfile is the one yaml importer, and JSON-only callers need not load it.
    from rollout.errors import PlanError
    from rollout.planfile import load_yaml_document

    try:
        return load_yaml_document(text, name)
    except PlanError as exc:
        raise MetadataError(str(exc)) from exc


def canonical_bytes(doc: Any) -> bytes:
    """The document as canonical JSON: sorted keys, no whitespace, UTF-8."""
    try:
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MetadataError(f"document is not plain JSON data: {exc}") from exc
    return text.encode("utf-8")


def document_digest(doc: Any) -> str:
    """sha256 hex of `canonical_bytes(doc)`: equal for equal data, whatever the formatting."""
    return hashlib.sha256(canonical_bytes(doc)).hexdigest()
