"""Apply: pre-checks, guards, waves, failure budget, bake, and rollback on any abort.

A run either completes or leaves every target where it started, and says which.
The engine never prints: every step of the way is an event on the bus, and the intent
of each change (and of each rollback) is made durable before the command starts.

The invariants the engine keeps (tests/test_engine_model.py checks them on random
plans and failures):

- `succeeded` implies every step applied on every in-scope host and every guard green,
  by a probe started after the last change, in the snapshot the verdict was taken on;
- a bake ends only with every guard freshly green; a failing guard extends it by at
  most `every x fail_after + timeout`, then the run aborts;
- no step intent is journaled after the abort is journaled (both under one lock);
- any failure, including rollout's own (an unexpected exception), aborts and rolls
  back every applied step newest first; the outcome is derived from what is still
  applied after the rollback, never from what happened along the way;
- when the journal fails, no forward work starts again, but rollbacks go on (the
  targets matter more than the evidence) and the bus keeps a side record.

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
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from rollout import __version__
from rollout.checks import Verdict, excerpt
from rollout.engine.events import Bus
from rollout.engine.guards import GREEN, TRIPPED, GuardMonitor, GuardState
from rollout.engine.prepare import HostPlan, Schedule
from rollout.engine.probe import CheckRunner
from rollout.engine.processes import command_env, new_token
from rollout.errors import ConnectError, ExecutorError, ExitStatus, JournalError
from rollout.event import Event, EventKind, Outcome
from rollout.executors import open_executor
from rollout.executors.base import CommandResult, Executor, OnStart, Target
from rollout.model import Guard, Step
from rollout.units import format_duration

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
    Outcome.INTERNAL_ERROR: ExitStatus.JOURNAL,
    Outcome.NOT_STARTED: ExitStatus.SUCCESS,
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

    kind: str  # step | verify | guard | budget | interrupt | journal | connect | internal | rollback
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
        # Held only to set the cause, never across I/O: abort() runs in signal handlers.
        self._cause_lock = threading.RLock()
        # Orders the journal's step intents, its abort line and its success verdict.
        self._journal_order = threading.RLock()
        self._kill_now = threading.Event()
        self._interrupts = 0
        self._rolling_back = False
        self._rolling_back_hosts: set[str] = set()  # within-budget rollbacks in progress
        self._fatal: JournalError | None = None
        self._applied: dict[str, list[AppliedStep]] = {h: [] for h in schedule.hosts}
        self._failed_hosts: list[str] = []
        self._unreachable: dict[str, str] = {}
        self._host_rollbacks: list[tuple[str, str]] = []
        self._host_rollback_failures: list[RollbackFailure] = []
        self._host_remaining: dict[str, tuple[str, ...]] = {}
        self._state_lock = threading.Lock()
        self.runner = CheckRunner(
            schedule.loaded.path.parent.resolve(),
            stop=self._stop_probes,
            abort=self._abort,
            env=command_env(schedule.run_id),
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
        self.runner.close()

    def _emit(self, event: Event, *, sync: bool = False) -> None:
        """Emit an event; once the journal has failed, only the rollback may go on emitting."""
        if self._fatal is not None and not self._rolling_back:
            raise self._fatal
        try:
            self.bus.emit(event, sync=sync)
        except JournalError as exc:
            self._journal_failed(exc)
            if not self._rolling_back:
                raise

    def emit(self, event: Event, *, sync: bool = False) -> None:
        """Emit an event on the run's bus (recover journals its own events through this)."""
        self._emit(event, sync=sync)

    def _emit_intent(self, event: Event) -> bool:
        """Journal a step's intent unless the run is aborting; False when it must not start.

        Under the journal-order lock, which `_journal_abort` takes too: an intent is
        journaled before the abort line, or never.
        """
        with self._journal_order:
            if self._abort.is_set():
                return False
            self._emit(event, sync=True)
            return True

    def _journal_failed(self, exc: JournalError) -> None:
        """The evidence cannot be written: no forward work starts again; rollbacks go on."""
        with self._cause_lock:
            if self._fatal is None:
                self._fatal = exc
            if self._cause is None:
                self._cause = Cause("journal", f"the journal could not be written: {exc}")
        self._abort.set()
        if not self._rolling_back:
            self._cancel_forward()

    def _cancel_forward(self) -> None:
        """Kill in-flight forward commands; a host rolling itself back is left to finish."""
        with self._executors_lock:
            executors = [ex for host, ex in self._executors.items() if host not in self._rolling_back_hosts]
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
            try:
                return self._run()
            except JournalError as exc:
                self._journal_failed(exc)
                if self._rolling_back or not self._changed_anything():
                    return self._journal_result()
                return self._abort_and_roll_back()
            except Exception as exc:  # rollout's own bug: the targets still come back
                self._internal_error(exc, where="the run")
                if self._rolling_back:
                    return self._internal_result(exc)
                return self._abort_and_roll_back()
        except Exception as exc:  # the rollback itself failed unexpectedly: say what remains
            return self._internal_result(exc)
        finally:
            self._stop_probes.set()
            self.guards.stop()
            self.close()

    def _changed_anything(self) -> bool:
        with self._state_lock:
            return any(self._applied.values())

    def _internal_error(self, exc: BaseException, *, where: str) -> None:
        """An unexpected exception: abort with it as the cause (the first cause still wins)."""
        self.abort(
            Cause(
                "internal",
                f"internal error in {where}: {type(exc).__name__}: {exc}",
                detail={"exception": type(exc).__name__, "traceback": _traceback_tail(exc)},
            )
        )

    def _journal_result(self) -> RunResult:
        """The journal failed before anything changed: say so in the side record too."""
        remaining = self._still_applied()
        data = {"cause": self._cause.to_dict() if self._cause else None, "changed": False}
        with contextlib.suppress(JournalError):  # the bus sends it to the side record
            self.bus.emit(Event(EventKind.RUN_END, outcome=Outcome.JOURNAL_FAILED, data=data), sync=True)
        return RunResult(
            Outcome.JOURNAL_FAILED,
            cause=self._cause,
            remaining=remaining,
            journal_error=str(self._fatal),
        )

    def _internal_result(self, exc: BaseException) -> RunResult:
        """The last resort: rollout failed while rolling back; report what is still applied."""
        remaining = self._still_applied()
        cause = self._cause or Cause("internal", f"internal error: {type(exc).__name__}: {exc}")
        return RunResult(
            Outcome.ROLLBACK_FAILED if remaining else Outcome.INTERNAL_ERROR,
            cause=cause,
            remaining=remaining,
            journal_error=str(self._fatal) if self._fatal else None,
        )

    def _still_applied(self, *, irreversible: bool = False) -> dict[str, tuple[str, ...]]:
        """Per host, newest first: steps that started and were not rolled back (irreversible ones aside)."""
        with self._state_lock:
            return {
                host: names
                for host, stack in self._applied.items()
                if (
                    names := tuple(
                        a.step.name
                        for a in reversed(stack)
                        if a.state != "rolled_back" and (irreversible or not a.step.irreversible)
                    )
                )
            }

    def _run(self) -> RunResult:
        s = self.schedule
        self._emit(Event(EventKind.RUN_START, data=self._run_start_data()), sync=True)
        failed = self._prechecks()
        if failed and not self._abort.is_set():  # a pre-check cut short by an interrupt did not fail
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
        last_change = self.guards.now()
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
            last_change = self.guards.now()
            if not self._bake(wave.index, since=last_change):
                break
        if not self._abort.is_set():
            result = self._finish(since=last_change)
            if result is not None:
                return result
        return self._abort_and_roll_back()

    # --- bake and the final verdict -------------------------------------------------

    def _settle_bound(self) -> float:
        """How long a failing guard may extend a bake: enough for it to trip, or recover."""
        return max(
            (st.guard.every * st.guard.fail_after + st.guard.timeout for st in self.guards.states.values()), default=0.0
        )

    def _bake(self, wave: int, *, since: float) -> bool:
        """Hold the next wave until the bake time has passed and every guard is freshly green.

        A guard still failing when the bake time is up extends the bake, by at most the
        settle bound; then the run aborts. False when the run must not go on.
        """
        bake = self.schedule.loaded.plan.strategy.bake
        if self.guards.empty:
            self._abort.wait(bake)  # without guards, a bake is a plain pause that an abort cuts short
            return not self._abort.is_set()
        if bake > 0:
            self._emit(Event(EventKind.BAKE_START, wave=wave, data={"bake": format_duration(bake)}))
            self._abort.wait(bake)
        settled = not self._abort.is_set() and self._settle(wave, since)
        if bake > 0:
            self._emit(Event(EventKind.BAKE_END, wave=wave, outcome="ok" if settled else "aborted"))
        return settled

    def _settle(self, wave: int | None, since: float) -> bool:
        """Wait until every guard has passed a probe started after `since`; abort at the bound."""
        if self.guards.settled(since):
            return True
        bound = self._settle_bound()
        waiting = self.guards.not_settled(since)
        self._emit(
            Event(
                EventKind.BAKE_EXTENDED,
                wave=wave,
                data={
                    "waiting_for": [
                        {"host": st.host, "guard": st.guard.label, "state": st.state if st.last else "no probe yet"}
                        for st in waiting[:20]
                    ],
                    "guards": len(waiting),
                    "at_most": format_duration(bound),
                },
            )
        )
        if self.guards.wait_settled(since, time.monotonic() + bound, self._abort):
            return True
        if not self._abort.is_set():
            self._abort_not_green(self.guards.not_settled(since), bound)
        return False

    def _abort_not_green(self, states: list[GuardState], bound: float) -> None:
        """The bake is over and a guard is still not green: that is a failure, never a success."""
        first = states[0]
        if first.state == TRIPPED:
            summary = f"guard '{first.guard.label}' tripped on {first.host}"
        elif first.last is None or first.state == GREEN:
            summary = (
                f"guard '{first.guard.label}' on {first.host} gave no fresh verdict within {format_duration(bound)}"
            )
        else:
            summary = (
                f"guard '{first.guard.label}' on {first.host} still {first.state} "
                f"({first.consecutive}/{first.guard.fail_after}) {format_duration(bound)} after the bake"
            )
        if first.last is not None and first.state != GREEN:
            summary += f": {first.last.summary}"
        more = f" (+{len(states) - 1} more)" if len(states) > 1 else ""
        self.abort(
            Cause(
                "guard",
                summary + more,
                host=first.host,
                check=first.guard.label,
                detail=dict(first.last.observed) if first.last is not None else {},
            )
        )

    def _finish(self, *, since: float) -> RunResult | None:
        """Take the success verdict on a frozen snapshot of the guards; None when the run must roll back."""
        s = self.schedule
        deadline = time.monotonic() + self._settle_bound()
        while not self.guards.empty:
            if not self._settle(None, since):
                return None
            snapshot = self.guards.freeze()  # no verdict lands after this line
            if self._abort.is_set():
                return None
            not_green = [st for st in snapshot if st.state != GREEN]
            if not not_green:
                break
            if time.monotonic() >= deadline:
                self._abort_not_green(not_green, self._settle_bound())
                return None
            self.guards.start()  # a verdict landed between the look and the freeze: look again
        data: dict[str, Any] = {"hosts": len(s.hosts)}
        if self._failed_hosts:
            data["failed_hosts"] = list(self._failed_hosts)
            data["rolled_back"] = [list(x) for x in self._host_rollbacks]
        if not self.guards.empty:
            data["guards_green"] = True
        with self._journal_order:  # the verdict and an abort line cannot cross
            if self._abort.is_set():
                return None
            self._emit(Event(EventKind.RUN_END, outcome=Outcome.SUCCEEDED, data=data), sync=True)
        return RunResult(
            Outcome.SUCCEEDED,
            failed_hosts=tuple(self._failed_hosts),
            rolled_back=tuple(self._host_rollbacks),
            rollback_failures=tuple(self._host_rollback_failures),
            remaining=dict(self._host_remaining),
            guards_green=None if self.guards.empty else True,
        )

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
        """Run fn over hosts in threads; re-raise the first JournalError.

        Any other exception in a worker is rollout's own failure: it aborts the run at
        once (the other hosts stop starting steps) and becomes the cause of the abort.
        """
        items = list(hosts)
        if not items:
            return

        def guarded(host: HostPlan) -> None:
            try:
                fn(host)
            except (JournalError, _Abort):
                raise
            except Exception as exc:
                self._internal_error(exc, where=f"the worker for {host.name}")
                raise

        workers = min(len(items), limit or self.schedule.loaded.plan.strategy.concurrency or len(items), 64)
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="host") as pool:
            futures = [pool.submit(guarded, h) for h in items]
            self._wait(futures)
        for fut in futures:
            exc = fut.exception()
            if isinstance(exc, JournalError):
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
                self._cancel_forward()

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
            intent = Event(
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
            )
            if not self._emit_intent(intent):
                if result is None:
                    return None  # never started: nothing to roll back, not a failure
                break  # a retry the abort cut short: the earlier attempt's result stands
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
        if not result.ok and self._abort.is_set() and (result.cancelled or self._cause_kind() == "interrupt"):
            # Killed or cut short by an abort decided elsewhere: not a failure of this host.
            # The step stays in the rollback (it may have half run).
            applied.state = "failed"
            return None
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
            if not verdict.ok and self._abort.is_set():
                return None  # retries cut short by the abort: the rollback takes it from here
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

    def _cause_kind(self) -> str | None:
        with self._cause_lock:
            return self._cause.kind if self._cause is not None else None

    def _host_failed(self, wave: int, host: HostPlan, cause: Cause) -> None:
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
        if within and self._abort.is_set():
            return  # the run is aborting for another reason: the final rollback takes this host back too
        if within:
            # The budget lets the run go on without this host: put it back where it started.
            with self._executors_lock:
                self._rolling_back_hosts.add(host.name)  # no grace-period cancel may kill it
            try:
                failures, undone, remaining, _ = self._roll_back_host(host.name, reason="host failed within budget")
            finally:
                with self._executors_lock:
                    self._rolling_back_hosts.discard(host.name)
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
        """Journal the abort once, with its cause (a journal failure here is already recorded)."""
        with self._journal_order:
            if self._abort_journaled:
                return
            self._abort_journaled = True
            cause = self._cause or Cause("unknown", "aborted")
            data: dict[str, Any] = {"cause": cause.to_dict()}
            if in_flight:
                data["in_flight"] = in_flight
                data["grace"] = format_duration(self.grace)
            with contextlib.suppress(JournalError):
                self._emit(Event(EventKind.ABORT, host=cause.host, step=cause.step, data=data), sync=True)

    def _abort_and_roll_back(self) -> RunResult:
        cause = self._cause or Cause("unknown", "aborted")
        self._rolling_back = True  # from here on only rollbacks run, and they go on even without a journal
        self._journal_abort()
        return self.roll_back(cause, interrupted=cause.kind == "interrupt")

    def roll_back(
        self,
        cause: Cause,
        *,
        interrupted: bool,
        plan: Mapping[str, list[str]] | None = None,
        applied: Mapping[str, list[AppliedStep]] | None = None,
    ) -> RunResult:
        """Roll back every applied step, newest first, hosts in parallel; then guards must be green.

        The outcome is derived from what is still applied afterwards: a step whose earlier
        rollback failed (a host that failed within budget) and that is undone now is undone.
        """
        self._rolling_back = True
        if applied is not None:
            self._applied = {h: list(v) for h, v in applied.items()}
        plan = plan or {h: list(names) for h, names in self._still_applied(irreversible=True).items()}
        self._emit(Event(EventKind.ROLLBACK_START, data={"plan": plan, "cause": cause.summary}), sync=True)
        if not self.guards.empty and not self.guards.running:  # recovery, or after the final freeze
            self.guards.start()
        attempts: list[RollbackFailure] = list(self._host_rollback_failures)
        undone: list[tuple[str, str]] = list(self._host_rollbacks)
        lock = threading.Lock()

        def host_rollback(host: HostPlan) -> None:
            f, u, _, _ = self._roll_back_host(host.name, reason=cause.summary)
            with lock:
                attempts.extend(f)
                undone.extend(u)

        hosts = [self.schedule.hosts[h] for h in self._still_applied(irreversible=True)]
        self._parallel(host_rollback, hosts, limit=len(hosts) or 1)
        remaining = self._still_applied()
        irreversible = self._irreversible_left()
        # Only the failures that still stand: the last attempt on a step that is still applied.
        failures = list({(f.host, f.step): f for f in attempts if f.step in remaining.get(f.host, ())}.values())
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
        if remaining or not green:
            outcome = Outcome.ROLLBACK_FAILED
        elif self._fatal is not None:
            outcome = Outcome.JOURNAL_FAILED
        elif cause.kind == "internal":
            outcome = Outcome.INTERNAL_ERROR
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
            journal_error=str(self._fatal) if self._fatal is not None else None,
        )

    def _irreversible_left(self) -> dict[str, tuple[str, ...]]:
        """Per host, the irreversible steps that ran: rollback leaves them applied, and says so."""
        with self._state_lock:
            return {
                host: names
                for host, stack in self._applied.items()
                if (names := tuple(a.step.name for a in reversed(stack) if a.step.irreversible))
            }

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
            try:
                result = self._execute(
                    ex,
                    step.rollback,
                    timeout,
                    env=command_env(self.schedule.run_id, token),
                    on_start=self._record_process(item.wave, host_name, step.name, "rollback", token),
                )
            except Exception as exc:  # rollout's own failure must not leave the host half undone silently
                result = CommandResult(host_name, step.rollback, None, "", f"internal error: {exc!r}", 0.0)
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
                with self._state_lock:
                    item.state = "rolled_back"
                undone.append((host_name, step.name))
                continue
            what = "timed out" if result.timed_out else ("was killed" if result.cancelled else _ended(result))
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


def _traceback_tail(exc: BaseException, lines: int = 12) -> str:
    """The innermost frames of an unexpected exception: evidence for a bug report."""
    text = "".join(traceback.format_exception(exc))
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _operator() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return f"uid {__import__('os').getuid()}"
