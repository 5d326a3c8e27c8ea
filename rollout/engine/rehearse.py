"""Rehearsing the rollback: the waves, a deliberate rollback of everything, then the waves again.

`rollout run --rehearse-rollback` (rehearsal environments only) proves both directions in
one run and one journal. What this part of the engine upholds (see apply.py for the whole list):

- the phases run in order, forward -> rollback -> reapply; each opens with
  `rehearsal.phase` and closes with `rehearsal.phase_end` (ok or failed, and its seconds);
  a phase that does not end ok ends the run, and no later phase starts;
- forward and reapply are the ordinary waves with their bakes; a failure in either aborts
  and rolls back exactly as in any run (rolled_back, or interrupted on Ctrl-C);
- the rollback phase is an abort's rollback without an abort: every applied step on every
  host, newest first, then every guard freshly green within the recovery timeout; guard
  trips while it runs are not failures (as in any rollback). If a step stays applied or a
  guard stays red, the run stops there: rollback_failed, and nothing is reapplied;
- Ctrl-C during the rollback phase lets it finish (a rollback is never cut short), then
  the run ends interrupted instead of reapplying;
- reapply's `phase_end ok` and the success verdict are journaled together, under the lock
  that orders the abort line: a rehearsal never reads "reapply ok" and then rolls back.
"""

from __future__ import annotations

from collections.abc import Callable

from rollout.engine.bake import BakeMixin
from rollout.engine.outcomes import Cause, RunResult
from rollout.engine.rollback import RollbackMixin, Undo
from rollout.event import Event, EventKind

FORWARD = "forward"
ROLLBACK = "rollback"
REAPPLY = "reapply"
PHASES = (FORWARD, ROLLBACK, REAPPLY)

# The waves of the run driver: when the last change was made, or None once the run aborts.
Waves = Callable[..., float | None]


class RehearsalMixin(BakeMixin, RollbackMixin):
    """The Engine's rollback rehearsal: three phases in one run."""

    rehearsing = False
    _rehearsal_phase: str | None = None

    def interrupt(self, signal_name: str = "SIGINT") -> str:
        """Ctrl-C during the rehearsal's rollback: it finishes, then the run ends instead of reapplying."""
        if self._rehearsal_phase == ROLLBACK:
            self._interrupts += 1
            self.abort(
                Cause("interrupt", f"interrupted by the operator ({signal_name}) during the rehearsal's rollback")
            )
            return "the rehearsal's rollback will finish (a rollback is never cut short); then the run ends, nothing is reapplied"
        return super().interrupt(signal_name)

    def _rehearse(self, waves: Waves) -> RunResult:
        """Forward, rollback, reapply; the run's result."""
        started = self._phase(FORWARD)
        last = waves()
        if last is None or not self._settle(None, last) or not self._phase_ok(FORWARD, started):
            self._phase_end(FORWARD, "failed", started)
            return self._abort_and_roll_back()
        if self._abort.is_set():
            return self._abort_and_roll_back()
        ended = self._rehearse_rollback(self._phase(ROLLBACK))
        if ended is not None:
            return ended
        if self._abort.is_set():  # interrupted, or the journal failed, while rolling back
            return self._abort_and_roll_back()
        started = self._phase(REAPPLY)
        # hosts put back after failing within budget stay out of scope, as they were in forward
        last = waves(skip=frozenset(self._failed_hosts))
        if last is not None:
            result = self._finish(since=last, closing=self._phase_end_event(REAPPLY, "ok", started))
            if result is not None:
                return result
        self._phase_end(REAPPLY, "failed", started)
        return self._abort_and_roll_back()

    def _rehearse_rollback(self, started: float) -> RunResult | None:
        """Undo everything, then every guard must be green: the run's end when that failed, else None."""
        # Set before `_rolling_back` and cleared after it: an interrupt in between is never lost.
        self._rehearsal_phase = ROLLBACK
        self._rolling_back = True  # as in any rollback: guard trips are not failures, nothing cuts it short
        undo = self._undo_all("rehearsal: rolling back every applied step to prove the way back")
        green = self._recovery_check()
        if undo.remaining or not green:
            self._phase_end(ROLLBACK, "failed", started)
            return self._end_rolled_back(_rollback_failed(undo, green), undo, green, interrupted=False)
        self._phase_end(ROLLBACK, "ok", started)
        self._rolling_back = False
        self._rehearsal_phase = None
        return None

    def _phase(self, phase: str) -> float:
        """Journal the start of a phase; when it started, on the engine's clock."""
        self._emit(Event(EventKind.REHEARSAL_PHASE, data={"phase": phase}), sync=True)
        return self._clock()

    def _phase_end_event(self, phase: str, outcome: str, started: float) -> Event:
        seconds = round(max(0.0, self._clock() - started), 3)
        return Event(
            EventKind.REHEARSAL_PHASE_END,
            outcome=outcome,
            data={"phase": phase, "outcome": outcome, "seconds": seconds},
        )

    def _phase_end(self, phase: str, outcome: str, started: float) -> None:
        self._emit(self._phase_end_event(phase, outcome, started), sync=True)

    def _phase_ok(self, phase: str, started: float) -> bool:
        """Journal a phase's success unless the run is aborting (under the lock the abort line takes)."""
        with self._journal_order:
            if self._abort.is_set():
                return False
            self._phase_end(phase, "ok", started)
            return True


def _rollback_failed(undo: Undo, green: bool) -> Cause:
    """Why the rehearsal's rollback failed: the first rollback that failed, or the guards still red."""
    if undo.failures:
        first = undo.failures[0]
        return Cause(
            "rollback",
            f"the rehearsal's rollback failed on {first.host}, step {first.step}: {first.summary}",
            host=first.host,
            step=first.step,
        )
    if undo.remaining:
        host, steps = next(iter(undo.remaining.items()))
        return Cause("rollback", f"the rehearsal's rollback left {', '.join(steps)} applied on {host}", host=host)
    return Cause("rollback", "guards are not green after the rehearsal's rollback: the way back is not proven")
