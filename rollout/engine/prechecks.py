"""Pre-checks (and the parity facts journaled after them): read-only questions on every host before anything changes.

Nothing may change on a fleet that is not ready: every SSH host must be reachable (host
key checked, `true` runs), sudo must work for every become user a host's steps and checks
use (`sudo -n true`, or with the password when one is set), and every pre-check must
pass, or the run is refused with nothing changed. A pre-check cut short by an interrupt
did not fail.
"""

from __future__ import annotations

import threading
import time

from rollout.checks.parity import FactReading
from rollout.engine.core import EngineCore
from rollout.engine.parity import FactGatherer
from rollout.engine.prepare import HostPlan
from rollout.event import Event, EventKind
from rollout.executors.base import Become, CommandResult, Reconnectable

SSH_CHECK = "ssh connection"


def sudo_problem(result: CommandResult) -> str:
    """Why `sudo ... true` failed, in an operator's words."""
    err = result.stderr
    if result.timed_out:
        return "sudo did not answer in time"
    if "incorrect password" in err or "Sorry, try again" in err:
        return "wrong password"
    if "password is required" in err:
        return "a password is required (set become_password on the environment)"
    if "not in the sudoers" in err or "not allowed" in err:
        return "the login user may not run commands as that user (sudoers)"
    if result.exit_code == 127:
        return "sudo is not installed"
    return err.strip().splitlines()[-1] if err.strip() else f"exit {result.exit_code}"


class PrecheckMixin(EngineCore):
    """The Engine's pre-checks, for a run and for a dry run."""

    def run_prechecks(self) -> list[tuple[str, str, str]]:
        """Only the read-only pre-checks, on every host (for dry runs): (host, check, why) of each failure."""
        try:
            return self._prechecks()
        finally:
            self.close()

    def _prechecks(self) -> list[tuple[str, str, str]]:
        hosts = list(self.schedule.hosts.values())
        if not any(h.prechecks or h.target.connection == "ssh" or h.become_users() for h in hosts):
            return []
        failed: list[tuple[str, str, str]] = []
        lock = threading.Lock()

        def check_host(host: HostPlan) -> None:
            if host.target.connection == "ssh" and not self._reachable(host):
                with lock:
                    failed.append((host.name, SSH_CHECK, self._unreachable[host.name]))
                return
            for user in host.become_users():
                why = self._sudo_fails(host, user)
                if why is not None:
                    with lock:
                        failed.append((host.name, f"sudo as {user}", why))
                    return
            for check in host.prechecks:
                if self._abort.is_set():
                    return
                verdict = self.runner.run(check, self.executor(host.name), yield_to_abort=True)
                self._emit(
                    Event(
                        EventKind.PRECHECK,
                        host=host.name,
                        outcome="ok" if verdict.ok else "failed",
                        data={"check": check.label, **verdict.to_dict()},
                    )
                )
                if not verdict.ok:
                    with lock:
                        failed.append((host.name, check.label, verdict.summary))

        self._pool.run(check_host, hosts)
        order = {h.name: i for i, h in enumerate(hosts)}
        failed.sort(key=lambda f: order[f[0]])
        return failed

    def gather_parity(self) -> dict[str, FactReading]:
        """The plan's parity facts on every host (read-only, bounded like pre-checks): fact -> reading."""
        return FactGatherer(self.schedule, self.runner, self.executor, self._abort).gather(self._pool.run)

    def journal_parity(self) -> None:
        """Journal the parity facts as gathered, before the first change; plans without facts journal nothing.

        A fact that cannot be gathered is journaled with its error and the run goes on:
        whether the facts match is the gate's question, not the run's.
        """
        if not self.schedule.loaded.plan.parity:
            return
        facts = self.gather_parity()
        complete = not any(r.errors for r in facts.values())
        data = {"facts": {name: reading.to_journal() for name, reading in facts.items()}}
        self._emit(Event(EventKind.PARITY_FACTS, outcome="ok" if complete else "incomplete", data=data), sync=True)

    def _sudo_fails(self, host: HostPlan, user: str) -> str | None:
        """Run `true` through sudo as `user`, as the steps will: None when it works, else why not.

        Passwordless first (`sudo -n`, never prompts); with a password, then `sudo -k -S`. A
        password set for a host that needs none is refused: sudo would not read it, and the
        command would get it on its stdin.
        """
        timeout = host.target.connect_timeout + 5.0
        ex = self.executor(host.name)
        password = host.become_password
        result = self._execute(ex, "true", timeout, become=Become(user))
        if result.ok and password is not None:
            why: str | None = "no password is needed, but become_password is set (the command would read it)"
        elif result.ok or password is None:
            why = None if result.ok else sudo_problem(result)
        else:
            result = self._execute(ex, "true", timeout, become=Become(user, password))
            why = None if result.ok else sudo_problem(result)
        summary = f"sudo as {user} works" if why is None else f"sudo as {user} on {host.name} failed: {why}"
        self._emit(
            Event(
                EventKind.PRECHECK,
                host=host.name,
                outcome="ok" if why is None else "failed",
                data={
                    "check": f"sudo as {user}",
                    "ok": why is None,
                    "summary": summary,
                    "elapsed": round(result.duration, 3),
                },
            )
        )
        return None if why is None else summary

    def _reachable(self, host: HostPlan) -> bool:
        """Connect (host key checked) and prove a command can run: nothing may change on a fleet we cannot fully reach.

        An SSH executor proves it by starting its kept shell (check_ready); any other runs `true`.
        """
        ex = self.executor(host.name)
        timeout = host.target.connect_timeout + 5.0
        started = time.monotonic()
        if isinstance(ex, Reconnectable):
            why = ex.check_ready(timeout)
        else:
            result = self._execute(ex, "true", timeout)
            why = None if result.ok else (result.stderr.strip() or f"`true` exited {result.exit_code}")
        elapsed = time.monotonic() - started
        summary = "connected" if why is None else why
        self._emit(
            Event(
                EventKind.PRECHECK,
                host=host.name,
                outcome="ok" if why is None else "failed",
                data={"check": SSH_CHECK, "ok": why is None, "summary": summary, "elapsed": round(elapsed, 3)},
            )
        )
        if why is not None:
            self._unreachable[host.name] = summary
        return why is None
