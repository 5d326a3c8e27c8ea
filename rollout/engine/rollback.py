"""Rollback: undo every applied step, newest first, hosts in parallel; then guards must be green.

What this part of the engine upholds (see apply.py for the whole list):

- the abort is journaled once, with its cause, before the rollback starts (core.py
  `_journal_abort`, which also keeps any step intent from following it);
- every step that started is rolled back, newest first; on a host, a failed rollback
  stops that host's rollback (undoing older steps under one we could not undo could make
  things worse); irreversible steps are left applied, and the run says so;
- each rollback's intent is journaled before its command starts, and rollbacks go on
  emitting when the journal has failed (the targets matter more than the evidence);
- the outcome is derived from what is still applied after the rollback, never from
  what happened along the way.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from rollout.checks import excerpt
from rollout.engine.core import EngineCore
from rollout.engine.outcomes import (
    AppliedStep,
    Cause,
    RollbackFailure,
    RunResult,
    ended,
    result_data,
    result_outcome,
)
from rollout.engine.prepare import HostPlan
from rollout.engine.processes import command_env, new_token
from rollout.engine.uploads import restore_step, upload_key
from rollout.event import Event, EventKind, Outcome
from rollout.executors.base import CommandResult
from rollout.units import format_duration


@dataclass(frozen=True)
class Undo:
    """What one pass of rollbacks over every host did, and what it left applied."""

    undone: tuple[tuple[str, str], ...]
    failures: tuple[RollbackFailure, ...]
    remaining: dict[str, tuple[str, ...]]
    irreversible: dict[str, tuple[str, ...]]


class RollbackMixin(EngineCore):
    """The Engine's rollback, after an abort or for `recover`."""

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
            self._tracked = {id(a) for stack in self._applied.values() for a in stack}
        undo = self._undo_all(
            cause.summary,
            plan=plan,
            attempts=list(self._host_rollback_failures),
            undone=list(self._host_rollbacks),
        )
        green = self._recovery_check()
        return self._end_rolled_back(cause, undo, green, interrupted=interrupted)

    def _undo_all(
        self,
        reason: str,
        *,
        plan: Mapping[str, list[str]] | None = None,
        attempts: list[RollbackFailure] | None = None,
        undone: list[tuple[str, str]] | None = None,
    ) -> Undo:
        """Undo every applied step, newest first, hosts in parallel, between rollback.start and rollback.end.

        `attempts` and `undone` carry what earlier rollbacks of this run (hosts that failed
        within budget) already tried; the failures returned are those that still stand.
        """
        plan = plan or {h: list(names) for h, names in self._still_applied(irreversible=True).items()}
        self._emit(Event(EventKind.ROLLBACK_START, data={"plan": plan, "cause": reason}), sync=True)
        if not self.guards.empty and not self.guards.running:  # recovery, or after the final freeze
            self.guards.start()
        tried: list[RollbackFailure] = list(attempts or [])
        done: list[tuple[str, str]] = list(undone or [])
        lock = threading.Lock()

        def host_rollback(host: HostPlan) -> None:
            f, u, _, _ = self._roll_back_host(host.name, reason=reason)
            with lock:
                tried.extend(f)
                done.extend(u)

        hosts = [self.schedule.hosts[h] for h in self._still_applied(irreversible=True)]
        self._pool.run(host_rollback, hosts, rollback=True)
        remaining = self._still_applied()
        irreversible = self._irreversible_left()
        # Only the failures that still stand: the last attempt on a step that is still applied.
        failures = list({(f.host, f.step): f for f in tried if f.step in remaining.get(f.host, ())}.values())
        self._emit(
            Event(
                EventKind.ROLLBACK_END,
                outcome="failed" if failures else "ok",
                data={
                    "undone": [list(x) for x in done],
                    "failed": [{"host": f.host, "step": f.step, "summary": f.summary} for f in failures],
                    "remaining": {h: list(v) for h, v in remaining.items()},
                    "irreversible_left": {h: list(v) for h, v in irreversible.items()},
                },
            ),
            sync=True,
        )
        return Undo(tuple(done), tuple(failures), remaining, irreversible)

    def _recovery_check(self) -> bool:
        """After a rollback, every guard must pass a fresh probe within the recovery timeout (journaled)."""
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
        return green

    def _end_rolled_back(self, cause: Cause, undo: Undo, green: bool, *, interrupted: bool) -> RunResult:
        """Stop the guards and end the run after its rollback: the outcome is what is still applied."""
        undone, failures, remaining, irreversible = undo.undone, undo.failures, undo.remaining, undo.irreversible
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
            rolled_back=undone,
            rollback_failures=failures,
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
                if (names := tuple(dict.fromkeys(a.step.name for a in reversed(stack) if a.step.irreversible)))
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
            become = None if step.restores_upload else self.become_for(host_name, step)
            self._emit(
                Event(
                    EventKind.ROLLBACK_INTENT,
                    wave=item.wave,
                    host=host_name,
                    step=step.name,
                    data={
                        "command": step.rollback_command,
                        "timeout": format_duration(timeout),
                        "reason": reason,
                        "state": item.state,
                        "attempt_id": token,
                        **({"become_user": become.user} if become is not None else {}),
                    },
                ),
                sync=True,
            )
            try:
                if step.restores_upload:
                    result = restore_step(ex, step, key=upload_key(self.schedule.run_id, item.index))
                else:
                    result = self._execute(
                        ex,
                        step.rollback,
                        timeout,
                        env=command_env(self.schedule.run_id, token),
                        on_start=self._record_process(item.wave, host_name, step.name, "rollback", token, become),
                        become=become,
                    )
            except Exception as exc:  # rollout's own failure must not leave the host half undone silently
                result = CommandResult(host_name, step.rollback, None, "", f"internal error: {exc!r}", 0.0)
            self._emit(
                Event(
                    EventKind.ROLLBACK_RESULT,
                    wave=item.wave,
                    host=host_name,
                    step=step.name,
                    outcome=result_outcome(result),
                    data=result_data(result),
                ),
                sync=True,
            )
            if result.ok:
                with self._state_lock:
                    item.state = "rolled_back"
                undone.append((host_name, step.name))
                continue
            what = "timed out" if result.timed_out else ("was killed" if result.cancelled else ended(result))
            tail = excerpt(result.stderr or result.stdout, 300)
            failures.append(RollbackFailure(host_name, step.name, f"rollback {what}" + (f": {tail}" if tail else "")))
            # Older steps stay applied: undoing them under a step we could not undo could make things worse.
            remaining = tuple(a.step.name for a in ordered[pos:] if not a.step.irreversible)
            return failures, undone, remaining, tuple(irreversible)
        return failures, undone, (), tuple(irreversible)
