"""Where an ssh host really is: the plan's values, then the OpenSSH client config, then defaults.

The host's name in the plan is the alias looked up in the config (as `ssh NAME` would).
`resolve_target` is pure and is the one place that decides precedence; the engine calls
it while preparing the schedule, so `rollout plan` shows exactly what the executor uses.
Reading the config file is the only I/O here, in `read_config`. This module must never
connect or guess an address: a host with no address and no Host entry is an error.
ProxyJump and ProxyCommand come from the plan (`proxy_jump`, `proxy_command`; `none`
connects directly) or else from the config, where, as in OpenSSH, whichever of the two
comes first wins. Each jump host is placed through the same config as an alias of its
own (its HostName, User, Port, IdentityFile, UserKnownHostsFile); a jump host's own
ProxyJump or ProxyCommand is not followed: list every hop instead.
"""

from __future__ import annotations

import fnmatch
import functools
import getpass
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
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
    # ProxyCommand none is kept as None, so that it still comes first when it does.
    options: Mapping[str, str | list[str] | None] = field(default_factory=dict)


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
            options: dict[str, str | list[str] | None] = dict(_lookup(self.text, alias))
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
        names = _plain_names(patterns)
        if names is not None:
            if alias in names:
                return True
            continue
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


def _lookup(text: str, alias: str) -> paramiko.SSHConfigDict:
    """paramiko's lookup of `alias`, on the part of the config that can apply to it.

    paramiko walks every block twice per lookup: for a fleet's config of one Host block per
    host that made preparing 100 hosts cost 0.4 s. A Host block whose patterns do not match
    the alias is skipped by both passes, so leaving it out changes nothing; Match blocks
    depend on what earlier blocks set, and are all kept. With CanonicalizeHostname the
    second pass looks up another name, so such a config is looked up whole.
    """
    whole = _parsed(text)  # parsed once per file, so that a bad line anywhere is an error for every host
    preamble, blocks, canonical = _blocks(text)
    if canonical:
        return whole.lookup(alias)
    import paramiko

    kept = "".join(body for patterns, body in blocks if patterns is None or _host_matches(patterns, alias))
    return paramiko.SSHConfig.from_text(preamble + kept).lookup(alias)


@functools.lru_cache(maxsize=8)
def _blocks(text: str) -> tuple[str, tuple[tuple[tuple[str, ...] | None, str], ...], bool]:
    """The config cut where paramiko starts a block: the lines before the first, then each
    block's Host patterns (None for a Match block) and text; and whether it canonicalizes."""
    import paramiko

    preamble: list[str] = []
    blocks: list[tuple[tuple[str, ...] | None, list[str]]] = []
    canonical = False
    for line in text.splitlines(keepends=True):
        setting = re.match(paramiko.SSHConfig.SETTINGS_REGEX, line.strip())
        key = setting.group(1).lower() if setting else ""
        canonical = canonical or key == "canonicalizehostname"
        if setting and key in ("host", "match"):
            patterns = tuple(shlex.split(setting.group(2))) if key == "host" else None
            blocks.append((patterns, [line]))
        elif blocks:
            blocks[-1][1].append(line)
        else:
            preamble.append(line)
    return "".join(preamble), tuple((p, "".join(body)) for p, body in blocks), canonical


def _host_matches(patterns: tuple[str, ...], alias: str) -> bool:
    """A Host line's match, as paramiko decides it: no negated pattern matches, and one other does."""
    names = _plain_names(patterns)
    if names is not None:
        return alias in names
    if any(p.startswith("!") and fnmatch.fnmatch(alias, p[1:]) for p in patterns):
        return False
    return any(not p.startswith("!") and fnmatch.fnmatch(alias, p) for p in patterns)


@functools.lru_cache(maxsize=4096)
def _plain_names(patterns: tuple[str, ...]) -> frozenset[str] | None:
    """A Host line's patterns as a set when all are plain names (a fleet's usual config), else None.

    A pattern without `*`, `?`, `[` or a leading `!` matches only itself: one set lookup
    per block instead of fnmatch on every pattern.
    """
    if any(c in p for p in patterns for c in "*?[!"):
        return None
    return frozenset(patterns)


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
    proxy_jump: str | None = None,
    proxy_command: str | None = None,
    lookup: Callable[[str], HostEntry] | None = None,
) -> Target:
    """The ssh Target for host `name`: the plan's values win, then the ssh config's, then defaults.

    `lookup` finds the config entry of each jump host (by default, none: hops are placed as written).
    """
    target = _place(
        name,
        entry,
        address=address,
        port=port,
        user=user,
        identity_file=identity_file,
        known_hosts=known_hosts,
        connect_timeout=connect_timeout,
    )
    jump, command = _proxy_choice(entry, proxy_jump, proxy_command)
    if command is not None:
        # The config's ProxyCommand arrives expanded by paramiko's parser; the plan's is expanded here.
        from_plan = proxy_command is not None
        return replace(target, proxy_command=expand_tokens(command, target) if from_plan else command)
    if jump is None:
        return target
    hops: list[Target] = []
    for spec in [h.strip() for h in jump.split(",")]:
        hops.append(_hop(name, spec, tuple(hops), lookup, identity_file, known_hosts, connect_timeout))
    return replace(target, jumps=tuple(hops))


def _place(
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
    """Address, port, user, keys and known_hosts of one host, without its proxy."""
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


def _is_none(value: str | None) -> bool:
    return value is None or value.strip().lower() == NO_CONFIG


def _proxy_choice(entry: HostEntry, jump: str | None, command: str | None) -> tuple[str | None, str | None]:
    """(ProxyJump, ProxyCommand), at most one set: the plan's if it names either, else the config's first."""
    if jump is not None or command is not None:
        return (None if _is_none(jump) else jump), (None if _is_none(command) else command)
    # paramiko keeps each option where it was first obtained, so the first of the two is OpenSSH's choice.
    for key, value in entry.options.items():
        if key == "proxyjump":
            raw = _first(value)
            return (None if _is_none(raw) else raw), None
        if key == "proxycommand":
            raw = _first(value)
            return None, (None if _is_none(raw) else raw)
    return None, None


def expand_tokens(command: str, target: Target) -> str:
    """OpenSSH's ProxyCommand tokens for `target`: %h hostname, %p port, %r remote user, %n alias, %% a percent."""
    values = {"h": target.address, "p": str(target.port), "r": target.user or getpass.getuser(), "n": target.name}
    out: list[str] = []
    chars = iter(command)
    for char in chars:
        if char != "%":
            out.append(char)
            continue
        letter = next(chars, "")
        if letter == "%":
            out.append("%")
        elif letter in values:
            out.append(values[letter])
        else:
            raise SshConfigError(f"proxy_command of '{target.name}': unknown token %{letter} (known: %h %p %r %n %%)")
    return "".join(out)


def parse_hop(spec: str) -> tuple[str | None, str, int | None]:
    """One ProxyJump hop, `[user@]host[:port]` (or ssh://...; [v6]:port), as (user, host, port)."""
    text = spec.removeprefix("ssh://")
    user, _, hostport = text.rpartition("@")
    port_text: str | None = None
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")
    else:
        host = hostport
    if not host or (user == "" and "@" in text):
        raise SshConfigError(f"ProxyJump hop '{spec}' is not [user@]host[:port]")
    try:
        port = int(port_text) if port_text else None
    except ValueError:
        raise SshConfigError(f"ProxyJump hop '{spec}': port {port_text!r} is not a number") from None
    if port is not None and not 1 <= port <= 65535:
        raise SshConfigError(f"ProxyJump hop '{spec}': port {port} is out of range")
    return user or None, host, port


def _hop(
    name: str,
    spec: str,
    before: tuple[Target, ...],
    lookup: Callable[[str], HostEntry] | None,
    identity_file: str | None,
    known_hosts: str | None,
    connect_timeout: float | None,
) -> Target:
    """A jump host, placed as OpenSSH places it: its own Host entry, then the plan's keys and known_hosts."""
    if not spec:
        raise SshConfigError(f"the ProxyJump of '{name}' has an empty hop")
    user, host, port = parse_hop(spec)
    entry = lookup(host) if lookup is not None else HostEntry(config_path=None, matched=False)
    hop = _place(
        host,
        entry,
        address=None if entry.matched else host,
        port=port,
        user=user,
        identity_file=None,
        known_hosts=None,
        connect_timeout=connect_timeout,
    )
    # The environment's key and known_hosts serve the bastion too, unless its own entry names others.
    if not hop.identity_files and identity_file:
        hop = replace(hop, identity_file=identity_file, identity_files=(identity_file,))
    if hop.known_hosts is None and known_hosts:
        hop = replace(hop, known_hosts=known_hosts)
    return replace(hop, jumps=before)
