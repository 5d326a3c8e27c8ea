"""What a metadata check finds: a `Violation` (JSON path, rule, message) and the caps on showing them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MAX_SHOWN: Final = 50
MAX_MESSAGE_CHARS: Final = 300


@dataclass(frozen=True)
class Violation:
    """One problem with a document: where (JSON path), which rule, and what is wrong."""

    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        """JSON-friendly form."""
        return {"path": self.path, "rule": self.rule, "message": self.message}
