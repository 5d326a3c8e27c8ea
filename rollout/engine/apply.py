"""Apply: the run driver. Pre-checks, guards, waves, failure budget, bake, and rollback on any abort.

A run either completes or leaves every target where it started, and says which.
The engine never prints: every step of the way is an event on the bus, and the intent
of each change (and of each rollback) is made durable before the command starts.

The invariants the engine keeps (tests/test_engine_model.py checks them on random
plans and failures), and where the code that upholds each one lives:

- `succeeded` implies every step applied on every in-scope host and every guard green,
  by a probe started after the last change, in the snapshot the verdict was taken on
  (bake.py: `_finish`);
- a bake ends only with every guard freshly green; a failing guard extends it by at
  most `every x fail_after + timeout`, then the run aborts (bake.py: `_bake`, `_settle`);
- no step intent is journaled after the abort is journaled (both under one lock:
  `_emit_intent`, `_journal_abort` in core.py);
- any failure, including rollout's own (an unexpected exception), aborts and rolls
  back every applied step newest first (`run` here; pool.py turns a worker's exception
  into the abort); the outcome is derived from what is still applied after the
  rollback, never from what happened along the way (rollback.py: `roll_back`);
- a host that fails within the failure budget is put back where it started at once;
  beyond the budget, the run aborts (`_host_failed` here);
- when the journal fails, no forward work starts again, but rollbacks go on (the
  targets matter more than the evidence) and the bus keeps a side record (core.py:
  `_emit`, `_journal_failed`);
- a rollback rehearsal (`run(rehearse_rollback=True)`) runs forward, rollback, reapply in
  order, each between `rehearsal.phase` and `rehearsal.phase_end`, none after one that
  failed; its rollback phase is an abort's rollback (every applied step, newest first,
  then guards freshly green within the recovery timeout) and a failure there ends the
  run rollback_failed with nothing reapplied; Ctrl-C in it lets it finish, then ends the
  run interrupted; reapply's end and the success verdict are journaled under one lock
  (rehearse.py; tests/test_rehearse_model.py checks these on random plans and failures).

Threads: host workers and guards are threads because SSH and probes block; work is
cancelled by killing process groups or closing channels (Executor.cancel), never by
hoping a thread notices (pool.py).

The Engine is this run driver (the run from start to verdict, waves, the failure
budget) over one part per concern: core.py (state, bus, the abort machinery), prechecks.py,
steps.py (one step on one host), bake.py (bake and the success verdict), connections.py
(dropped connections reopened during a bake), rollback.py,
rehearse.py (the rollback rehearsal's phases);
pool.py runs host workers; outcomes.py holds the records the engine hands back.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from rollout import __version__
from rollout.engine.bake import BakeMixin
from rollout.engine.connections import ConnectionsMixin
from rollout.engine.core import RECOVERY_TIMEOUT_MIN
from rollout.engine.outcomes import (
    OUTPUT_EXCERPT,
    AppliedStep,
    Cause,
    RollbackFailure,
    RunResult,
)
from rollout.engine.prechecks import SSH_CHECK, PrecheckMixin
from rollout.engine.prepare import HostPlan
from rollout.engine.rehearse import RehearsalMixin
from rollout.engine.rollback import RollbackMixin
from rollout.engine.steps import StepsMixin
from rollout.errors import JournalError
from rollout.event import Event, EventKind, Outcome
from rollout.units import format_duration

# Importers outside the engine still find the outcomes here.
__all__ = [
    "OUTPUT_EXCERPT",
    "RECOVERY_TIMEOUT_MIN",
    "SSH_CHECK",
    "AppliedStep",
    "Cause",
    "Engine",
    "RollbackFailure",
    "RunResult",
]


class Engine(RehearsalMixin, PrecheckMixin, StepsMixin, BakeMixin, ConnectionsMixin, RollbackMixin):
    """Executes a prepared schedule, or rolls back what a dead run left applied."""

    # --- the run ------------------------------------------------------------------

    def run(self, *, rehearse_rollback: bool = False) -> RunResult:
        """Pre-checks, guards, waves with bake; on any abort, roll back. Never raises for a target's failure.

        With `rehearse_rollback`, the waves are followed by a deliberate rollback of
        everything and then by the waves again (rehearse.py).
        """
        self.rehearsing = rehearse_rollback
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

    def _run(self) -> RunResult:
        s = self.schedule
        self.journal_start()
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
            return self.end_unchanged(Outcome.REFUSED, cause, failed_prechecks=tuple(failed))
        if self._abort.is_set():  # interrupted during pre-checks: nothing changed
            return self.end_unchanged(Outcome.INTERRUPTED, self._cause or Cause("interrupt", "interrupted"))
        self._emit(Event(EventKind.PRECHECKS_PASSED, outcome="ok", data={"hosts": len(s.hosts)}))
        self.journal_parity()  # read-only: what the environment was like before the first change
        self.guards.start()
        if self.rehearsing:
            return self._rehearse(self._waves)
        last_change = self._waves()
        if last_change is not None:
            result = self._finish(since=last_change)
            if result is not None:
                return result
        return self._abort_and_roll_back()

    def _waves(self, *, skip: frozenset[str] = frozenset()) -> float | None:
        """Every wave, each followed by its bake: when the last change was made, or None once the run aborts.

        Hosts in `skip` (put back after failing within budget) are left out.
        """
        last_change = self.guards.now()
        waves = self.schedule.waves
        for wave, following in zip(waves, [*waves[1:], None], strict=True):
            if self._abort.is_set():
                break
            self._emit(
                Event(
                    EventKind.WAVE_START,
                    wave=wave.index,
                    data={"hosts": list(wave.hosts), "size": wave.size},
                )
            )
            self._run_wave(wave.index, tuple(h for h in wave.hosts if h not in skip))
            if self._abort.is_set():
                break
            self._emit(Event(EventKind.WAVE_END, wave=wave.index, outcome="ok"))
            last_change = self.guards.now()
            ahead = tuple(h for h in following.hosts if h not in skip) if following else ()
            with self.reopening_during_bake(ahead):
                baked = self._bake(wave.index, since=last_change)
            if not baked:
                break
        return None if self._abort.is_set() else last_change

    def end_unchanged(
        self, outcome: str, cause: Cause, *, failed_prechecks: tuple[tuple[str, str, str], ...] = ()
    ) -> RunResult:
        """End a run that changed nothing on any host: journal its run.end, return its result."""
        self._emit(
            Event(EventKind.RUN_END, outcome=outcome, data={"cause": cause.to_dict(), "changed": False}), sync=True
        )
        return RunResult(outcome, cause=cause, failed_prechecks=failed_prechecks)

    def journal_start(self) -> None:
        """Journal the run.start line: what runs where, with which plan, and who runs it."""
        self._emit(Event(EventKind.RUN_START, data=self._run_start_data()), sync=True)

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

    # --- waves and the failure budget ---------------------------------------------

    def _run_wave(self, wave: int, host_names: tuple[str, ...]) -> None:
        hosts = [self.schedule.hosts[h] for h in host_names]
        self._pool.run(lambda h: self._run_host(wave, h), hosts)

    def _run_host(self, wave: int, host: HostPlan) -> None:
        for index, step in enumerate(host.steps):
            if self._abort.is_set():
                return
            applied = AppliedStep(host.name, wave, index, step)
            failure = self._apply_step(wave, host, applied)
            if failure is not None:
                self._host_failed(wave, host, failure)
                return

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
