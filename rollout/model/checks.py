"""Checks and guards: read-only tests with a verdict (command, http, tcp, metadata).

Pure data with validation, no I/O: the checks package runs them, this module only says
what to ask and what a pass looks like.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rollout.model.base import CountOrPercent, Delay, Model, ProbeDuration


class CommandCheck(Model):
    """Run a read-only command on the host; pass on the expected exit code and output."""

    run: str
    exit_code: int = 0
    stdout: str | None = Field(default=None, description="regex the stdout must match")
    stderr: str | None = Field(default=None, description="regex the stderr must match")

    @field_validator("stdout", "stderr")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _compile_check(value)


class HttpCheck(Model):
    """Ask an HTTP endpoint from the orchestrator; pass on status, body and JSON values."""

    url: str
    method: Literal["GET", "HEAD", "POST", "PUT"] = "GET"
    status: int | list[int] = 200
    body: str | None = Field(default=None, description="regex the body must match")
    json_equals: dict[str, Any] = Field(
        default_factory=dict,
        alias="json",
        description="JSON paths ($.a.b[0]) and the values they must equal",
    )
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("body")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _compile_check(value)


class TcpCheck(Model):
    """Connect to a TCP port from the orchestrator."""

    host: str = "{{ address }}"
    port: int | str


class DocumentSource(Model):
    """Where a metadata document comes from: exactly one of the four."""

    file: str | None = Field(default=None, description="a file on the orchestrator (relative to the plan)")
    host_file: str | None = Field(default=None, description="a file on the target host")
    command: str | None = Field(default=None, description="a command on the target host; its stdout")
    url: str | None = Field(default=None, description="an HTTP(S) URL; its body")
    format: Literal["json", "yaml", "auto"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"file": data}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> DocumentSource:
        given = [k for k in ("file", "host_file", "command", "url") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a document source needs exactly one of file, host_file, command, url")
        return self


class Reference(Model):
    """Every value at `source` must exist among the values at `target`."""

    source: str = Field(alias="from")
    target: str = Field(alias="to")


class Bound(Model):
    """Numeric bounds or an enum for the values at a key path."""

    path: str
    min: float | None = None
    max: float | None = None
    exclusive_min: float | None = None
    one_of: list[Any] | None = None


class MetadataCheck(Model):
    """Validate a metadata document: schema, invariants, change budget, read-back."""

    source: DocumentSource
    schema_file: str | None = Field(default=None, alias="schema", description="a JSON Schema file")
    unique: list[str] = Field(default_factory=list)
    references: list[Reference] = Field(default_factory=list)
    non_empty: list[str] = Field(default_factory=list)
    immutable: list[str] = Field(default_factory=list)
    bounds: list[Bound] = Field(default_factory=list)
    baseline: DocumentSource | None = Field(default=None, description="compare against this document")
    key: str | None = Field(default=None, description="key path of records, e.g. instruments[].symbol")
    max_changed: CountOrPercent | None = None
    allow_added: bool = True
    allow_removed: bool = False
    equals: DocumentSource | None = Field(
        default=None, description="read-back: the source must equal this intended document"
    )

    @model_validator(mode="after")
    def _budget_needs_key(self) -> MetadataCheck:
        if (self.max_changed is not None or self.immutable) and self.baseline is None:
            raise ValueError("max_changed and immutable need a 'baseline' to compare against")
        if self.baseline is not None and self.key is None:
            raise ValueError("a baseline comparison needs 'key' (e.g. instruments[].symbol)")
        return self


CHECK_KINDS = ("command", "http", "tcp", "metadata")


def _command_shorthand_schema(schema: dict[str, Any]) -> None:
    # `command: test -f x` is accepted as {run: ...}; the schema must accept it too.
    schema.setdefault("anyOf", []).insert(0, {"type": "string", "description": "shorthand for {run: COMMAND}"})


class Check(Model):
    """A read-only test with a verdict; exactly one of command, http, tcp, metadata."""

    name: str | None = None
    command: CommandCheck | None = Field(default=None, json_schema_extra=_command_shorthand_schema)
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    metadata: MetadataCheck | None = None
    timeout: ProbeDuration = 10.0
    retries: int = Field(default=0, ge=0, le=100)
    interval: Delay = 1.0
    become: bool | None = Field(
        default=None, description="run the command through sudo; default: the environment's 'become'"
    )
    become_user: str | None = Field(default=None, min_length=1, description="sudo -u USER (default root)")

    @model_validator(mode="before")
    @classmethod
    def _command_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("command"), str):
            return {**data, "command": {"run": data["command"]}}
        return data

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Check:
        given = [k for k in CHECK_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"a check needs exactly one of {', '.join(CHECK_KINDS)} (found {found})")
        if self.timeout <= 0:
            raise ValueError("a check's timeout must be above zero")
        if (self.become or self.become_user) and not self.runs_on_host:
            raise ValueError(
                "become applies to commands on the host (a command check, a metadata command source): "
                "http and tcp checks run from the orchestrator, and host_file is read over SFTP as the login user"
            )
        return self

    @property
    def runs_on_host(self) -> bool:
        """True when the check runs a command on the host (a command check, or a metadata command source)."""
        if self.command is not None:
            return True
        return self.metadata is not None and any(
            s is not None and s.command is not None
            for s in (self.metadata.source, self.metadata.baseline, self.metadata.equals)
        )

    @property
    def kind(self) -> str:
        """Which of command, http, tcp, metadata this check is."""
        return next(k for k in CHECK_KINDS if getattr(self, k) is not None)

    @property
    def label(self) -> str:
        """The check's name, or a description derived from what it asks."""
        if self.name:
            return self.name
        if self.command is not None:
            return f"command: {self.command.run}"
        if self.http is not None:
            return f"http: {self.http.url}"
        if self.tcp is not None:
            return f"tcp: {self.tcp.host}:{self.tcp.port}"
        return "metadata"


class Guard(Check):
    """A check that runs continuously on every host from the first change to the last bake."""

    every: ProbeDuration = 1.0
    fail_after: int = Field(default=3, description="consecutive failures that trip an abort")
    timeout: ProbeDuration = 2.0

    @model_validator(mode="after")
    def _guard_bounds(self) -> Guard:
        if self.fail_after < 1:
            raise ValueError("fail_after must be at least 1: a guard that can never trip guards nothing")
        if self.every <= 0:
            raise ValueError("a guard's 'every' must be above zero")
        return self


def _compile_check(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
    return value
