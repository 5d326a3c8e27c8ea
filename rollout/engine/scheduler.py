"""The probe scheduler: every guard's probes, due on the monotonic clock, from one event loop.

One thread runs an asyncio loop for the whole run. Each (host, guard) has a slot whose
probes are due every `every` seconds from a fixed phase: a jitter within `every` derived
from the host and the guard's name (the same in every run), so 1,000 probes do not fire
in the same millisecond. HTTP and TCP probes run on the loop itself (kept-alive
connections per origin, non-blocking connects); command and metadata probes go to a small
bounded thread pool, on the host's kept executor.

Invariants:
- At most one probe in flight per slot, and at most one pool probe in flight per host (a
  guard must never starve the steps on its host): a probe that comes due while it would
  break either is skipped and counted as lag, never queued behind.
- A timeout means the target was slow, not rollout. A probe that starts late is lagging,
  and lag is reported (`on_lag`), never a failure. The loop measures its own lag with a
  heartbeat; a probe that ran out its deadline while the process was starved of CPU
  is inconclusive: delivered as None, neither pass nor fail.
- Nothing is delivered after `stop` returns (the monitor's freeze relies on it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rollout.checks import Verdict
from rollout.engine.probe import CheckRunner
from rollout.executors.base import Executor
from rollout.model import Guard

POOL_WORKERS = 8  # command and metadata probes at once; each host has at most one
HEARTBEAT = 0.05  # how often the loop checks that it runs on time
STALL = 0.025  # a heartbeat this late is a stall: the process was starved (ordinary thread switches are shorter)
STARVED_SHARE = 0.1  # loop lag within a probe, as a share of its timeout, that makes a timeout inconclusive
STARVED_MIN = 0.05  # ... and never less than this many seconds
LATE = 0.1  # a probe that starts more than this after its due time started late
LAG_MEMORY = 120.0  # seconds of loop-lag history kept to judge probes by
HISTOGRAM_MS = 60_000  # start delays are counted per millisecond up to a minute


@dataclass(eq=False)
class Slot:
    """One guard on one host, as the scheduler sees it."""

    host: str
    index: int
    guard: Guard
    next_due: float = 0.0
    pending_since: float | None = None  # the due time of the oldest due probe not yet started
    in_flight: bool = False
    skipped: int = 0  # due probes skipped in the current lag episode
    start_late: float = 0.0  # how late the latest probe started, counted from the oldest due probe

    @property
    def phase(self) -> float:
        """Where in `every` this slot's probes fall: the same for this host and guard in every run."""
        digest = hashlib.blake2b(f"{self.host}\0{self.guard.label}\0{self.index}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 * self.guard.every


@dataclass
class ProbeStats:
    """How punctual the probes were over the whole run (all starts and stops added up)."""

    probes: int = 0
    due: int = 0
    skipped: int = 0
    started_late: int = 0
    inconclusive: int = 0
    max_start_delay: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * (HISTOGRAM_MS + 1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, delay: float) -> None:
        """Count one probe that started `delay` seconds after it was due."""
        delay = max(0.0, delay)
        with self.lock:
            self.probes += 1
            self.started_late += delay > LATE
            self.max_start_delay = max(self.max_start_delay, delay)
            self.histogram[min(int(delay * 1000), HISTOGRAM_MS)] += 1

    #: The plain counters, added up by `merge`.
    COUNTERS = ("probes", "due", "skipped", "started_late", "inconclusive")

    def _counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.COUNTERS}

    def counts(self) -> dict[str, Any]:
        """Everything counted, in JSON (the histogram sparse), for `merge` in another process."""
        with self.lock:
            return {
                **self._counters(),
                "max_start_delay": self.max_start_delay,
                "histogram": {ms: n for ms, n in enumerate(self.histogram) if n},
            }

    def merge(self, counts: Mapping[str, Any]) -> None:
        """Add the counts of another scheduler (`counts()`, perhaps from another process)."""
        with self.lock:
            for name in self.COUNTERS:
                setattr(self, name, getattr(self, name) + int(counts[name]))
            self.max_start_delay = max(self.max_start_delay, float(counts["max_start_delay"]))
            for ms, n in counts["histogram"].items():
                self.histogram[min(int(ms), HISTOGRAM_MS)] += int(n)

    def summary(self) -> dict[str, int]:
        """The numbers journaled when guards stop for good (delays in whole milliseconds)."""
        with self.lock:
            return {
                **self._counters(),
                "max_start_delay_ms": round(self.max_start_delay * 1000),
                "p99_start_delay_ms": _percentile(self.histogram, self.probes, 0.99),
            }


def _percentile(histogram: list[int], total: int, share: float) -> int:
    if total == 0:
        return 0
    rank, seen = share * total, 0
    for ms, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return ms
    return HISTOGRAM_MS


class LoopLag:
    """When the loop ran late, as measured by a heartbeat on the loop; read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._late: deque[tuple[float, float]] = deque()  # (from, until): the loop wanted to run but could not
        self._last_beat = time.monotonic()

    def beat(self, expected: float, now: float) -> None:
        """A heartbeat due at `expected` ran at `now`."""
        with self._lock:
            self._last_beat = now
            if now - expected > STALL:
                self._late.append((expected, now))
            while self._late and self._late[0][1] < now - LAG_MEMORY:
                self._late.popleft()

    def within(self, start: float, end: float) -> float:
        """Seconds between `start` and `end` during which the loop could not run when it should have."""
        with self._lock:
            overdue = (self._last_beat + HEARTBEAT + STALL, end)  # a beat that is late right now
            total = max(0.0, overdue[1] - max(overdue[0], start))
            for a, b in reversed(self._late):  # newest first: only the spans since `start` count
                if b <= start:
                    break
                total += max(0.0, min(b, end) - max(a, start))
        return total


Deliver = Callable[[Slot, Verdict | None, float], None]  # verdict None: inconclusive
LagReport = Callable[[Slot, float, str], None]  # (slot, seconds late, why); 0 late: caught up


class ProbeScheduler:
    """Runs every slot's probes until stopped: one loop thread, one small pool for commands."""

    def __init__(
        self,
        slots: Iterable[Slot],
        runner: CheckRunner,
        executors: Callable[[str], Executor],
        stats: ProbeStats,
        deliver: Deliver,
        lag: LagReport,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots = list(slots)
        self._runner = runner
        self._executors = executors
        self._stats = stats
        self._deliver = deliver
        self._report_lag = lag
        self._clock = clock
        self._lagging: set[Slot] = set()
        self._busy_hosts: set[str] = set()
        self._stopping = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._pool = ThreadPoolExecutor(max_workers=POOL_WORKERS, thread_name_prefix="guard-probe")
        self._in_pool = 0
        self._pool_idle = threading.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop_lag = LoopLag()
        self._thread = threading.Thread(target=self._run, name="guard-probes", daemon=True)

    def start(self) -> None:
        """Start the loop thread; the first probes fall due within one `every`."""
        self._thread.start()

    def stop(self, wait: float = 30.0) -> None:
        """Stop probing: HTTP and TCP probes are abandoned, command probes in flight finish (up to `wait`)."""
        self._stopping.set()
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=wait)
        elif not self._thread.ident:  # never started
            self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + wait
        with self._pool_idle:
            while self._in_pool and (left := deadline - time.monotonic()) > 0:
                self._pool_idle.wait(left)

    # --- the loop thread ---------------------------------------------------------------

    def _run(self) -> None:
        from rollout.http.aio import AsyncHttpPool

        loop = self._loop
        asyncio.set_event_loop(loop)
        # name lookups (non-literal hosts) use the loop's default executor: keep it small
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2, thread_name_prefix="guard-resolve"))
        self._http = AsyncHttpPool()
        now = loop.time()
        for slot in self._slots:
            slot.next_due = now + slot.phase
            loop.call_at(slot.next_due, self._due, slot)
        loop.call_at(now + HEARTBEAT, self._beat, now + HEARTBEAT)
        try:
            loop.run_forever()
        finally:
            for task in list(self._tasks):
                task.cancel()
            loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
            self._http.close()
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def _beat(self, expected: float) -> None:
        now = self._loop.time()
        self.loop_lag.beat(expected, now)
        self._loop.call_at(now + HEARTBEAT, self._beat, now + HEARTBEAT)

    def _due(self, slot: Slot) -> None:
        """A slot's probe is due: start it, or skip it (counted as lag) if it would overlap."""
        if self._stopping.is_set():
            return
        now = self._loop.time()
        due, every = slot.next_due, slot.guard.every
        missed = max(0, int((now - due) // every))  # ticks the loop slept through
        slot.next_due = due + (missed + 1) * every
        self._loop.call_at(slot.next_due, self._due, slot)
        with self._stats.lock:
            self._stats.due += 1 + missed
            self._stats.skipped += missed
        if slot.pending_since is None:
            slot.pending_since = due
        on_loop = CheckRunner.on_loop(slot.guard)
        blocked = slot.in_flight or (not on_loop and slot.host in self._busy_hosts)
        if blocked or missed:
            with self._stats.lock:
                self._stats.skipped += blocked
            slot.skipped += blocked + missed
            why = "previous probe still running" if slot.in_flight else "host busy" if blocked else "prober starved"
            self._late(slot, now - slot.pending_since, why)
        if blocked:
            return
        slot.in_flight = True
        if on_loop:
            task = self._loop.create_task(self._probe_on_loop(slot, due + missed * every))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._busy_hosts.add(slot.host)
            with self._pool_idle:
                self._in_pool += 1
            try:
                self._pool.submit(self._probe_in_pool, slot, due + missed * every)
            except RuntimeError:  # shut down under us: the run is stopping
                self._pool_done(slot)

    def _late(self, slot: Slot, late: float, why: str) -> None:
        """Say once per episode that a slot's probes do not start within one `every` of their due time."""
        if late > slot.guard.every and slot not in self._lagging:
            self._lagging.add(slot)
            self._report_lag(slot, late, why)

    def _soon(self, callback: Callable[..., None], *args: object) -> None:
        """Run `callback` on the loop thread (now, if this is it), unless the loop is gone (the scheduler stopped)."""
        if threading.get_ident() == self._thread.ident:
            callback(*args)  # no wake-up through the loop's pipe: a syscall per probe adds up at 1,000 a second
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _started(self, slot: Slot, due: float, started: float) -> None:
        """On the loop, when a probe has started: was it within one `every` of the oldest due probe?"""
        pending, slot.pending_since = slot.pending_since, None
        slot.start_late = started - (pending if pending is not None else due)
        if slot.start_late > slot.guard.every:
            self._late(slot, slot.start_late, "not started in time")

    def _finished(self, slot: Slot, verdict: Verdict, started: float, ended: float) -> None:
        """Deliver a verdict, or None if the deadline ran out while the prober was starved."""
        timeout = slot.guard.timeout
        starved = self.loop_lag.within(started, ended)
        if ended - started >= timeout and starved >= max(STARVED_MIN, STARVED_SHARE * timeout):
            with self._stats.lock:
                self._stats.inconclusive += 1
            self._soon(self._late_inconclusive, slot, starved)
            return
        if not self._stopping.is_set():
            self._deliver(slot, verdict, started)
            self._soon(self._on_time, slot)

    def _late_inconclusive(self, slot: Slot, starved: float) -> None:
        if slot not in self._lagging:
            self._lagging.add(slot)
            self._report_lag(slot, starved, "prober starved: probe inconclusive")

    def _on_time(self, slot: Slot) -> None:
        """A probe that started within one `every` of its due time and was conclusive ends a lag episode."""
        if slot in self._lagging and slot.pending_since is None and slot.start_late <= slot.guard.every:
            self._lagging.discard(slot)
            self._report_lag(slot, slot.start_late, "caught up")
            slot.skipped = 0

    async def _probe_on_loop(self, slot: Slot, due: float) -> None:
        started = self._clock()
        self._stats.started(started - due)
        self._started(slot, due, started)
        try:
            verdict = await self._runner.once_async(slot.guard, self._http)
        finally:
            slot.in_flight = False
        self._finished(slot, verdict, started, self._clock())

    def _probe_in_pool(self, slot: Slot, due: float) -> None:
        try:
            if self._stopping.is_set():
                return
            started = self._clock()
            self._stats.started(started - due)
            self._soon(self._started, slot, due, started)
            verdict = self._runner.once(slot.guard, self._executors(slot.host))
            self._finished(slot, verdict, started, self._clock())
        finally:
            self._pool_done(slot)

    def _pool_done(self, slot: Slot) -> None:
        def free() -> None:
            slot.in_flight = False
            self._busy_hosts.discard(slot.host)

        if self._loop.is_closed():
            free()
        else:
            self._soon(free)
        with self._pool_idle:
            self._in_pool -= 1
            self._pool_idle.notify_all()
