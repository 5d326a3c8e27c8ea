"""Apply: pre-checks, guards, waves, failure budget, bake, and rollback on any abort.

A run either completes or leaves every target where it started, and says which.
The engine never prints: every step of the way is an event on the bus, and the intent
of each change (and of each rollback) is made durable before the command starts.

Threads: host workers and guards are threads because SSH and probes block; work is
cancelled by killing process groups or closing channels (Executor.cancel), never by
hoping a thread notices.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from rollout import __version__
from rollout.checks import Verdict, excerpt
from rollout.engine.events import Bus
from rollout.engine.guards import GuardMonitor
from rollout.engine.prepare import HostPlan, Schedule
from rollout.engine.probe import CheckRunner
from rollout.engine.processes import command_env, new_token
from rollout.errors import ConnectError, ExecutorError, ExitStatus, JournalError
from rollout.event import Event, EventKind, Outcome
from rollout.executors import open_executor
from rollout.executors.base import CommandResult, Executor, OnStart, Target
from rollout.model import Guard, Step, format_duration

OUTPUT_EXCERPT = 2000
SSH_CHECK = "ssh connection"
RECOVERY_TIMEOUT_MIN = 10.0

EXIT_FOR_OUTCOME = {
    Outcome.SUCCEEDED: ExitStatus.SUCCESS,
    Outcome.ROLLED_BACK: ExitStatus.ROLLED_BACK,
    Outcome.REFUSED: ExitStatus.REFUSED,
    Outcome.ROLLBACK_FAILED: ExitStatus.ROLLBACK_FAILED,
    Outcome.INTERRUPTED: ExitStatus.INTERRUPTED,
    Outcome.JOURNAL_FAILED: ExitStatus.JOURNAL,
}


@dataclass
class AppliedStep:
    """A step that started on a host: it will be rolled back if the run aborts."""

    host: str
    wave: int | None
    index: int
    step: Step
    state: str = "started"  # started -> applied | failed | in_doubt; rolled_back


@dataclass(frozen=True)
class Cause:
    """Why a run aborted: what failed first."""

    kind: str  # step | verify | guard | budget | interrupt | journal | connect
    summary: str
    host: str | None = None
    step: str | None = None
    check: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """For the journal."""
        return {
            "kind": self.kind,
            "summary": self.summary,
            "host": self.host,
            "step": self.step,
            "check": self.check,
            **({"detail": dict(self.detail)} if self.detail else {}),
        }


@dataclass(frozen=True)
class RollbackFailure:
    """A rollback that did not succeed, with the evidence."""

    host: str
    step: str
    summary: str


@dataclass(frozen=True)
class RunResult:
    """How a run ended, for the exit code and the operator's summary."""

    outcome: str
    cause: Cause | None = None
    failed_prechecks: tuple[tuple[str, str, str], ...] = ()
    rolled_back: tuple[tuple[str, str], ...] = ()
    rollback_failures: tuple[RollbackFailure, ...] = ()
    remaining: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    irreversible_left: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    failed_hosts: tuple[str, ...] = ()
    guards_green: bool | None = None
    journal_error: str | None = None

    @property
    def exit_status(self) -> ExitStatus:
        """The exit code this outcome maps to."""
        return EXIT_FOR_OUTCOME[self.outcome]


class _Abort(Exception):
    """Internal: a host worker stops because the run is aborting."""


class Engine:
    """Executes a prepared schedule, or rolls back what a dead run left applied."""

    def __init__(
        self,
        schedule: Schedule,
        bus: Bus,
        *,
        executor_factory: Callable[[Target], Executor] = open_executor,
        clock: Callable[[], float] = time.monotonic,
        grace: float = 10.0,
        recovery_timeout: float | None = None,
        operator: str | None = None,
    ) -> None:
        self.schedule = schedule
        self.bus = bus
        self._factory = executor_factory
        self._clock = clock
        self.grace = grace
        self.operator = operator or _operator()
        self._executors: dict[str, Executor] = {}
        # Reentrant: interrupt() runs in a signal handler on the main thread, which may hold them.
        self._executors_lock = threading.RLock()
        self._abort = threading.Event()
        self._stop_probes = threading.Event()
        self._cause: Cause | None = None
        self._abort_journaled = False
        self._cause_lock = threading.RLock()
        self._kill_now = threading.Event()
        self._interrupts = 0
        self._rolling_back = False
        self._fatal: JournalError | None = None
        self._applied: dict[str, list[AppliedStep]] = {h: [] for h in schedule.hosts}
        self._failed_hosts: list[str] = []
        self._unreachable: dict[str, str] = {}
        self._host_rollbacks: list[tuple[str, str]] = []
        self._host_rollback_failures: list[RollbackFailure] = []
        self._host_remaining: dict[str, tuple[str, ...]] = {}
        self._state_lock = threading.Lock()
        self.runner = CheckRunner(
            schedule.loaded.path.parent.resolve(), stop=self._stop_probes, env=command_env(schedule.run_id)
        )
        guards = {name: host.guards for name, host in schedule.hosts.items()}
        self.guards = GuardMonitor(
            guards,
            self.executor,
            self.runner,
            bus,
            on_trip=self._guard_tripped,
            on_fatal=self._journal_failed,
            clock=clock,
        )
        timeouts = [g.every * g.fail_after * 4 for gs in guards.values() for g in gs]
        self.recovery_timeout = recovery_timeout or max([RECOVERY_TIMEOUT_MIN, *timeouts])

    # --- wiring -------------------------------------------------------------------

    def executor(self, host: str) -> Executor:
        """The host's executor, opened on first use (SSH connects lazily)."""
        with self._executors_lock:
            ex = self._executors.get(host)
            if ex is None:
                ex = self._factory(self.schedule.hosts[host].target)
                self._executors[host] = ex
            return ex

    def close(self) -> None:
        """Close every executor (idempotent)."""
        with self._executors_lock:
            executors = list(self._executors.values())
            self._executors.clear()
        for ex in executors:
            with contextlib.suppress(Exception):  # closing is best effort; the outcome is already known
                ex.close()

    def _emit(self, event: Event, *, sync: bool = False) -> None:
        if self._fatal is not None:
            raise self._fatal
        try:
            self.bus.emit(event, sync=sync)
        except JournalError as exc:
            self._journal_failed(exc)
            raise

    def _journal_failed(self, exc: JournalError) -> None:
        """The evidence cannot be written: stop every change now; nothing more runs."""
        with self._cause_lock:
            if self._fatal is None:
                self._fatal = exc
        self._abort.set()
        self._stop_probes.set()
        self._cancel_all()

    def _cancel_all(self) -> None:
        with self._executors_lock:
            executors = list(self._executors.values())
        for ex in executors:
            ex.cancel()

    def abort(self, cause: Cause) -> bool:
        """Ask the run to stop and roll back; the first cause wins. True if this one did."""
        with self._cause_lock:
            first = self._cause is None
            if first:
                self._cause = cause
        self._abort.set()
        return first

    def interrupt(self, signal_name: str = "SIGINT") -> str:
        """Ctrl-C / SIGTERM: first stops scheduling; second kills in-flight commands."""
        self._interrupts += 1
        if self._rolling_back:
            return "rollback in progress: it will finish (kill -9 and `rollout recover` if you must)"
        if self._interrupts == 1:
            self.abort(Cause("interrupt", f"interrupted by the operator ({signal_name})"))
            return f"stopping: in-flight commands get {format_duration(self.grace)}, then everything applied is rolled back"
        # The main thread's wait loop does the killing: no I/O in a signal handler.
        self._kill_now.set()
        return "killing in-flight commands; then rolling back"

    # --- the run ------------------------------------------------------------------

    def run(self) -> RunResult:
        """Pre-checks, guards, waves with bake; on any abort, roll back. Never raises for a target's failure."""
        try:
            return self._run()
        except JournalError as exc:
            self._journal_failed(exc)
            return RunResult(Outcome.JOURNAL_FAILED, cause=self._cause, journal_error=str(exc))
        finally:
            self._stop_probes.set()
            self.guards.stop()
            self.close()

    def _run(self) -> RunResult:
        s = self.schedule
        self._emit(Event(EventKind.RUN_START, data=self._run_start_data()), sync=True)
        failed = self._prechecks()
        if failed:
            first_host, first_check, first_summary = failed[0]
            cause = Cause(
                "precheck",
                f"pre-check '{first_check}' failed on {first_host}: {first_summary}",
                host=first_host,
                check=first_check,
            )
            self._emit(
                Event(
                    EventKind.PRECHECKS_FAILED,
                    outcome="failed",
                    data={"failed": [{"host": h, "check": c, "summary": m} for h, c, m in failed]},
                ),
                sync=True,
            )
            return self._end_unchanged(Outcome.REFUSED, cause, failed_prechecks=tuple(failed))
        if self._abort.is_set():  # interrupted during pre-checks: nothing changed
            return self._end_unchanged(Outcome.INTERRUPTED, self._cause or Cause("interrupt", "interrupted"))
        self._emit(Event(EventKind.PRECHECKS_PASSED, outcome="ok", data={"hosts": len(s.hosts)}))
        self.guards.start()
        for wave in s.waves:
            if self._abort.is_set():
                break
            self._emit(
                Event(
                    EventKind.WAVE_START,
                    wave=wave.index,
                    data={"hosts": list(wave.hosts), "size": wave.size},
                )
            )
            self._run_wave(wave.index, wave.hosts)
            if self._abort.is_set():
                break
            self._emit(Event(EventKind.WAVE_END, wave=wave.index, outcome="ok"))
            bake = s.loaded.plan.strategy.bake
            if bake > 0 and not self.guards.empty:
                self._emit(Event(EventKind.BAKE_START, wave=wave.index, data={"bake": format_duration(bake)}))
                interrupted = self._abort.wait(bake)
                self._emit(
                    Event(
                        EventKind.BAKE_END,
                        wave=wave.index,
                        outcome="aborted" if interrupted else "ok",
                    )
                )
            elif bake > 0:
                # without guards, a bake is a plain pause that an abort cuts short
                self._abort.wait(bake)
        if not self._abort.is_set():
            self._stop_probes.set()
            self.guards.stop()
            data: dict[str, Any] = {"hosts": len(s.hosts)}
            if self._failed_hosts:
                data["failed_hosts"] = list(self._failed_hosts)
                data["rolled_back"] = [list(x) for x in self._host_rollbacks]
            self._emit(Event(EventKind.RUN_END, outcome=Outcome.SUCCEEDED, data=data), sync=True)
            return RunResult(
                Outcome.SUCCEEDED,
                failed_hosts=tuple(self._failed_hosts),
                rolled_back=tuple(self._host_rollbacks),
                rollback_failures=tuple(self._host_rollback_failures),
                remaining=dict(self._host_remaining),
            )
        return self._abort_and_roll_back()

    def _end_unchanged(
        self, outcome: str, cause: Cause, *, failed_prechecks: tuple[tuple[str, str, str], ...] = ()
    ) -> RunResult:
        """End a run that changed nothing on any host."""
        self._emit(
            Event(EventKind.RUN_END, outcome=outcome, data={"cause": cause.to_dict(), "changed": False}), sync=True
        )
        return RunResult(outcome, cause=cause, failed_prechecks=failed_prechecks)

    def _run_start_data(self) -> dict[str, Any]:
        s = self.schedule
        env = s.loaded.plan.environments[s.env_name]
        return {
            "run_id": s.run_id,
            "plan_digest": s.digest,
            "plan": s.plan_name,
            "plan_file": s.loaded.shown,
            "environment": s.env_name,
            "rehearsal": env.rehearsal,
            "operator": self.operator,
            "orchestrator": socket.gethostname(),
            "version": __version__,
            "hosts": list(s.hosts),
            "waves": [{"wave": w.index, "size": w.size, "hosts": list(w.hosts)} for w in s.waves],
            "steps": [st.name for st in s.loaded.plan.steps],
            "irreversible": [st.name for st in s.loaded.plan.steps if st.irreversible],
            "failure_budget": s.budget(),
            "bake": format_duration(s.loaded.plan.strategy.bake),
        }

    # --- pre-checks ---------------------------------------------------------------

    def run_prechecks(self) -> list[tuple[str, str, str]]:
        """Only the read-only pre-checks, on every host (for dry runs): (host, check, why) of each failure."""
        try:
            return self._prechecks()
        finally:
            self.close()

    def _prechecks(self) -> list[tuple[str, str, str]]:
        hosts = list(self.schedule.hosts.values())
        if not any(h.prechecks or h.target.connection == "ssh" for h in hosts):
            return []
        failed: list[tuple[str, str, str]] = []
        lock = threading.Lock()

        def check_host(host: HostPlan) -> None:
            if host.target.connection == "ssh" and not self._reachable(host):
                with lock:
                    failed.append((host.name, SSH_CHECK, self._unreachable[host.name]))
                return
            for check in host.prechecks:
                if self._abort.is_set():
                    return
                verdict = self.runner.run(check, self.executor(host.name))
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

        self._parallel(check_host, hosts)
        order = {h.name: i for i, h in enumerate(hosts)}
        failed.sort(key=lambda f: order[f[0]])
        return failed

    def _reachable(self, host: HostPlan) -> bool:
        """Connect (host key checked) and run `true`: nothing may change on a fleet we cannot fully reach."""
        result = self._execute(self.executor(host.name), "true", host.target.connect_timeout + 5.0)
        summary = "connected" if result.ok else (result.stderr.strip() or f"`true` exited {result.exit_code}")
        self._emit(
            Event(
                EventKind.PRECHECK,
                host=host.name,
                outcome="ok" if result.ok else "failed",
                data={"check": SSH_CHECK, "ok": result.ok, "summary": summary, "elapsed": round(result.duration, 3)},
            )
        )
        if not result.ok:
            self._unreachable[host.name] = summary
        return result.ok

    def _parallel(self, fn: Callable[[HostPlan], None], hosts: Iterable[HostPlan], limit: int | None = None) -> None:
        """Run fn over hosts in threads; re-raise the first JournalError."""
        items = list(hosts)
        if not items:
            return
        workers = min(len(items), limit or self.schedule.loaded.plan.strategy.concurrency or len(items), 64)
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="host") as pool:
            futures = [pool.submit(fn, h) for h in items]
            self._wait(futures)
        for fut in futures:
            exc = fut.exception()
            if isinstance(exc, JournalError):
                raise exc
            if exc is not None and not isinstance(exc, _Abort):
                raise exc

    def _wait(self, futures: list[Future[None]]) -> None:
        """Wait for workers; once aborting, give in-flight work the grace period, then cancel it."""
        pending = set(futures)
        grace_deadline: float | None = None
        cancelled = False
        while pending:
            _, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
            if self._abort.is_set() and not self._rolling_back and grace_deadline is None:
                grace_deadline = time.monotonic() + self.grace
                if pending:
                    # Journal the abort now, not when in-flight work finishes: the evidence
                    # must show when the decision was taken. (Never from a signal handler:
                    # the bus lock is not reentrant; this loop runs on the main thread.)
                    self._journal_abort(in_flight=len(pending))
            if (
                not cancelled
                and not self._rolling_back
                and (self._kill_now.is_set() or (grace_deadline is not None and time.monotonic() >= grace_deadline))
            ):
                cancelled = True
                self._kill_now.clear()
                self._cancel_all()

    # --- waves --------------------------------------------------------------------

    def _run_wave(self, wave: int, host_names: tuple[str, ...]) -> None:
        hosts = [self.schedule.hosts[h] for h in host_names]
        self._parallel(lambda h: self._run_host(wave, h), hosts)

    def _run_host(self, wave: int, host: HostPlan) -> None:
        for index, step in enumerate(host.steps):
            if self._abort.is_set():
                return
            applied = AppliedStep(host.name, wave, index, step)
            failure = self._apply_step(wave, host, applied)
            if failure is not None:
                self._host_failed(wave, host, failure)
                return

    def _apply_step(self, wave: int, host: HostPlan, applied: AppliedStep) -> Cause | None:
        step = applied.step
        ex = self.executor(host.name)
        attempts = step.retries + 1
        result: CommandResult | None = None
        for attempt in range(1, attempts + 1):
            token = new_token()
            self._emit(
                Event(
                    EventKind.STEP_INTENT,
                    wave=wave,
                    host=host.name,
                    step=step.name,
                    data={
                        "command": step.run,
                        "attempt": attempt,
                        "timeout": format_duration(step.timeout),
                        "index": applied.index,
                        "attempt_id": token,
                    },
                ),
                sync=True,
            )
            with self._state_lock:
                if applied not in self._applied[host.name]:
                    self._applied[host.name].append(applied)
            try:
                result = ex.run(
                    step.run,
                    timeout=step.timeout,
                    env=command_env(self.schedule.run_id, token),
                    on_start=self._record_process(wave, host.name, step.name, "step", token),
                )
            except ConnectError as exc:
                if attempt == 1:
                    return self._not_started(wave, host, applied, exc)
                # an earlier attempt ran on the host: the step stays in the rollback
                result = CommandResult(host.name, step.run, None, "", str(exc), 0.0)
            except ExecutorError as exc:  # reached the host: the command may have started
                result = CommandResult(host.name, step.run, None, "", str(exc), 0.0)
            self._emit(
                Event(
                    EventKind.STEP_RESULT,
                    wave=wave,
                    host=host.name,
                    step=step.name,
                    outcome=_result_outcome(result),
                    data={**_result_data(result), "attempt": attempt, "of": attempts},
                ),
                sync=True,
            )
            if result.ok or result.cancelled or self._abort.is_set() or attempt == attempts:
                break
            if self._abort.wait(step.retry_delay):
                break
        assert result is not None
        if not result.ok:
            applied.state = "failed"
            what = "timed out" if result.timed_out else ("was killed" if result.cancelled else _ended(result))
            tail = excerpt(result.stderr or result.stdout, 300)
            return Cause(
                "step",
                f"step '{step.name}' {what} on {host.name}" + (f": {tail}" if tail else ""),
                host=host.name,
                step=step.name,
                detail={"command": step.run, **_result_data(result)},
            )
        applied.state = "applied"
        for check in step.verify:
            if self._abort.is_set():
                return None
            verdict = self.runner.run(check, ex)
            self._emit(
                Event(
                    EventKind.VERIFY,
                    wave=wave,
                    host=host.name,
                    step=step.name,
                    outcome="ok" if verdict.ok else "failed",
                    data={"check": check.label, **verdict.to_dict()},
                )
            )
            if not verdict.ok:
                return Cause(
                    "verify",
                    f"verification '{check.label}' of step '{step.name}' failed on {host.name}: {verdict.summary}",
                    host=host.name,
                    step=step.name,
                    check=check.label,
                    detail=dict(verdict.observed),
                )
        return None

    def _not_started(self, wave: int, host: HostPlan, applied: AppliedStep, exc: ConnectError) -> Cause:
        """The host could not be reached: the step never started, so there is nothing to roll back."""
        with self._state_lock:
            if applied in self._applied[host.name]:
                self._applied[host.name].remove(applied)
        self._emit(
            Event(
                EventKind.STEP_RESULT,
                wave=wave,
                host=host.name,
                step=applied.step.name,
                outcome="not_started",
                data={"error": str(exc), "stderr": str(exc), "exit_code": None, "duration": 0.0},
            ),
            sync=True,
        )
        return Cause(
            "connect",
            f"cannot reach {host.name} to run step '{applied.step.name}': {exc}",
            host=host.name,
            step=applied.step.name,
        )

    def _record_process(self, wave: int | None, host: str, step: str, role: str, token: str) -> OnStart:
        """A callback that journals a step or rollback command's process group once it exists."""

        def record(pgid: int) -> None:
            self._emit(
                Event(
                    EventKind.PROCESS,
                    wave=wave,
                    host=host,
                    step=step,
                    data={"role": role, "pgid": pgid, "attempt_id": token},
                ),
                sync=True,
            )

        return record

    def _execute(
        self,
        ex: Executor,
        command: str,
        timeout: float,
        *,
        env: Mapping[str, str] | None = None,
        on_start: OnStart | None = None,
    ) -> CommandResult:
        try:
            return ex.run(command, timeout=timeout, env=env, on_start=on_start)
        except ExecutorError as exc:
            return CommandResult(
                host=ex.target.name,
                command=command,
                exit_code=None,
                stdout="",
                stderr=str(exc),
                duration=0.0,
            )

    def _host_failed(self, wave: int, host: HostPlan, cause: Cause) -> None:
        if (
            self._abort.is_set()
            and cause.kind == "step"
            and self._cause is not None
            and self._cause.kind == "interrupt"
        ):
            return  # a command killed by the operator's abort is not a new failure
        with self._state_lock:
            self._failed_hosts.append(host.name)
            failed = len(self._failed_hosts)
        budget = self.schedule.budget()
        within = failed <= budget
        self._emit(
            Event(
                EventKind.HOST_FAILED,
                wave=wave,
                host=host.name,
                step=cause.step,
                outcome="within_budget" if within else "budget_exceeded",
                data={"cause": cause.to_dict(), "failed_hosts": failed, "budget": budget},
            ),
            sync=True,
        )
        if within:
            # The budget lets the run go on without this host: put it back where it started.
            failures, undone, remaining, _ = self._roll_back_host(host.name, reason="host failed within budget")
            with self._state_lock:
                self._host_rollbacks.extend(undone)
                self._host_rollback_failures.extend(failures)
                if remaining:
                    self._host_remaining[host.name] = remaining
            if failures:
                self.abort(
                    Cause(
                        "rollback",
                        f"rollback failed on {host.name} after it failed within budget",
                        host=host.name,
                    )
                )
            return
        if budget > 0:
            cause = Cause(
                "budget",
                f"failure budget exceeded: {failed} hosts failed (budget {budget}); last: {cause.summary}",
                host=cause.host,
                step=cause.step,
                check=cause.check,
                detail={"last": cause.to_dict()},
            )
        self.abort(cause)

    def _guard_tripped(self, host: str, guard: Guard, verdict: Verdict, consecutive: int) -> None:
        if self._rolling_back:
            return
        self.abort(
            Cause(
                "guard",
                f"guard '{guard.label}' tripped on {host} after {consecutive} consecutive failures: {verdict.summary}",
                host=host,
                check=guard.label,
                detail=dict(verdict.observed),
            )
        )

    # --- rollback -----------------------------------------------------------------

    def _journal_abort(self, *, in_flight: int = 0) -> None:
        """Journal the abort once, with its cause."""
        with self._cause_lock:
            if self._abort_journaled:
                return
            self._abort_journaled = True
        cause = self._cause or Cause("unknown", "aborted")
        data: dict[str, Any] = {"cause": cause.to_dict()}
        if in_flight:
            data["in_flight"] = in_flight
            data["grace"] = format_duration(self.grace)
        self._emit(Event(EventKind.ABORT, host=cause.host, step=cause.step, data=data), sync=True)

    def _abort_and_roll_back(self) -> RunResult:
        cause = self._cause or Cause("unknown", "aborted")
        plan = {h: [a.step.name for a in reversed(stack)] for h, stack in self._applied.items() if stack}
        self._journal_abort()
        return self.roll_back(cause, interrupted=cause.kind == "interrupt", plan=plan)

    def roll_back(
        self,
        cause: Cause,
        *,
        interrupted: bool,
        plan: Mapping[str, list[str]] | None = None,
        applied: Mapping[str, list[AppliedStep]] | None = None,
    ) -> RunResult:
        """Roll back every applied step, newest first, hosts in parallel; then guards must be green."""
        self._rolling_back = True
        if applied is not None:
            self._applied = {h: list(v) for h, v in applied.items()}
        plan = plan or {h: [a.step.name for a in reversed(stack)] for h, stack in self._applied.items() if stack}
        self._emit(Event(EventKind.ROLLBACK_START, data={"plan": plan, "cause": cause.summary}), sync=True)
        if not self.guards.empty and not self.guards.running:  # recovery: guards were not running
            self.guards.start()
        failures: list[RollbackFailure] = list(self._host_rollback_failures)
        undone: list[tuple[str, str]] = list(self._host_rollbacks)
        remaining: dict[str, tuple[str, ...]] = dict(self._host_remaining)
        irreversible: dict[str, tuple[str, ...]] = {}
        lock = threading.Lock()

        def host_rollback(host: HostPlan) -> None:
            f, u, r, irr = self._roll_back_host(host.name, reason=cause.summary)
            with lock:
                failures.extend(f)
                undone.extend(u)
                if r:
                    remaining[host.name] = r
                if irr:
                    irreversible[host.name] = irr

        hosts = [self.schedule.hosts[h] for h in self._applied if self._applied[h]]
        self._parallel(host_rollback, hosts, limit=len(hosts) or 1)
        self._emit(
            Event(
                EventKind.ROLLBACK_END,
                outcome="failed" if failures else "ok",
                data={
                    "undone": [list(x) for x in undone],
                    "failed": [{"host": f.host, "step": f.step, "summary": f.summary} for f in failures],
                    "remaining": {h: list(v) for h, v in remaining.items()},
                    "irreversible_left": {h: list(v) for h, v in irreversible.items()},
                },
            ),
            sync=True,
        )
        green = self.guards.wait_all_green(self.recovery_timeout)
        if not self.guards.empty:
            still = [
                {
                    "host": s.host,
                    "guard": s.guard.label,
                    "summary": s.last.summary if s.last else "",
                }
                for s in self.guards.failing()
            ]
            self._emit(
                Event(
                    EventKind.RECOVERY,
                    outcome="green" if green else "failing",
                    data={
                        "timeout": format_duration(self.recovery_timeout),
                        "failing": [] if green else still,
                    },
                ),
                sync=True,
            )
        self._stop_probes.set()
        self.guards.stop()
        if failures or remaining or not green:
            outcome = Outcome.ROLLBACK_FAILED
        elif interrupted:
            outcome = Outcome.INTERRUPTED
        else:
            outcome = Outcome.ROLLED_BACK
        self._emit(
            Event(
                EventKind.RUN_END,
                outcome=outcome,
                data={
                    "cause": cause.to_dict(),
                    "rolled_back": [list(x) for x in undone],
                    "remaining": {h: list(v) for h, v in remaining.items()},
                    "irreversible_left": {h: list(v) for h, v in irreversible.items()},
                    "guards_green": green if not self.guards.empty else None,
                    "failed_hosts": list(self._failed_hosts),
                },
            ),
            sync=True,
        )
        return RunResult(
            outcome,
            cause=cause,
            rolled_back=tuple(undone),
            rollback_failures=tuple(failures),
            remaining=remaining,
            irreversible_left=irreversible,
            failed_hosts=tuple(self._failed_hosts),
            guards_green=green if not self.guards.empty else None,
        )

    def _roll_back_host(
        self, host_name: str, *, reason: str
    ) -> tuple[list[RollbackFailure], list[tuple[str, str]], tuple[str, ...], tuple[str, ...]]:
        """Undo this host's applied steps newest first; stop at the first failed rollback."""
        with self._state_lock:
            stack = [a for a in self._applied[host_name] if a.state != "rolled_back"]
        ex = self.executor(host_name)
        failures: list[RollbackFailure] = []
        undone: list[tuple[str, str]] = []
        irreversible: list[str] = []
        ordered = list(reversed(stack))
        for pos, item in enumerate(ordered):
            step = item.step
            if step.irreversible:
                irreversible.append(step.name)
                self._emit(
                    Event(
                        EventKind.ROLLBACK_RESULT,
                        wave=item.wave,
                        host=host_name,
                        step=step.name,
                        outcome="skipped",
                        data={"summary": "irreversible step (rollback: none): left applied"},
                    )
                )
                continue
            timeout = step.rollback_timeout or step.timeout
            token = new_token()
            self._emit(
                Event(
                    EventKind.ROLLBACK_INTENT,
                    wave=item.wave,
                    host=host_name,
                    step=step.name,
                    data={
                        "command": step.rollback,
                        "timeout": format_duration(timeout),
                        "reason": reason,
                        "state": item.state,
                        "attempt_id": token,
                    },
                ),
                sync=True,
            )
            result = self._execute(
                ex,
                step.rollback,
                timeout,
                env=command_env(self.schedule.run_id, token),
                on_start=self._record_process(item.wave, host_name, step.name, "rollback", token),
            )
            self._emit(
                Event(
                    EventKind.ROLLBACK_RESULT,
                    wave=item.wave,
                    host=host_name,
                    step=step.name,
                    outcome=_result_outcome(result),
                    data=_result_data(result),
                ),
                sync=True,
            )
            if result.ok:
                item.state = "rolled_back"
                undone.append((host_name, step.name))
                continue
            what = "timed out" if result.timed_out else _ended(result)
            tail = excerpt(result.stderr or result.stdout, 300)
            failures.append(RollbackFailure(host_name, step.name, f"rollback {what}" + (f": {tail}" if tail else "")))
            # Older steps stay applied: undoing them under a step we could not undo could make things worse.
            remaining = tuple(a.step.name for a in ordered[pos:] if not a.step.irreversible)
            return failures, undone, remaining, tuple(irreversible)
        return failures, undone, (), tuple(irreversible)


def _ended(result: CommandResult) -> str:
    """How a command that neither timed out nor was killed by us ended, for a summary."""
    if result.connection_lost:
        return "lost its connection mid-command"
    return f"exited {result.exit_code}"


def _result_outcome(result: CommandResult) -> str:
    if result.ok:
        return "ok"
    if result.connection_lost:
        return "connection_lost"
    if result.timed_out:
        return "timed_out"
    if result.cancelled:
        return "aborted"
    return "failed"


def _result_data(result: CommandResult) -> dict[str, Any]:
    data: dict[str, Any] = {
        "exit_code": result.exit_code,
        "duration": round(result.duration, 3),
        "stdout": excerpt(result.stdout, OUTPUT_EXCERPT),
        "stderr": excerpt(result.stderr, OUTPUT_EXCERPT),
    }
    if result.timed_out:
        data["timed_out"] = True
    if result.cancelled:
        data["cancelled"] = True
    if result.connection_lost:
        data["connection_lost"] = True
    return data


def _operator() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return f"uid {__import__('os').getuid()}"
