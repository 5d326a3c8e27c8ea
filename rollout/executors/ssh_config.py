"""Where an ssh host really is: the plan's values, then the OpenSSH client config, then defaults.

The host's name in the plan is the alias looked up in the config (as `ssh NAME` would).
`resolve_target` is pure and is the one place that decides precedence; the engine calls
it while preparing the schedule, so `rollout plan` shows exactly what the executor uses.
Reading the config file is the only I/O here, in `read_config`. This module must never
connect or guess an address: a host with no address and no Host entry is an error.
ProxyJump and ProxyCommand are not read here.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rollout.errors import ExecutorError
from rollout.executors.base import Target
from rollout.executors.faults import FaultTable, translate

if TYPE_CHECKING:
    import paramiko

DEFAULT_CONFIG = "~/.ssh/config"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_PORT = 22
DEFAULT_CONNECT_TIMEOUT = 10.0
#: `ssh: { config: none }` reads no config file at all.
NO_CONFIG = "none"


class SshConfigError(ExecutorError):
    """The ssh config cannot be read, or a host cannot be placed with it."""


#: Reading the config file (the environment's, not one host's: no host is named).
READ_CONFIG_FAULTS: FaultTable = {
    UnicodeDecodeError: (SshConfigError, "cannot read ssh config {path}: {exc}"),
    OSError: (SshConfigError, "cannot read ssh config {path}: {detail}"),
}


def _parse_faults() -> FaultTable:
    """Parsing it: paramiko's ConfigParseError, or unbalanced quotes on a Host line."""
    import paramiko

    return {
        paramiko.SSHException: (SshConfigError, "cannot parse ssh config {path}: {exc}"),
        ValueError: (SshConfigError, "cannot parse ssh config {path}: {exc}"),
    }


@dataclass(frozen=True)
class HostEntry:
    """What an ssh config says about one alias: paramiko's lookup (lower-case keys)."""

    config_path: str | None  # None when no config file was read
    matched: bool  # a Host line other than the catch-all `*` names this alias
    options: Mapping[str, str | list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class SshConfig:
    """One parsed ssh config file (or none), ready for lookups."""

    path: str | None
    text: str = ""

    def entry(self, alias: str) -> HostEntry:
        """What this config says about `alias`."""
        if self.path is None:
            return HostEntry(config_path=None, matched=False)
        with translate(_parse_faults(), host="", path=self.path):
            options: dict[str, str | list[str]] = dict(_parsed(self.text).lookup(alias))
            matched = alias_matched(self.text, alias)
        return HostEntry(config_path=self.path, matched=matched, options=options)


def read_config(setting: str | None) -> SshConfig:
    """The config named by `ssh: { config: }`: ~/.ssh/config when unset (absent is fine), none for 'none'."""
    if setting is not None and setting.strip().lower() == NO_CONFIG:
        return SshConfig(path=None)
    path = os.path.expanduser(setting or DEFAULT_CONFIG)
    if not os.path.lexists(path):
        if setting is None:
            return SshConfig(path=None)
        raise SshConfigError(f"ssh config {path} does not exist")
    with translate(READ_CONFIG_FAULTS, host="", path=path), open(path, encoding="utf-8") as handle:
        text = handle.read()
    return SshConfig(path=path, text=text)


def alias_matched(text: str, alias: str) -> bool:
    """True when a `Host` line names `alias` through a pattern other than the catch-all `*`.

    A `Host *` block sets defaults for every host; it does not say where a host is, so it
    does not count. Negated patterns (`!pat`) exclude the alias from their line.
    """
    for patterns in _host_lines(text):
        if any(p.startswith("!") and fnmatch.fnmatchcase(alias, p[1:]) for p in patterns):
            continue
        if any(p != "*" and not p.startswith("!") and fnmatch.fnmatchcase(alias, p) for p in patterns):
            return True
    return False


# A fleet's config names every host, and the engine asks about each of them: parsing the
# whole file once per host made preparing 100 aliases cost 1.5 s. Keyed by the text, so an
# edited file is parsed again.
@functools.lru_cache(maxsize=8)
def _parsed(text: str) -> paramiko.SSHConfig:
    """paramiko's parse of a config text (lookups copy what they return, so it can be shared)."""
    # paramiko is loaded only when there is a config file to parse, so validating a
    # plan on a machine without one stays lean.
    import paramiko

    return paramiko.SSHConfig.from_text(text)


@functools.lru_cache(maxsize=8)
def _host_lines(text: str) -> tuple[tuple[str, ...], ...]:
    """The patterns of every `Host` line, in order."""
    lines = []
    for raw in text.splitlines():
        words = shlex.split(raw, comments=True) if raw.strip() else []
        if len(words) >= 2 and words[0].lower() == "host":
            lines.append(tuple(p for w in words[1:] for p in w.split(",") if p))
    return tuple(lines)


def _first(value: str | list[str] | None) -> str | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _all(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _seconds(entry: HostEntry, key: str) -> float | None:
    raw = _first(entry.options.get(key))
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SshConfigError(f"{entry.config_path}: {key} {raw!r} is not a number of seconds") from None
    return value


def resolve_target(
    name: str,
    entry: HostEntry,
    *,
    address: str | None,
    port: int | None,
    user: str | None,
    identity_file: str | None,
    known_hosts: str | None,
    connect_timeout: float | None,
) -> Target:
    """The ssh Target for host `name`: the plan's values win, then the ssh config's, then defaults."""
    options = entry.options
    if address is None and not entry.matched:
        where = f"no Host entry in {entry.config_path}" if entry.config_path else "no ssh config was read"
        raise SshConfigError(
            f"ssh host '{name}' has no address and {where} names it; "
            f"set 'address:' on the host or add 'Host {name}' with a HostName to the ssh config"
        )
    config_port = _first(options.get("port"))
    try:
        resolved_port = port or (int(config_port) if config_port else DEFAULT_PORT)
    except ValueError:
        raise SshConfigError(f"{entry.config_path}: Port {config_port!r} of '{name}' is not a number") from None
    keys = [identity_file] if identity_file else [os.path.expanduser(p) for p in _all(options.get("identityfile"))]
    # UserKnownHostsFile may list several files; the first is the one we read.
    config_known = (_first(options.get("userknownhostsfile")) or "").split()
    known = known_hosts or (config_known[0] if config_known else None)
    return Target(
        name=name,
        connection="ssh",
        address=address or _first(options.get("hostname")) or name,
        port=resolved_port,
        user=user or _first(options.get("user")),
        identity_file=keys[0] if keys else None,
        identity_files=tuple(keys),
        known_hosts=os.path.expanduser(known) if known else None,
        connect_timeout=connect_timeout or _seconds(entry, "connecttimeout") or DEFAULT_CONNECT_TIMEOUT,
        identities_only=str(_first(options.get("identitiesonly")) or "no").lower() == "yes",
        server_alive_interval=_seconds(entry, "serveraliveinterval") or 0.0,
    )
