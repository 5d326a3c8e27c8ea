"""Trust on first use, done deliberately: the host keys an environment's ssh hosts offer, and recording confirmed ones.

`scan` places every host exactly as `rollout plan` shows it (the same schedule: addresses
from the ssh config, ports, the known_hosts file each host uses), fetches each distinct
endpoint's key once, in parallel (bounded by the plan's concurrency) under one overall
deadline, without authenticating, and says per host: known, new, changed, unreachable, or
local. `record` appends the new keys to the known_hosts files a run will read.

Nothing here prompts or prints. A changed key is never replaced, and a run never calls
`record`: adding a key is always the operator's decision.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rollout.errors import ExecutorError, RolloutError

if TYPE_CHECKING:
    from rollout.executors.base import Target
    from rollout.executors.ssh_hostkey import KeyVerdict

#: How long a whole scan may take unless the caller says otherwise.
DEFAULT_DEADLINE = 60.0
#: How soon the waiting loop notices an interrupt.
POLL = 0.05

State = Literal["known", "new", "changed", "unreachable", "local"]
#: (address, port, known_hosts file): hosts that share all three are fetched once.
Endpoint = tuple[str, int, str]


@dataclass(frozen=True)
class TrustRow:
    """One host of the environment: where it is, the key it offers and what known_hosts says of it."""

    host: str
    state: State
    endpoint: str | None = None
    known_hosts: str | None = None
    key_type: str | None = None
    fingerprint: str | None = None
    known_key_type: str | None = None  # what known_hosts holds instead (changed)
    known_fingerprint: str | None = None
    reason: str | None = None  # why it is unreachable
    name: str | None = None  # the host as known_hosts files it: `host` or `[host]:port`
    line: str | None = None  # the known_hosts line that would record the offered key (new)

    @property
    def remove_command(self) -> str | None:
        """For a changed key: the command that forgets the recorded one (run only once the change is verified)."""
        if self.state != "changed" or self.name is None:
            return None
        return f"ssh-keygen -R '{self.name}' -f {self.known_hosts}"

    def to_dict(self) -> dict[str, Any]:
        """The row as data (for --json)."""
        return {**asdict(self), "remove_command": self.remove_command}


@dataclass(frozen=True)
class TrustScan:
    """Every host of one environment with its key verdict; `interrupted` when the scan was stopped."""

    plan: str
    environment: str
    rows: tuple[TrustRow, ...]
    interrupted: bool = False

    def having(self, state: State) -> list[TrustRow]:
        """The rows in `state`, in the environment's host order."""
        return [row for row in self.rows if row.state == state]

    def to_load(self) -> dict[str, list[str]]:
        """The new lines per known_hosts file, each once (hosts sharing an endpoint share a line)."""
        out: dict[str, list[str]] = {}
        for row in self.having("new"):
            assert row.known_hosts is not None
            assert row.line is not None
            lines = out.setdefault(row.known_hosts, [])
            if row.line not in lines:
                lines.append(row.line)
        return out


def scan(
    plan: Path | str,
    env: str,
    *,
    overrides: Mapping[str, str] | None = None,
    abort: threading.Event | None = None,
    deadline: float = DEFAULT_DEADLINE,
) -> TrustScan:
    """Fetch the host key of every ssh host of `env` (no login) and judge it against its known_hosts file.

    Returns within `deadline` seconds (plus a poll interval); hosts not reached by then are
    unreachable. When `abort` is set the scan returns at once, marked interrupted.
    PlanError / UsageError for a bad plan or an unknown environment.
    """
    from rollout.api.plans import schedule
    from rollout.model import DEFAULT_CONCURRENCY

    planned = schedule(plan, env, overrides=overrides)
    hosts = {name: host.target for name, host in planned.hosts.items()}
    # Jump hosts first: a host behind one is reached only once its jump hosts' keys are known.
    jumps = {hop.name: hop for t in hosts.values() if t.connection == "ssh" for hop in t.jumps if hop.name not in hosts}
    targets = {**jumps, **hosts}
    endpoints = {name: _endpoint(t) for name, t in targets.items() if t.connection == "ssh"}
    unique: dict[Endpoint, Target] = {}
    for name, endpoint in endpoints.items():
        unique.setdefault(endpoint, targets[name])
    stop = abort if abort is not None else threading.Event()
    concurrency = planned.loaded.plan.strategy.concurrency or DEFAULT_CONCURRENCY
    found = _fetch_all(unique, stop, time.monotonic() + deadline, concurrency)
    rows = tuple(
        _row(name, t, endpoints.get(name), found) if t.connection == "ssh" else TrustRow(host=name, state="local")
        for name, t in targets.items()
    )
    return TrustScan(plan=planned.plan_name, environment=env, rows=rows, interrupted=stop.is_set())


def record(trust_scan: TrustScan) -> dict[str, list[str]]:
    """Append the scan's new keys to their known_hosts files; return the lines written, per file."""
    from rollout.executors.ssh_hostkey import append_known_hosts

    written: dict[str, list[str]] = {}
    for path, lines in trust_scan.to_load().items():
        appended = append_known_hosts(path, lines)
        if appended:
            written[path] = appended
    return written


def _endpoint(target: Target) -> Endpoint:
    """Where a host's key comes from and which file judges it: the file the SSH executor reads."""
    known_hosts = target.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
    return (target.address, target.port, known_hosts)


def _row(host: str, target: Target, endpoint: Endpoint | None, found: Mapping[Endpoint, KeyVerdict | str]) -> TrustRow:
    """One ssh host's row from what its endpoint's fetch found (a verdict, or why it failed)."""
    from rollout.executors.ssh_hostkey import known_hosts_line, known_hosts_name

    assert endpoint is not None
    address, port, known_hosts = endpoint
    common: dict[str, Any] = {
        "host": host,
        "endpoint": target.endpoint,
        "known_hosts": known_hosts,
        "name": known_hosts_name(address, port),
    }
    result = found.get(endpoint, "not reached: interrupted")
    if isinstance(result, str):
        return TrustRow(state="unreachable", reason=result, **common)
    known = result.known
    return TrustRow(
        state=result.state,
        key_type=result.offered.key_type,
        fingerprint=result.offered.fingerprint,
        known_key_type=known.key_type if known else None,
        known_fingerprint=known.fingerprint if known else None,
        line=known_hosts_line(address, port, result.offered) if result.state == "new" else None,
        **common,
    )


def _fetch_all(
    targets: Mapping[Endpoint, Target], abort: threading.Event, deadline: float, concurrency: int
) -> dict[Endpoint, KeyVerdict | str]:
    """Fetch every endpoint's key on at most `concurrency` threads; each endpoint's verdict or failure reason.

    The threads are daemons and every fetch is bounded by the deadline and the abort, so
    returning early (an interrupt) never waits for a slow host or keeps the process alive.
    An endpoint with no answer when the deadline passes is "not reached".
    """
    from rollout.executors.ssh_hostkey import fetch_host_key

    results: dict[Endpoint, KeyVerdict | str] = {}
    failures: list[BaseException] = []
    pending = list(targets)
    lock = threading.Lock()
    finished = threading.Event()
    if not pending:
        return results

    def work() -> None:
        while True:
            with lock:
                if not pending:
                    return
                endpoint = pending.pop(0)
            result: KeyVerdict | str
            try:
                result = fetch_host_key(targets[endpoint], endpoint[2], abort=abort, deadline=deadline)
            except ExecutorError as exc:
                # the row names its own host; the endpoint may serve several
                result = str(exc).removeprefix(f"{exc.host}: ") if exc.host else str(exc)
            except RolloutError as exc:
                result = str(exc)
            except BaseException as exc:  # a bug, not a host's fault: the caller re-raises it
                failures.append(exc)
                result = f"internal error: {type(exc).__name__}: {exc}"
            with lock:
                results[endpoint] = result
                if len(results) == len(targets):
                    finished.set()

    for i in range(min(concurrency, len(pending))):
        threading.Thread(target=work, name=f"rollout-trust-{i}", daemon=True).start()
    while not finished.wait(POLL):
        if abort.is_set() or time.monotonic() >= deadline + POLL:
            break
    if failures and not abort.is_set():
        raise failures[0]
    with lock:
        out = dict(results)
    why = "interrupted" if abort.is_set() else "the overall deadline passed"
    return {endpoint: out.get(endpoint, f"not reached: {why}") for endpoint in targets}
