"""Environments and their hosts: where a plan runs, how to reach it, and parity facts.

Pure data with validation, no I/O.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rollout.model.base import Model, Name, ProbeDuration, Vars
from rollout.model.checks import DocumentSource

PROXY_JUMP_HELP = (
    "ProxyJump: jump hosts, comma-separated, each [user@]host[:port] and looked up in the ssh config; "
    "wins over the config's ProxyJump and ProxyCommand; 'none' connects directly"
)
PROXY_COMMAND_HELP = (
    "ProxyCommand: a command whose stdin/stdout reach the host (%h %p %r expanded); "
    "wins over the config's ProxyJump and ProxyCommand; 'none' connects directly"
)


def _check_one_proxy(jump: str | None, command: str | None) -> None:
    """A plan says how to reach a host one way: ProxyJump or ProxyCommand, not both at one level."""
    if jump is not None and command is not None:
        raise ValueError("set at most one of proxy_jump and proxy_command (OpenSSH would silently use one)")


class SshOptions(Model):
    """How to reach ssh hosts; host keys are always checked against known_hosts.

    Values left out here come from the OpenSSH client config (`config`), then from
    OpenSSH's defaults (port 22, the current user, ~/.ssh/known_hosts, 10 s to connect).
    """

    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    identity_file: str | None = None
    known_hosts: str | None = None
    connect_timeout: ProbeDuration | None = None
    config: str | None = Field(
        default=None,
        description="OpenSSH client config to read Host entries from (default ~/.ssh/config); 'none' reads none",
    )
    proxy_jump: str | None = Field(default=None, description=PROXY_JUMP_HELP)
    proxy_command: str | None = Field(default=None, description=PROXY_COMMAND_HELP)

    @model_validator(mode="after")
    def _one_proxy(self) -> SshOptions:
        _check_one_proxy(self.proxy_jump, self.proxy_command)
        return self


class Host(Model):
    """One target host."""

    address: str | None = Field(
        default=None,
        description="where to connect; without it, an ssh host's name must be a Host alias in the ssh config",
    )
    port: int | None = Field(default=None, ge=1, le=65535, description="ssh port (overrides ssh.port)")
    user: str | None = None
    proxy_jump: str | None = Field(default=None, description=PROXY_JUMP_HELP + " (overrides ssh.proxy_*)")
    proxy_command: str | None = Field(default=None, description=PROXY_COMMAND_HELP + " (overrides ssh.proxy_*)")
    vars: Vars = Field(default_factory=dict)
    groups: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_proxy(self) -> Host:
        _check_one_proxy(self.proxy_jump, self.proxy_command)
        return self


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
    become: bool = Field(default=False, description="run every step and check command through sudo")
    become_user: str = Field(default="root", min_length=1, description="sudo -u USER for become")
    become_password: str | None = Field(
        default=None,
        description="the login user's sudo password: '{{ NAME }}' of a secret variable; sent on stdin, never in argv",
    )

    @field_validator("become_password")
    @classmethod
    def _password_from_a_variable(cls, value: str | None) -> str | None:
        if value is not None and not BECOME_PASSWORD.fullmatch(value):
            raise ValueError(
                "become_password must name a secret variable, like '{{ sudo_password }}': "
                "a password written in the plan is no secret"
            )
        return value

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


#: The only form a become_password may take: one variable, which must be secret.
BECOME_PASSWORD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

PARITY_SOURCES = ("command", "http", "metadata")


class ParityHttp(Model):
    """Ask an HTTP endpoint from the orchestrator; the fact is one JSON field of the body (or the body)."""

    url: str
    json_path: str | None = Field(
        default=None, alias="json", description="JSON path ($.a.b[0]) of the value; without it, the body stripped"
    )
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("json_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("$"):
            raise ValueError(f"a JSON path starts with '$': {value!r}")
        return value


class ParityFact(Model):
    """A fact compared between environments: gathered on every host, or declared per environment.

    At most one source (`command`, `http`, `metadata`); without one, the value is each
    environment's `facts: {name: value}`. `expect: equal` wants one value everywhere,
    `expect: differ` shows the values and never calls them drift, and `template` wants each
    host's value to equal the template rendered for that host (`{{ env }}`, vars).
    """

    name: Name
    command: str | None = Field(default=None, description="a read-only command on each host; its stdout, stripped")
    http: ParityHttp | None = Field(default=None, description="an HTTP JSON field (or body), asked per host")
    metadata: DocumentSource | None = Field(
        default=None, description="a metadata document per host; the fact is its canonical digest (sha256:...)"
    )
    expect: Literal["equal", "differ"] = "equal"
    template: str | None = Field(
        default=None, description="each host's value must equal this, rendered for the host ({{ env }}, vars)"
    )
    timeout: ProbeDuration = 5.0

    @model_validator(mode="after")
    def _one_source(self) -> ParityFact:
        given = [k for k in PARITY_SOURCES if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"a parity fact has at most one of {', '.join(PARITY_SOURCES)} (found {', '.join(given)})")
        if self.template is not None and self.expect == "differ":
            raise ValueError("a parity fact compared by 'template' cannot also 'expect: differ'")
        return self

    @property
    def source(self) -> str:
        """Where the value comes from: command, http, metadata, or declared."""
        return next((k for k in PARITY_SOURCES if getattr(self, k) is not None), "declared")

    @property
    def mode(self) -> Literal["equal", "differ", "template"]:
        """How values are compared: equal, differ, or template."""
        return "template" if self.template is not None else self.expect
