"""Find and end what a dead run left running, before `recover` touches a host.

A step's shell runs in its own session, so when the orchestrator is SIGKILLed its step
and rollback commands keep running, and one that finishes after `recover` rolled its
host back would undo the rollback. So every command the engine starts carries the run's
marker in its environment (`ROLLOUT_RUN=<run id>`); step and rollback commands also carry
the token of their attempt (`ROLLOUT_ATTEMPT_ID`), which their intent line records before the
process exists, and their process group id is journaled (`process.start`) once it does.

Recover scans /proc/*/environ on each affected host (as the same user, through the host's
executor, so one shell snippet serves local and SSH hosts alike) for processes of the
dead run that belong to a command still in doubt (intent journaled, no result) or to a
check; it ends their process groups (SIGTERM, a bounded grace, SIGKILL), scans again for
anything that escaped meanwhile, and journals what it found and ended. Commands the plan
runs through sudo (become) run as another user, whose environ and processes the login
user can neither read nor signal: for each become user of the host's steps and checks,
the same scan and kill run again through the same sudo.

This module never signals a process on the journal's word alone: a process is ended
only when its own environment carries the dead run's marker (a journaled group id may
have been reused), except on a host without /proc, where the journaled groups are all
there is to go on.
"""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollout.errors import ExecutorError
from rollout.event import Event, EventKind
from rollout.executors.base import Become, Executor, become_arg

if TYPE_CHECKING:
    from rollout.engine.apply import Engine

#: Environment variable naming the run that started a command.
RUN_VAR = "ROLLOUT_RUN"
#: Environment variable naming one attempt of one step or rollback command.
ATTEMPT_VAR = "ROLLOUT_ATTEMPT_ID"
#: How long recover lets a dead run's processes end on SIGTERM before SIGKILL.
END_GRACE = 5.0
#: Scan-and-end rounds: a process can fork a new session between a scan and the kill.
ROUNDS = 3
_SCAN_TIMEOUT = 30.0


def new_token() -> str:
    """A fresh token for one attempt of one step or rollback command."""
    return secrets.token_hex(8)


def command_env(run_id: str, token: str | None = None) -> dict[str, str]:
    """The marker environment of a command started by run `run_id`."""
    return {RUN_VAR: run_id, **({ATTEMPT_VAR: token} if token else {})}


@dataclass(frozen=True)
class InDoubtCommand:
    """A step or rollback command whose intent is journaled and whose result is not."""

    token: str
    host: str
    step: str
    role: str  # step | rollback
    pgid: int | None  # from its process.start line, if the run lived long enough to write it


def in_doubt_commands(events: Sequence[Event]) -> dict[str, InDoubtCommand]:
    """The commands of a journal that started (or were about to) and never reported, by token."""
    open_: dict[tuple[str, str], InDoubtCommand] = {}
    pgids: dict[str, int] = {}
    for event in events:
        if event.host is None or event.step is None:
            continue
        key = (event.host, event.step)
        if event.kind in (EventKind.STEP_INTENT, EventKind.ROLLBACK_INTENT):
            token = event.data.get("attempt_id")
            role = "step" if event.kind == EventKind.STEP_INTENT else "rollback"
            if isinstance(token, str):
                open_[key] = InDoubtCommand(token, event.host, event.step, role, None)
            else:
                open_.pop(key, None)  # a journal from before tokens: nothing to match on
        elif event.kind == EventKind.PROCESS:
            token, pgid = event.data.get("attempt_id"), event.data.get("pgid")
            if isinstance(token, str) and isinstance(pgid, int):
                pgids[token] = pgid
        elif event.kind in (EventKind.STEP_RESULT, EventKind.ROLLBACK_RESULT):
            open_.pop(key, None)
    return {c.token: InDoubtCommand(c.token, c.host, c.step, c.role, pgids.get(c.token)) for c in open_.values()}


@dataclass(frozen=True)
class FoundProcess:
    """A live process on a host whose environment carries a rollout run's marker."""

    pid: int
    pgid: int
    state: str
    run_id: str | None
    token: str | None


def scan_script(run_id: str) -> str:
    """Shell that lists every live process carrying `run_id`'s marker: `proc PID PGID STATE MARKERS`."""
    # One grep reads every environ file it may (same user; others' fail silently); only
    # the few matches cost a fork each. Fields after the last ')' of stat: state ppid pgrp.
    needle = shlex.quote(f"{RUN_VAR}={run_id}")
    return (
        "[ -r /proc/self/environ ] || { echo noproc; exit 0; }; "
        f"for f in $(grep -laF -e {needle} /proc/[0-9]*/environ 2>/dev/null); do "
        'p=${f#/proc/}; p=${p%/environ}; [ "$p" = "$$" ] && continue; '
        "s=$(cat /proc/$p/stat 2>/dev/null) || continue; r=${s##*) }; set -- $r; "
        "m=$(tr '\\0' '\\n' < \"$f\" 2>/dev/null | "
        f"grep -a -e '^{RUN_VAR}=' -e '^{ATTEMPT_VAR}=' | tr '\\n' ' '); "
        'echo "proc $p $3 $1 $m"; done; echo done'
    )


def parse_scan(output: str) -> list[FoundProcess] | None:
    """The processes a scan listed; None when the host has no /proc to scan."""
    lines = output.splitlines()
    if "noproc" in lines:
        return None
    if "done" not in lines:
        raise ValueError("the process scan did not finish")
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[0] != "proc":
            continue
        markers = dict(f.split("=", 1) for f in fields[4:] if "=" in f)
        try:
            pid, pgid = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        found.append(FoundProcess(pid, pgid, fields[3], markers.get(RUN_VAR), markers.get(ATTEMPT_VAR)))
    return found


def select_processes(found: Sequence[FoundProcess], run_id: str, tokens: Mapping[str, object]) -> list[FoundProcess]:
    """The dead run's processes to end: those of in-doubt commands and of checks (no token).

    A process of a command that reported its result is left alone: its command ended,
    so what still runs of it escaped its group on purpose (a daemon the step started).
    """
    return [
        p for p in found if p.run_id == run_id and p.state not in ("Z", "X") and (p.token is None or p.token in tokens)
    ]


def end_script(pgids: Sequence[int], pids: Sequence[int], grace: float) -> str:
    """Shell that SIGTERMs the groups and pids, waits up to `grace` for the pids, then SIGKILLs all."""
    groups = " ".join(str(g) for g in pgids)
    procs = " ".join(str(p) for p in pids)
    rounds = max(1, int(grace / 0.05))
    # `kill -SIG -PGID` without `--`: dash rejects `--`, and both dash and bash accept this.
    return (
        f"g='{groups}'; p='{procs}'; "
        "alive() { s=$(cat /proc/$1/stat 2>/dev/null) || return 1; r=${s##*) }; "
        "case $r in Z*|X*) return 1;; esac; return 0; }; "
        "for x in $g; do kill -TERM -$x; done 2>/dev/null; for x in $p; do kill -TERM $x; done 2>/dev/null; "
        f"n=0; while [ $n -lt {rounds} ]; do a=; for x in $p; do alive $x && a=1; done; "
        '[ -z "$a" ] && break; sleep 0.05; n=$((n+1)); done; '
        "for x in $g; do kill -KILL -$x; done 2>/dev/null; for x in $p; do kill -KILL $x; done 2>/dev/null; "
        "exit 0"
    )


@dataclass
class _MachineReport:
    hosts: list[str]
    ended: list[FoundProcess]
    survivors: list[FoundProcess]
    error: str | None = None
    journaled_only: list[int] | None = None  # no /proc: the journaled groups that were signalled
    become_user: str | None = None  # the scan and kill ran through sudo as this user


def _run(ex: Executor, script: str, timeout: float, become: Become | None = None) -> str:
    result = ex.run(script, timeout=timeout, **become_arg(become))
    if not result.ok:
        why = "timed out" if result.timed_out else f"exited {result.exit_code}"
        raise ExecutorError(f"{why}: {result.tail('stderr', 3)}", host=ex.target.name)
    return result.stdout


def _settle_machine(
    ex: Executor,
    hosts: list[str],
    run_id: str,
    doubt: Mapping[str, InDoubtCommand],
    *,
    grace: float,
    local: bool,
    become: Become | None = None,
) -> _MachineReport:
    """Scan, end, scan again: until nothing of the dead run is left or the rounds run out."""
    report = _MachineReport(hosts, [], [], become_user=become.user if become is not None else None)
    # Never our own group: recover could have been started by something the run marked.
    protected = {os.getpgrp()} if local else set()
    try:
        for _ in range(ROUNDS):
            found = parse_scan(_run(ex, scan_script(run_id), _SCAN_TIMEOUT, become))
            if found is None:
                pgids = sorted({c.pgid for c in doubt.values() if c.host in hosts and c.pgid and c.pgid > 1})
                if pgids:
                    _run(ex, end_script(pgids, [], grace), grace + _SCAN_TIMEOUT, become)
                report.journaled_only = pgids
                return report
            targets = [p for p in select_processes(found, run_id, doubt) if p.pid != os.getpid() or not local]
            if not targets:
                report.survivors = []
                return report
            seen = {p.pid for p in report.ended}
            report.ended.extend(p for p in targets if p.pid not in seen)
            report.survivors = targets
            groups = sorted({p.pgid for p in targets if p.pgid > 1 and p.pgid not in protected})
            _run(ex, end_script(groups, [p.pid for p in targets], grace), grace + _SCAN_TIMEOUT, become)
        found = parse_scan(_run(ex, scan_script(run_id), _SCAN_TIMEOUT, become)) or []
        report.survivors = select_processes(found, run_id, doubt)
    except (ExecutorError, ValueError) as exc:
        report.error = str(exc)
    return report


def _describe(p: FoundProcess, doubt: Mapping[str, InDoubtCommand]) -> dict[str, Any]:
    command = doubt.get(p.token or "")
    what: dict[str, Any] = {"pid": p.pid, "pgid": p.pgid, "attempt_id": p.token}
    if command is not None:
        what.update(host=command.host, step=command.step, role=command.role)
    else:
        what["role"] = "check"
    return what


def end_dead_run_processes(engine: Engine, events: Sequence[Event], *, grace: float = END_GRACE) -> None:
    """End every process the dead run left running for in-doubt commands; journal what was found."""
    schedule = engine.schedule
    run_id = schedule.run_id
    doubt = in_doubt_commands(events)
    affected = {c.host for c in doubt.values() if c.host in schedule.hosts}
    # Every local host is this machine: its check commands are found by the same one scan.
    affected.update(h for h, plan in schedule.hosts.items() if plan.target.connection == "local")
    machines: dict[tuple[object, ...], list[str]] = {}
    for name in schedule.hosts:
        if name not in affected:
            continue
        target = schedule.hosts[name].target
        key: tuple[object, ...] = (
            ("local",) if target.connection == "local" else ("ssh", target.address, target.port, target.user)
        )
        machines.setdefault(key, []).append(name)
    if not machines:
        return

    def settle(item: tuple[tuple[object, ...], list[str]]) -> list[_MachineReport]:
        key, hosts = item
        try:
            ex = engine.executor(hosts[0])
        except ExecutorError as exc:
            return [_MachineReport(hosts, [], [], error=str(exc))]
        first = schedule.hosts[hosts[0]]
        users = dict.fromkeys(u for h in hosts for u in schedule.hosts[h].become_users())
        # As the login user first, then as each become user through sudo: each sees and ends its own.
        identities = [None, *(Become(user, first.become_password) for user in users)]
        return [
            _settle_machine(ex, hosts, run_id, doubt, grace=grace, local=key == ("local",), become=become)
            for become in identities
        ]

    with ThreadPoolExecutor(max_workers=min(len(machines), 16), thread_name_prefix="scan") as pool:
        reports = [r for found in pool.map(settle, machines.items()) for r in found]
    for report in reports:
        _journal(engine, report, doubt)


def _journal(engine: Engine, report: _MachineReport, doubt: Mapping[str, InDoubtCommand]) -> None:
    where = ", ".join(report.hosts) + (f" (through sudo as {report.become_user})" if report.become_user else "")
    if report.error is not None:
        outcome = "failed"
        summary = f"could not look for the dead run's processes on {where}: {report.error}"
    elif report.journaled_only is not None:
        outcome = "ended" if report.journaled_only else "none"
        summary = (
            f"no /proc on {where}: signalled the journaled process group(s) "
            f"{', '.join(map(str, report.journaled_only)) or '(none)'} of in-doubt commands"
        )
    elif report.survivors:
        outcome = "survivors"
        summary = f"{len(report.survivors)} process(es) of the dead run still run on {where} after SIGKILL"
    elif report.ended:
        outcome = "ended"
        summary = f"ended {len(report.ended)} process(es) the dead run left running on {where}"
    else:
        outcome = "none"
        summary = f"nothing of the dead run is running on {where}"
    engine.emit(
        Event(
            EventKind.PROCESSES_ENDED,
            host=report.hosts[0] if len(report.hosts) == 1 else None,
            outcome=outcome,
            data={
                "hosts": report.hosts,
                "summary": summary,
                **({"become_user": report.become_user} if report.become_user else {}),
                "ended": [_describe(p, doubt) for p in report.ended],
                "survivors": [_describe(p, doubt) for p in report.survivors],
                "in_doubt": [
                    {"host": c.host, "step": c.step, "role": c.role, "attempt_id": c.token, "pgid": c.pgid}
                    for c in doubt.values()
                    if c.host in report.hosts
                ],
                **({"error": report.error} if report.error else {}),
            },
        ),
        sync=True,
    )
