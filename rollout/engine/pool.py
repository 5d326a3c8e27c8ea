"""The host worker pool: one function over many hosts in threads, with grace-then-cancel.

Host workers are threads because SSH and probes block. Once the run aborts, work in
flight gets the grace period to finish, then it is cancelled by killing process groups
or closing channels (the `cancel` collaborator, Executor.cancel underneath), never by
hoping a thread notices. A second interrupt (`kill_now`) cancels at once. Rollbacks are
never cancelled: while the run is rolling back, the pool only waits.

The abort is journaled as soon as the pool sees it with work still in flight, not when
that work finishes: the evidence must show when the decision was taken.

The pool is sized by the plan's `strategy.concurrency` (DEFAULT_CONCURRENCY when unset),
never by the fleet: a host waiting for its turn is a queued call, not a thread, so a
1,000-host wave with concurrency 50 holds 50 host threads. A rollback takes every host
back at once, up to the larger of the two, since waiting is what leaves a fleet half changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from rollout.engine.prepare import HostPlan
from rollout.errors import JournalError
from rollout.model import DEFAULT_CONCURRENCY

POLL = 0.05  # how soon the waiting loop notices an abort or a second interrupt


class WorkerPool:
    """Runs host workers for one engine; its collaborators are the engine's abort machinery."""

    def __init__(
        self,
        *,
        abort: threading.Event,
        kill_now: threading.Event,
        grace: float,
        rolling_back: Callable[[], bool],
        journal_abort: Callable[[int], None],
        cancel_forward: Callable[[], None],
        worker_failed: Callable[[BaseException, str], None],
        concurrency: int | None,
    ) -> None:
        self._abort = abort
        self._kill_now = kill_now
        self.grace = grace
        self._rolling_back = rolling_back
        self._journal_abort = journal_abort
        self._cancel_forward = cancel_forward
        self._worker_failed = worker_failed
        self.size = concurrency or DEFAULT_CONCURRENCY
        # One thread pool per size, kept for the engine's life: the wave's hosts take the
        # threads the pre-check started instead of starting their own, one by one, while
        # the first hosts already hold the interpreter (100 starts took 0.4 s there).
        self._threads: dict[int, ThreadPoolExecutor] = {}
        self._threads_lock = threading.Lock()

    def workers(self, hosts: int, *, rollback: bool = False) -> int:
        """How many host threads a call over this many hosts uses: min(hosts, the pool's size)."""
        return max(1, min(hosts, self._cap(rollback)))

    def _cap(self, rollback: bool) -> int:
        return max(self.size, DEFAULT_CONCURRENCY) if rollback else self.size

    def _pool(self, rollback: bool) -> ThreadPoolExecutor:
        """The kept thread pool of this call's size, started on first use."""
        cap = self._cap(rollback)
        with self._threads_lock:
            pool = self._threads.get(cap)
            if pool is None:
                pool = self._threads[cap] = ThreadPoolExecutor(max_workers=cap, thread_name_prefix="host")
            return pool

    def close(self) -> None:
        """End the kept threads (all idle once every run() has returned); idempotent."""
        with self._threads_lock:
            pools, self._threads = list(self._threads.values()), {}
        for pool in pools:
            pool.shutdown(wait=True)

    def run(self, fn: Callable[[HostPlan], None], hosts: Iterable[HostPlan], *, rollback: bool = False) -> None:
        """Run fn over hosts in at most `workers()` threads; re-raise the first JournalError.

        Any other exception in a worker is rollout's own failure: it aborts the run at
        once (the other hosts stop starting steps) and becomes the cause of the abort.
        """
        items = list(hosts)
        if not items:
            return

        def guarded(host: HostPlan) -> None:
            try:
                fn(host)
            except JournalError:
                raise
            except Exception as exc:
                self._worker_failed(exc, f"the worker for {host.name}")
                raise

        # At most `workers()` of them run at once: the pool has the size's threads at most,
        # and starts no more than the calls it is given.
        pool = self._pool(rollback)
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
            _, pending = wait(pending, timeout=POLL, return_when=FIRST_COMPLETED)
            if self._abort.is_set() and not self._rolling_back() and grace_deadline is None:
                grace_deadline = time.monotonic() + self.grace
                if pending:
                    # Journal the abort now, not when in-flight work finishes: the evidence
                    # must show when the decision was taken. (Never from a signal handler:
                    # the bus lock is not reentrant; this loop runs on the main thread.)
                    self._journal_abort(len(pending))
            if (
                not cancelled
                and not self._rolling_back()
                and (self._kill_now.is_set() or (grace_deadline is not None and time.monotonic() >= grace_deadline))
            ):
                cancelled = True
                self._kill_now.clear()
                self._cancel_forward()
