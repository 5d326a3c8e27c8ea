"""Bake and the final verdict: the next wave, and success, wait for every guard to be freshly green.

What this part of the engine upholds (see apply.py for the whole list):

- a bake ends only with every guard freshly green (a probe started after the wave's last
  change); a failing guard extends it by at most `every x fail_after + timeout` (the
  settle bound), then the run aborts;
- `succeeded` implies every step applied on every in-scope host and every guard green,
  by a probe started after the last change, in the snapshot the verdict was taken on;
  the verdict and an abort line are journaled under one lock, so they cannot cross.
"""

from __future__ import annotations

import time
from typing import Any

from rollout.engine.core import EngineCore
from rollout.engine.guards import GREEN, TRIPPED, GuardState
from rollout.engine.outcomes import Cause, RunResult
from rollout.event import Event, EventKind, Outcome
from rollout.units import format_duration


class BakeMixin(EngineCore):
    """The Engine's bake between waves and its success verdict."""

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

    def _finish(self, *, since: float, closing: Event | None = None) -> RunResult | None:
        """Take the success verdict on a frozen snapshot of the guards; None when the run must roll back.

        `closing` (a rehearsal's last phase end) is journaled with the verdict, under the same lock.
        """
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
            if closing is not None:
                self._emit(closing, sync=True)
            self._emit(Event(EventKind.RUN_END, outcome=Outcome.SUCCEEDED, data=data), sync=True)
        return RunResult(
            Outcome.SUCCEEDED,
            failed_hosts=tuple(self._failed_hosts),
            rolled_back=tuple(self._host_rollbacks),
            rollback_failures=tuple(self._host_rollback_failures),
            remaining=dict(self._host_remaining),
            guards_green=None if self.guards.empty else True,
        )
