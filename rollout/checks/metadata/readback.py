"""Read-back: whether what the live system serves equals what was intended, by digest, with a diff."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Final

from rollout.checks.metadata.document import document_digest

MAX_DIFF_LINES: Final = 200


@dataclass(frozen=True)
class ReadBack:
    """Whether the served document equals the intended one, with a diff when it does not."""

    equal: bool
    intended_digest: str
    served_digest: str
    diff: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "equal": self.equal,
            "intended_digest": self.intended_digest,
            "served_digest": self.served_digest,
            "diff": self.diff,
        }


def _pretty(doc: Any) -> list[str]:
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False).splitlines()


def read_back(intended: Any, served: Any, *, max_lines: int = MAX_DIFF_LINES) -> ReadBack:
    """Compare canonically what the live system serves with what was intended."""
    intended_digest = document_digest(intended)
    served_digest = document_digest(served)
    equal = intended_digest == served_digest
    diff = ""
    if not equal:
        lines = list(difflib.unified_diff(_pretty(intended), _pretty(served), "intended", "served", lineterm="", n=2))
        if len(lines) > max_lines:
            lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more diff lines)"]
        diff = "\n".join(lines)
    return ReadBack(equal, intended_digest, served_digest, diff)
