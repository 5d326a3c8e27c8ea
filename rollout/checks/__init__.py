"""Check kinds: pure evaluation of what an executor or probe returned, and metadata validation.

A check is "what to ask" (the model) plus a pure `evaluate_*` over what came back; the
asking is done elsewhere (executors for commands, `rollout.checks.http` for HTTP and TCP).
Nothing here performs I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rollout.model import CommandCheck, HttpCheck

EXCERPT = 400


@dataclass(frozen=True)
class Verdict:
    """A check's outcome: pass or fail, one line saying why, and the observed values."""

    ok: bool
    summary: str
    observed: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """For the journal."""
        return {"ok": self.ok, "summary": self.summary, **self.observed}


class CommandOutput(Protocol):
    """What a command check needs from an executor's result."""

    @property
    def exit_code(self) -> int | None: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...
    @property
    def timed_out(self) -> bool: ...
    @property
    def duration(self) -> float: ...


@dataclass(frozen=True)
class HttpObservation:
    """What an HTTP probe saw: a status and body, or the error that prevented one."""

    status: int | None
    body: str = ""
    error: str | None = None
    elapsed: float = 0.0


@dataclass(frozen=True)
class TcpObservation:
    """Whether a TCP connect succeeded, and the error if not."""

    connected: bool
    error: str | None = None
    elapsed: float = 0.0


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """The last `limit` characters of output, for the journal."""
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def evaluate_command(spec: CommandCheck, result: CommandOutput) -> Verdict:
    """Pass when the exit code and the stdout/stderr patterns match."""
    observed = {
        "exit_code": result.exit_code,
        "stdout": excerpt(result.stdout),
        "stderr": excerpt(result.stderr),
        "elapsed": round(result.duration, 3),
    }
    if result.timed_out:
        return Verdict(False, f"timed out after {result.duration:.1f}s", observed)
    if result.exit_code != spec.exit_code:
        tail = excerpt(result.stderr or result.stdout, 160)
        why = f"exit code {result.exit_code}, expected {spec.exit_code}"
        return Verdict(False, f"{why}: {tail}" if tail else why, observed)
    if spec.stdout is not None and not re.search(spec.stdout, result.stdout, re.MULTILINE):
        return Verdict(False, f"stdout does not match /{spec.stdout}/", observed)
    if spec.stderr is not None and not re.search(spec.stderr, result.stderr, re.MULTILINE):
        return Verdict(False, f"stderr does not match /{spec.stderr}/", observed)
    return Verdict(True, f"exit code {result.exit_code}", observed)


_PATH_TOKEN = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[['\"]([^'\"]+)['\"]\]")


def json_path_get(document: Any, path: str) -> Any:
    """`$.a.b[0]` in a parsed JSON document; raises KeyError when absent."""
    if not path.startswith("$"):
        raise KeyError(f"a JSON path starts with '$': {path!r}")
    rest = path[1:]
    value = document
    pos = 0
    while pos < len(rest):
        m = _PATH_TOKEN.match(rest, pos)
        if m is None:
            raise KeyError(f"cannot read JSON path {path!r} at {rest[pos:]!r}")
        key, index, quoted = m.groups()
        if index is not None:
            if not isinstance(value, list) or int(index) >= len(value):
                raise KeyError(path)
            value = value[int(index)]
        else:
            name = key if key is not None else quoted
            if not isinstance(value, dict) or name not in value:
                raise KeyError(path)
            value = value[name]
        pos = m.end()
    return value


def _json_mismatch(json_equals: Mapping[str, Any], body: str) -> str | None:
    """Why the body fails the `json_equals` values (the first one that does), or None."""
    try:
        document = json.loads(body)
    except ValueError:
        return "body is not JSON"
    for path, expected in json_equals.items():
        try:
            actual = json_path_get(document, path)
        except KeyError:
            return f"{path} is missing"
        if actual != expected:
            return f"{path} is {json.dumps(actual)}, expected {json.dumps(expected)}"
    return None


def evaluate_http(spec: HttpCheck, obs: HttpObservation) -> Verdict:
    """Pass when the status, body pattern and JSON values all match."""
    observed: dict[str, Any] = {"status": obs.status, "elapsed": round(obs.elapsed, 3)}
    if obs.error is not None:
        observed["error"] = obs.error
        return Verdict(False, obs.error, observed)
    statuses = spec.status if isinstance(spec.status, list) else [spec.status]
    if obs.status not in statuses:
        observed["body"] = excerpt(obs.body, 200)
        wanted = " or ".join(str(s) for s in statuses)
        return Verdict(False, f"status {obs.status}, expected {wanted}", observed)
    if spec.body is not None and not re.search(spec.body, obs.body, re.MULTILINE):
        observed["body"] = excerpt(obs.body, 200)
        return Verdict(False, f"body does not match /{spec.body}/", observed)
    if spec.json_equals:
        why = _json_mismatch(spec.json_equals, obs.body)
        if why is not None:
            observed["body"] = excerpt(obs.body, 200)
            return Verdict(False, why, observed)
    return Verdict(True, f"status {obs.status}", observed)


def evaluate_tcp(obs: TcpObservation) -> Verdict:
    """Pass when the connection was accepted."""
    observed = {"elapsed": round(obs.elapsed, 3)}
    if obs.connected:
        return Verdict(True, "connected", observed)
    return Verdict(False, obs.error or "connection failed", {**observed, "error": obs.error})
