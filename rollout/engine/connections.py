"""Connections ahead of the next wave: a connection that dropped during a bake is reopened before the bake ends.

When connections open (the invariants tests/test_ssh_connections.py pins on a real sshd):

- the reachability pre-check (prechecks.py) opens every SSH host's connection, every wave's,
  through the host worker pool: at most `concurrency` handshakes at once, and they are kept
  for the whole run, so a later wave's hosts are connected before the first change;
- a kept connection can still drop during a long bake (a NAT's idle timeout, an sshd
  restart). Towards the end of each bake, the next wave's dropped connections are opened
  again, up to `concurrency` at once, so that no step of the next wave starts with a TCP
  handshake. The reopening starts one connect timeout before the bake's planned end (at
  once for a shorter bake), so it is done when the bake is, and a drop earlier in the
  bake is caught too.

Reopening is best effort and read-only: a host that cannot be reached now is left to its
first step, which fails with the connection's own error exactly as it would have. The
bake waits for reopenings in flight before the next wave starts (each is bounded by its
connect timeout), so a step never races one; after an abort it does not wait (the
rollback must start at once), and closing the executors waits for them instead, so none
outlives the run's executors.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from rollout.engine.core import EngineCore
from rollout.errors import ExecutorError
from rollout.executors.base import Reconnectable

JOIN_MARGIN = 5.0  # beyond the longest connect timeout, how long the bake's end waits for reopenings
JOIN_POLL = 0.05  # how soon that wait notices an abort


class ConnectionsMixin(EngineCore):
    """The Engine's reopening of dropped connections during a bake."""

    @contextlib.contextmanager
    def reopening_during_bake(self, hosts: Sequence[str]) -> Iterator[None]:
        """Around a bake: reopen the dropped connections of `hosts` before it ends."""
        targets = [self.schedule.hosts[h].target for h in hosts]
        ssh = [t for t in targets if t.connection == "ssh"]
        if not ssh:
            yield
            return
        lead = max(t.connect_timeout for t in ssh)
        start_at = time.monotonic() + max(0.0, self.schedule.loaded.plan.strategy.bake - lead)
        stop = threading.Event()
        worker = threading.Thread(
            target=self._reopen_dropped,
            args=([t.name for t in ssh], start_at, stop),
            name="reopen-connections",
            daemon=True,
        )
        worker.start()
        try:
            yield
        finally:
            stop.set()  # reopenings not yet started are skipped; those in flight end by their timeout
            deadline = time.monotonic() + lead + JOIN_MARGIN
            while worker.is_alive() and not self._abort.is_set() and time.monotonic() < deadline:
                worker.join(JOIN_POLL)
            if worker.is_alive():
                # The rollback must not wait for a connection the next wave will never use:
                # close() waits for it instead, so none outlives the executors.
                self._reopeners.append((worker, deadline))

    def close(self) -> None:
        """Wait for reopenings still in flight (each bounded by its connect timeout), then close every executor."""
        while self._reopeners:
            worker, deadline = self._reopeners.pop()
            worker.join(max(0.0, deadline - time.monotonic()))
        super().close()

    def _reopen_dropped(self, hosts: list[str], start_at: float, stop: threading.Event) -> None:
        """From `start_at`, reopen the hosts' dropped connections, up to `concurrency` at once."""
        if stop.wait(max(0.0, start_at - time.monotonic())):
            return
        with self._executors_lock:
            executors = [self._executors.get(h) for h in hosts]
        # mypy does not narrow an Executor by a second, unrelated protocol; the check is at run time.
        kept = [cast("Reconnectable", ex) for ex in executors if isinstance(ex, Reconnectable)]
        if not kept:
            return
        with ThreadPoolExecutor(max_workers=self._pool.workers(len(kept)), thread_name_prefix="reopen") as pool:
            for ex in kept:
                pool.submit(_reopen, ex, stop, self._abort)


def _reopen(ex: Reconnectable, stop: threading.Event, abort: threading.Event) -> None:
    """Open one connection again if it dropped; a failure is left for the host's first step to report."""
    if stop.is_set() or abort.is_set():
        return
    with contextlib.suppress(ExecutorError):
        ex.ensure_connected()
