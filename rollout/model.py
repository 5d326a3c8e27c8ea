"""The plan as frozen data: Plan, Environment, Step, Check and their parts.

Pure data with validation, no I/O: the loader (planfile) turns YAML into these, the
engine reads them. Strings may hold `{{ var }}` templates; they are rendered per host by
the planfile module, never here.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from rollout.units import (
    DURATION_PATTERN,
    HOUR,
    MIN_DURATION,
    WEEK,
    Percent,
    format_duration,
    parse_duration,
    parse_percent,
)


def _duration_schema(minimum: float, maximum: float) -> dict[str, Any]:
    shortest = "0s" if minimum == 0 else format_duration(minimum)
    return {
        "anyOf": [
            {"type": "string", "pattern": DURATION_PATTERN},
            {"type": "number", "minimum": minimum, "maximum": maximum},
        ],
        "description": f"a duration: 500ms, 10s, 5m, 1h (or seconds as a number), from {shortest} to {format_duration(maximum)}",
    }


# The four kinds of duration in a plan, each with its bounds (README, "Durations"):
# Duration: how long one step (or its rollback) may run, 1ms..168h (a week).
Duration = Annotated[
    float,
    BeforeValidator(partial(parse_duration, minimum=MIN_DURATION, maximum=WEEK)),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_duration_schema(MIN_DURATION, WEEK)),
]
# ProbeDuration: a timeout or period of one probe (check, guard, connect, webhook), 1ms..1h.
ProbeDuration = Annotated[
    float,
    BeforeValidator(partial(parse_duration, minimum=MIN_DURATION, maximum=HOUR)),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_duration_schema(MIN_DURATION, HOUR)),
]
# Delay: a pause between attempts, where zero means "at once", 0..1h.
Delay = Annotated[
    float,
    BeforeValidator(partial(parse_duration, minimum=0.0, maximum=HOUR)),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_duration_schema(0.0, HOUR)),
]
# Bake: how long guards must stay green after a wave, where zero means no bake, 0..168h.
BakeDuration = Annotated[
    float,
    BeforeValidator(partial(parse_duration, minimum=0.0, maximum=WEEK)),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_duration_schema(0.0, WEEK)),
]


def _parse_count_or_percent(value: object) -> int | Percent:
    if isinstance(value, bool):
        raise ValueError("expected a host count or a percentage, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a count cannot be negative")
        return value
    return parse_percent(value)


CountOrPercent = Annotated[
    int | Percent,
    BeforeValidator(_parse_count_or_percent),
    PlainSerializer(lambda v: v if isinstance(v, int) else str(v)),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
            ]
        }
    ),
]


def _parse_wave(value: object) -> int | Percent | str:
    if isinstance(value, bool):
        raise ValueError("a wave is a host count, a percentage or a group name, not a boolean")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"a wave of {value} hosts is empty: use a count of at least 1")
        return value
    if isinstance(value, str):
        if "%" in value:
            return parse_percent(value)
        if re.fullmatch(r"[A-Za-z_][\w.-]*", value):
            return value
    raise ValueError(f"a wave is a host count (1), a percentage (25%) or a group name, got {value!r}")


WaveSize = Annotated[
    int | Percent | str,
    BeforeValidator(_parse_wave),
    PlainSerializer(lambda v: str(v) if isinstance(v, Percent) else v),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
                {"type": "string", "description": "a group name"},
            ]
        }
    ),
]

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]


class Model(BaseModel):
    """Base of every plan model: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# --- variables ---------------------------------------------------------------------


class SecretVar(Model):
    """A variable whose value never appears in the journal, reports or notifications."""

    value: str | None = None
    env: str | None = Field(default=None, description="read the value from this environment variable")
    secret: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> SecretVar:
        if (self.value is None) == (self.env is None):
            raise ValueError("a secret variable needs exactly one of 'value' or 'env'")
        return self


VarValue = str | int | float | bool | SecretVar


def _check_var_names(value: dict[str, VarValue]) -> dict[str, VarValue]:
    for name in value:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"variable name {name!r} must be letters, digits and _")
    return value


Vars = Annotated[dict[str, VarValue], AfterValidator(_check_var_names)]


# --- checks ------------------------------------------------------------------------


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
        return self

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


# --- steps, strategy, environments ------------------------------------------------


class Step(Model):
    """One change: run, then verify; rollback undoes it (or `rollback: none`)."""

    name: Name
    run: str
    verify: list[Check] = Field(default_factory=list)
    rollback: str = Field(description="the command that undoes this step, or 'none' if it is irreversible")
    timeout: Duration = 300.0
    rollback_timeout: Duration | None = None
    retries: int = Field(default=0, ge=0, le=100)
    retry_delay: Delay = 1.0

    @model_validator(mode="before")
    @classmethod
    def _rollback_required(cls, data: Any) -> Any:
        if isinstance(data, dict) and "rollback" not in data:
            raise ValueError(
                "a step needs 'rollback': the command that undoes it, or 'rollback: none' to mark it irreversible"
            )
        if isinstance(data, dict) and data.get("rollback") is None:
            return {**data, "rollback": "none"}
        return data

    @property
    def irreversible(self) -> bool:
        """True when the plan says `rollback: none`."""
        return self.rollback.strip().lower() == "none"


def _all_hosts_in_one_wave() -> list[int | Percent | str]:
    return [Percent(100.0)]


class Strategy(Model):
    """Waves, bake time, failure budget and concurrency."""

    waves: list[WaveSize] = Field(
        default_factory=_all_hosts_in_one_wave,
        description="cumulative targets: [1, 25%, 100%] = one host, then up to a quarter, then all",
    )
    bake: BakeDuration = 0.0
    failure_budget: CountOrPercent = Field(
        default=0, description="hosts that may fail (and are rolled back) before the run aborts"
    )
    concurrency: int | None = Field(default=None, ge=1, description="hosts at once within a wave")

    @field_validator("waves")
    @classmethod
    def _non_empty(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("waves must list at least one wave")
        return value


class SshOptions(Model):
    """How to reach ssh hosts; host keys are always checked against known_hosts."""

    user: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    identity_file: str | None = None
    known_hosts: str | None = None
    connect_timeout: ProbeDuration = 10.0


class Host(Model):
    """One target host."""

    address: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535, description="ssh port (overrides ssh.port)")
    user: str | None = None
    vars: Vars = Field(default_factory=dict)
    groups: list[str] = Field(default_factory=list)


class Environment(Model):
    """A named set of hosts with a connection and vars."""

    description: str | None = None
    connection: Literal["local", "ssh"] = "local"
    rehearsal: bool = Field(default=False, description="a rehearsal (demo) environment")
    ssh: SshOptions = Field(default_factory=SshOptions)
    vars: Vars = Field(default_factory=dict)
    facts: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="declared parity facts for this environment"
    )
    hosts: dict[Name, Host | None]

    @field_validator("hosts")
    @classmethod
    def _some_hosts(cls, value: dict[str, Host | None]) -> dict[str, Host | None]:
        if not value:
            raise ValueError("an environment needs at least one host")
        return value

    def host(self, name: str) -> Host:
        """The host spec (an empty spec where the plan wrote `name:` alone)."""
        return self.hosts[name] or Host()

    def groups(self) -> dict[str, list[str]]:
        """Group name -> host names, in plan order."""
        out: dict[str, list[str]] = {}
        for name in self.hosts:
            for group in self.host(name).groups:
                out.setdefault(group, []).append(name)
        return out


class ParityFact(Model):
    """A fact compared between environments: declared, or gathered by a command."""

    name: Name
    command: str | None = Field(default=None, description="gather the fact from each host")
    expect: Literal["equal", "declared"] = "equal"


class WebhookSink(Model):
    """POST Statuspage-shaped JSON to a URL."""

    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: ProbeDuration = 5.0
    retries: int = Field(default=3, ge=0, le=10)


class FileSink(Model):
    """Append Statuspage-shaped JSON documents to a file, one a line."""

    path: str


class Notify(Model):
    """A notification sink: exactly one of webhook or file."""

    webhook: WebhookSink | None = None
    file: FileSink | None = None
    component: str | None = Field(default=None, description="the status-page component name")

    @model_validator(mode="after")
    def _one(self) -> Notify:
        if (self.webhook is None) == (self.file is None):
            raise ValueError("a notify entry needs exactly one of 'webhook' or 'file'")
        return self


class FreezeWindow(Model):
    """A time window in which runs are refused (absolute, or weekly in UTC)."""

    reason: str | None = None
    start: str = Field(description="ISO timestamp, or HH:MM for a weekly window")
    end: str = Field(description="ISO timestamp, or HH:MM for a weekly window")
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(
        default=None, description="makes the window weekly: on these days, start..end UTC"
    )


class Plan(Model):
    """A declarative upgrade plan."""

    version: Literal[1] = 1
    name: Name
    description: str | None = None
    includes: list[str] = Field(default_factory=list)
    vars: Vars = Field(default_factory=dict)
    environments: dict[Name, Environment]
    parity: list[ParityFact] = Field(default_factory=list)
    prechecks: list[Check] = Field(default_factory=list)
    guards: list[Guard] = Field(default_factory=list)
    strategy: Strategy = Field(default_factory=Strategy)
    steps: list[Step]
    notify: list[Notify] = Field(default_factory=list)
    freeze: list[FreezeWindow] = Field(default_factory=list)

    @field_validator("environments")
    @classmethod
    def _some_environments(cls, value: dict[str, Environment]) -> dict[str, Environment]:
        if not value:
            raise ValueError("a plan needs at least one environment")
        return value

    @field_validator("steps")
    @classmethod
    def _some_steps(cls, value: list[Step]) -> list[Step]:
        if not value:
            raise ValueError("a plan needs at least one step")
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"step names must be unique: {', '.join(dupes)} used more than once")
        return value


def _compile_check(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
    return value
