"""The Engine's core: the state of a run, its bus, and the abort machinery every part shares.

What this part of the engine upholds (see apply.py for the whole list):

- the first cause of an abort wins, and setting it never waits on I/O (`abort` runs in
  signal handlers);
- no step intent is journaled after the abort is journaled: both happen under the
  journal-order lock (`_emit_intent`, `_journal_abort`);
- when the journal fails, no forward work starts again and in-flight forward commands
  are cancelled, but rollbacks go on emitting (the targets matter more than the
  evidence; the bus keeps a side record) (`_emit`, `_journal_failed`);
- every step and rollback command carries the run's marker and its attempt's token, and
  its process group is journaled once it exists, so `recover` can end it (`_record_process`).
"""

from __future__ import annotations

import contextlib
import getpass
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from rollout.checks import Verdict
from rollout.engine.events import Bus
from rollout.engine.guards import GuardMonitor
from rollout.engine.outcomes import AppliedStep, Cause, RollbackFailure
from rollout.engine.pool import WorkerPool
from rollout.engine.prepare import Schedule
from rollout.engine.probe import CheckRunner
from rollout.engine.processes import command_env
from rollout.errors import ExecutorError, JournalError
from rollout.event import Event, EventKind
from rollout.executors import open_executor
from rollout.executors.base import Become, CommandResult, Executor, OnStart, Target, become_arg
from rollout.model import Check, Guard, Step
from rollout.units import format_duration

RECOVERY_TIMEOUT_MIN = 10.0


class EngineCore:
    """The state of one run (or recovery) and the machinery that stops it; the Engine's parts build on it."""

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
        self.operator = operator or _operator()
        self._executors: dict[str, Executor] = {}
        # Reentrant: interrupt() runs in a signal handler on the main thread, which may hold them.
        self._executors_lock = threading.RLock()
        # Reopenings of dropped connections left running by an abort, with when to stop waiting (connections.py).
        self._reopeners: list[tuple[threading.Thread, float]] = []
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
        # The identities of the AppliedSteps in `_applied`: a retry asks "already tracked?"
        # on every attempt, which must not scan a stack that grows with the run.
        self._tracked: set[int] = set()
        self._failed_hosts: list[str] = []
        self._unreachable: dict[str, str] = {}
        self._host_rollbacks: list[tuple[str, str]] = []
        self._host_rollback_failures: list[RollbackFailure] = []
        self._host_remaining: dict[str, tuple[str, ...]] = {}
        self._state_lock = threading.Lock()
        self._pool = WorkerPool(
            abort=self._abort,
            kill_now=self._kill_now,
            grace=grace,
            rolling_back=lambda: self._rolling_back,
            journal_abort=lambda in_flight: self._journal_abort(in_flight=in_flight),
            cancel_forward=self._cancel_forward,
            worker_failed=lambda exc, where: self._internal_error(exc, where=where),
            concurrency=schedule.loaded.plan.strategy.concurrency,
        )
        self.runner = CheckRunner(
            schedule.loaded.path.parent.resolve(),
            stop=self._stop_probes,
            abort=self._abort,
            env=command_env(schedule.run_id),
            passwords={name: host.become_password for name, host in schedule.hosts.items()},
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

    @property
    def grace(self) -> float:
        """On abort, how long in-flight commands may finish before they are killed."""
        return self._pool.grace

    @grace.setter
    def grace(self, seconds: float) -> None:
        self._pool.grace = seconds

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
        """Close every executor and end the host threads (idempotent)."""
        with self._executors_lock:
            executors = list(self._executors.values())
            self._executors.clear()
        for ex in executors:
            with contextlib.suppress(Exception):  # closing is best effort; the outcome is already known
                ex.close()
        self.runner.close()
        self._pool.close()

    def _emit(self, event: Event, *, sync: bool = False) -> None:
        """Emit an event; once the journal has failed, only the rollback may go on emitting."""
        if self._fatal is not None and not self._rolling_back:
            raise self._fatal
        if event.kind == EventKind.RUN_END:
            self.guards.summarise()  # the guards' record of punctuality precedes the verdict
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

    # --- shared by the parts ------------------------------------------------------

    def _changed_anything(self) -> bool:
        with self._state_lock:
            return any(self._applied.values())

    def _track_applied(self, applied: AppliedStep) -> None:
        """Put a step that is about to start on its host's rollback stack (once, whatever the attempts)."""
        with self._state_lock:
            if id(applied) not in self._tracked:
                self._tracked.add(id(applied))
                self._applied[applied.host].append(applied)

    def _untrack_applied(self, applied: AppliedStep) -> None:
        """Take a step that never started off its host's rollback stack."""
        with self._state_lock:
            if id(applied) in self._tracked:
                self._tracked.discard(id(applied))
                stack = self._applied[applied.host]
                # It is the newest entry: a host's steps run one after another.
                for pos in range(len(stack) - 1, -1, -1):
                    if stack[pos] is applied:
                        del stack[pos]
                        break

    def _internal_error(self, exc: BaseException, *, where: str) -> None:
        """An unexpected exception: abort with it as the cause (the first cause still wins)."""
        self.abort(
            Cause(
                "internal",
                f"internal error in {where}: {type(exc).__name__}: {exc}",
                detail={"exception": type(exc).__name__, "traceback": _traceback_tail(exc)},
            )
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

    def _cause_kind(self) -> str | None:
        with self._cause_lock:
            return self._cause.kind if self._cause is not None else None

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

    def become_for(self, host: str, item: Step | Check) -> Become | None:
        """How a step's (or check's) command runs on `host`: through sudo as its become_user, or None."""
        if not item.become:
            return None
        return Become(item.become_user or "root", self.schedule.hosts[host].become_password)

    def _record_process(
        self, wave: int | None, host: str, step: str, role: str, token: str, become: Become | None = None
    ) -> OnStart:
        """A callback that journals a step or rollback command's process group once it exists.

        A group started through sudo is journaled with its become user: it belongs to that
        user (and root), so whoever ends it must go through sudo too.
        """
        extra = {"become_user": become.user} if become is not None else {}

        def record(pgid: int) -> None:
            self._emit(
                Event(
                    EventKind.PROCESS,
                    wave=wave,
                    host=host,
                    step=step,
                    data={"role": role, "pgid": pgid, "attempt_id": token, **extra},
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
        become: Become | None = None,
    ) -> CommandResult:
        try:
            return ex.run(command, timeout=timeout, env=env, on_start=on_start, **become_arg(become))
        except ExecutorError as exc:
            return CommandResult(
                host=ex.target.name,
                command=command,
                exit_code=None,
                stdout="",
                stderr=str(exc),
                duration=0.0,
            )

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


def _traceback_tail(exc: BaseException, lines: int = 12) -> str:
    """The innermost frames of an unexpected exception: evidence for a bug report."""
    text = "".join(traceback.format_exception(exc))
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _operator() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return f"uid {__import__('os').getuid()}"
