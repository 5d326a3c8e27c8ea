"""Continuous guards: every guard probed on every host, tripping an abort on failure.

Probes are timed and run by one ProbeScheduler (rollout.engine.scheduler): one event loop
for HTTP and TCP, a small pool for commands, never a thread per guard, so detection keeps
its pace on a 1,000-host fleet. From PROCESS_MIN_SLOTS HTTP and TCP guards on, their loop
runs in a process of its own (rollout.engine.prober), where the host workers cannot make
a probe start late. States are journaled on change only (green -> failing ->
tripped -> green), with the probe's values; so is lag (`guard.lagging`, `guard.caught_up`),
once per episode, and just before the run's verdict, one `guards.stop` summary of how
punctual the probes were. A probe the scheduler calls inconclusive (its deadline ran out
while rollout itself was starved) changes no state: a timeout means the target was slow.

The engine takes its verdicts from here, so the monitor keeps two promises:

- "green" is evidence, not an absence of news: `settled(since)` holds only when every
  guard's latest probe *started* after `since` (the last change) and passed;
- `freeze()` ends probing atomically with the state: a verdict is recorded (and
  journaled) either before the freeze, where the snapshot sees it, or not at all. A trip
  can therefore never land between the engine's last look and the end of the run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial

from rollout.checks import Verdict
from rollout.engine.events import Bus
from rollout.engine.probe import CheckRunner
from rollout.engine.prober import ProcessProber
from rollout.engine.scheduler import ProbeScheduler, ProbeStats, Slot
from rollout.errors import JournalError
from rollout.event import Event, EventKind
from rollout.executors.base import Executor
from rollout.model import Guard

PROCESS_MIN_SLOTS = 32  # HTTP and TCP guard slots from which probing gets a process of its own
GREEN = "green"
FAILING = "failing"
TRIPPED = "tripped"


@dataclass
class GuardState:
    """What one guard on one host has seen so far."""

    host: str
    guard: Guard
    state: str = GREEN
    consecutive: int = 0
    last: Verdict | None = None
    last_started: float = 0.0


TripHandler = Callable[[str, Guard, Verdict, int], None]


class GuardMonitor:
    """Runs every guard on every host until stopped; calls `on_trip` once per trip."""

    def __init__(
        self,
        guards: Mapping[str, tuple[Guard, ...]],
        executors: Callable[[str], Executor],
        runner: CheckRunner,
        bus: Bus,
        on_trip: TripHandler,
        on_fatal: Callable[[JournalError], None],
        clock: Callable[[], float] = time.monotonic,
        own_process: bool | None = None,
    ) -> None:
        self._executors = executors
        self._runner = runner
        self._bus = bus
        self._on_trip = on_trip
        self._on_fatal = on_fatal
        self._clock = clock
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self.states = {(host, i): GuardState(host, g) for host, gs in guards.items() for i, g in enumerate(gs)}
        self._slots = [Slot(host, i, state.guard) for (host, i), state in self.states.items()]
        self.stats = ProbeStats()
        self._schedulers: list[ProbeScheduler | ProcessProber] = []
        on_loop = sum(CheckRunner.on_loop(slot.guard) for slot in self._slots)
        if own_process is None:  # the child's verdicts are timed on the system's monotonic clock
            own_process = clock is time.monotonic and on_loop >= PROCESS_MIN_SLOTS
        self._own_process = own_process
        self._generation = 0  # verdicts of an earlier start are dropped
        self._dead: set[tuple[str, int]] = set()  # guards whose state could not be journaled
        self._waiting: list[float] = []  # the `since` of every wait_settled in progress
        self._announced = False
        self._summarised = False
        self._lag_episodes = 0

    @property
    def running(self) -> bool:
        """True while the probe scheduler is running."""
        return bool(self._schedulers) and not self._stop.is_set()

    @property
    def empty(self) -> bool:
        """True when the plan has no guards."""
        return not self.states

    def start(self) -> None:
        """Start the probe scheduler for every host and guard (again after a stop or freeze)."""
        self._stop.clear()
        if self.states and not self._announced:
            self._announced = True
            self._bus.emit(
                Event(
                    EventKind.GUARDS_START,
                    data={
                        "guards": sorted({s.guard.label for s in self.states.values()}),
                        "hosts": len(self.states),
                    },
                )
            )
        if not self.states or self._schedulers:
            return
        self._generation += 1
        deliver = partial(self._delivered, self._generation)
        lag = partial(self._lagged, self._generation)
        slots = self._slots
        if self._own_process:
            on_loop = [slot for slot in slots if CheckRunner.on_loop(slot.guard)]
            slots = [slot for slot in slots if not CheckRunner.on_loop(slot.guard)]
            self._schedulers.append(ProcessProber(on_loop, self._runner, self._executors, self.stats, deliver, lag))
        if slots:
            self._schedulers.append(
                ProbeScheduler(slots, self._runner, self._executors, self.stats, deliver, lag, clock=self._clock)
            )
        for scheduler in self._schedulers:
            scheduler.start()

    def stop(self) -> None:
        """Stop probing; command probes in flight finish first (within their timeout), HTTP and TCP ones are dropped."""
        with self._changed:
            self._stop.set()
            self._changed.notify_all()
            schedulers, self._schedulers = self._schedulers, []
        for scheduler in schedulers:
            scheduler.stop(wait=30)

    def summarise(self) -> None:
        """Journal once, just before the run's verdict, how punctual the probes were: did the guards really guard?

        A journal failure here is left to the verdict's own line, which meets it next.
        """
        if self._summarised or not self._announced:
            return
        self._summarised = True
        data = {**self.stats.summary(), "lag_episodes": self._lag_episodes}
        with contextlib.suppress(JournalError):
            self._bus.emit(Event(EventKind.GUARDS_STOP, data=data))

    def freeze(self) -> list[GuardState]:
        """Stop recording verdicts, atomically with a snapshot of every state, then stop probing.

        A probe still in flight when the freeze comes is not evidence yet: its verdict is
        dropped, so what the snapshot says is exactly what the journal says.
        """
        with self._changed:
            self._stop.set()
            snapshot = [replace(s) for s in self.states.values()]
            self._changed.notify_all()
        self.stop()
        return snapshot

    def settled(self, since: float) -> bool:
        """True when every guard's latest probe started at or after `since` and passed."""
        with self._changed:
            return all(_fresh_green(s, since) for s in self.states.values())

    def not_settled(self, since: float) -> list[GuardState]:
        """The guards without a passing probe started at or after `since`."""
        with self._changed:
            return [replace(s) for s in self.states.values() if not _fresh_green(s, since)]

    def wait_settled(self, since: float, deadline: float, abort: threading.Event) -> bool:
        """Wait until `settled(since)`; False at `deadline` (monotonic) or as soon as `abort` is set."""
        with self._changed:
            self._waiting.append(since)
            try:
                while True:
                    if all(_fresh_green(s, since) for s in self.states.values()):
                        return True
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or abort.is_set() or self._stop.is_set():
                        return False
                    # A trip reaches the engine's abort after the state change is notified:
                    # look at the abort flag again soon rather than sleep out the deadline.
                    self._changed.wait(min(remaining, 0.05))
            finally:
                self._waiting.remove(since)

    def _delivered(self, generation: int, slot: Slot, verdict: Verdict, started: float) -> None:
        """A verdict from the scheduler (any of its threads); one from an earlier start is dropped."""
        key = (slot.host, slot.index)
        if generation != self._generation or key in self._dead:
            return
        try:
            self._record(self.states[key], verdict, started)
        except JournalError as exc:
            self._dead.add(key)
            self._on_fatal(exc)

    def _lagged(self, generation: int, slot: Slot, late: float, why: str) -> None:
        """Journal the start or the end of a lag episode (state changes only, like guard states)."""
        caught_up = why == "caught up"
        data = {"guard": slot.guard.label, "late_ms": round(late * 1000), "every": slot.guard.every}
        if not caught_up:
            data = {**data, "reason": why}
        with self._changed:
            if generation != self._generation or self._stop.is_set():
                return
            self._lag_episodes += not caught_up
            try:
                kind = EventKind.GUARD_CAUGHT_UP if caught_up else EventKind.GUARD_LAGGING
                self._bus.emit(Event(kind, host=slot.host, data={**data, "skipped": slot.skipped}))
            except JournalError as exc:
                self._on_fatal(exc)

    def _record(self, state: GuardState, verdict: Verdict, started: float) -> None:
        guard = state.guard
        tripped_now = False
        with self._changed:
            if self._stop.is_set():
                return  # frozen: the engine has taken its verdict without this probe
            before = state.state
            previous_start = state.last_started
            state.last = verdict
            state.last_started = started
            if verdict.ok:
                state.consecutive = 0
                state.state = GREEN
            else:
                state.consecutive += 1
                if state.state == GREEN:
                    state.state = FAILING
                if state.consecutive >= guard.fail_after and state.state != TRIPPED:
                    state.state = TRIPPED
                    tripped_now = True
            if state.state != before or tripped_now:
                # Journaled under the lock, so a freeze sees a state only once it is evidence.
                self._bus.emit(
                    Event(
                        EventKind.GUARD_STATE,
                        host=state.host,
                        outcome=state.state,
                        data={
                            "guard": guard.label,
                            "from": before,
                            "consecutive_failures": state.consecutive,
                            "fail_after": guard.fail_after,
                            "summary": verdict.summary,
                            "probe": dict(verdict.observed),
                        },
                    ),
                    sync=tripped_now,
                )
            # Waiters care about a change of state, or a guard's first probe since their `since`;
            # waking them on every probe (1,000 a second) would spend a core re-reading states.
            if state.state != before or any(previous_start < w <= started for w in self._waiting):
                self._changed.notify_all()
        if tripped_now:
            self._on_trip(state.host, guard, verdict, state.consecutive)

    def failing(self) -> list[GuardState]:
        """Guards whose last probe failed."""
        with self._changed:
            return [replace(s) for s in self.states.values() if s.state != GREEN]

    def wait_all_green(self, timeout: float) -> bool:
        """Wait until every guard on every host passes a probe started from now on."""
        if not self.states:
            return True
        return self.wait_settled(self._clock(), time.monotonic() + timeout, threading.Event())

    def now(self) -> float:
        """The monitor's clock, the one `settled(since)` compares probe start times with."""
        return self._clock()


def _fresh_green(state: GuardState, since: float) -> bool:
    return state.state == GREEN and state.last is not None and state.last_started >= since
