"""Start-up stays lean: help and validate never import the SSH, HTTP or JSON Schema libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("paramiko", "httpx", "jsonschema")


def _imported_modules(*args: str) -> set[str]:
    """Top-level packages a real `python -m rollout ARGS` process imports."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "rollout", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "rollout" in names  # the report was read, not empty
    return names


@pytest.mark.parametrize(
    "args",
    [("--help",), ("validate", "plans/order-gateway-metadata.yaml")],
    ids=["help", "validate"],
)
def test_start_up_does_not_import_ssh_http_or_json_schema_libraries(args: tuple[str, ...]) -> None:
    imported = _imported_modules(*args)

    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
