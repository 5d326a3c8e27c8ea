"""Environments and their hosts: where a plan runs, how to reach it, and parity facts.

Pure data with validation, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rollout.model.base import Model, Name, ProbeDuration, Vars


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
