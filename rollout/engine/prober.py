"""HTTP and TCP guard probes in a process of their own, so a busy orchestrator cannot make them late.

In one process, the probe loop shares the interpreter lock with every host worker: while
a 1,000-host wave's 64 workers start processes and journal events, the loop can wait
over 100 ms for its turn, and a probe starts late for reasons that have nothing to do
with the target. Here the loop runs a ProbeScheduler (rollout.engine.scheduler) in a
child interpreter that does nothing else, and sends its verdicts back as JSON lines.

The parent side, `ProcessProber`, offers the scheduler's interface (start, stop) and its
promises:
- Nothing is delivered after `stop` returns: a verdict is delivered under a lock that
  `stop` takes to end delivery.
- The child dies with the run: it exits when its stdin closes, which happens when the
  parent stops it or dies (the pipe is not inherited by step processes: close_fds).
- A Ctrl-C never blinds the guards: the child has a process group of its own, so the
  terminal's SIGINT (or a SIGTERM to the run's group) does not reach it, not even while
  it starts; the run stops it when its rollback is done.
- A guard never stops guarding silently: if the child exits unasked, its slots are
  reported as lagging (why: the prober exited) and probed in-process from then on.
- The child's punctuality (probes, due, start delays) is merged into the run's
  ProbeStats when it stops, so `guards.stop` counts every probe.

Wire format, one JSON object a line. Parent to child: the slots (host, index, guard as
JSON), then `stop`. Child to parent: {"v": slot, "ok", "s": summary, "o": observed,
"t": started}, {"l": slot, "late", "why", "skipped"}, and last {"stats": ...}.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rollout.checks import Verdict
from rollout.engine.probe import CheckRunner
from rollout.engine.scheduler import Deliver, LagReport, ProbeScheduler, ProbeStats, Slot
from rollout.executors.base import Executor

STDERR_KEPT = 4000  # bytes of the child's stderr kept to say why it exited
PIPE_SIZE = 1 << 20  # the child's stdout pipe (Linux's default ceiling for unprivileged processes)


class ProcessProber:
    """Runs the on-loop slots (HTTP, TCP) in a child process; same start/stop contract as ProbeScheduler."""

    def __init__(
        self,
        slots: list[Slot],
        runner: CheckRunner,
        executors: Callable[[str], Executor],
        stats: ProbeStats,
        deliver: Deliver,
        lag: LagReport,
    ) -> None:
        self._slots = slots
        self._runner = runner
        self._executors = executors
        self._stats = stats
        self._deliver = deliver
        self._report_lag = lag
        self._delivery = threading.Lock()  # held while a verdict is delivered; `stop` takes it to end delivery
        self._stopping = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._fallback: ProbeScheduler | None = None
        self._stderr = b""

    def start(self) -> None:
        """Start the child and send it the slots; its first probes fall due within one `every`.

        A child that cannot be started (no memory, no file descriptors, no interpreter) is
        not a reason to run unguarded: the slots are probed in-process, and journaled as lagging.
        """
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rollout.engine.prober"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": _import_path()},
                # Its own process group: a terminal's Ctrl-C (or a SIGTERM to the run's group) must not
                # reach it even in the moment before its own start-up ignores them; it ends on stdin's EOF.
                process_group=0,
            )
        except OSError as exc:
            with self._delivery:
                self._probe_in_process(f"cannot start the prober process ({exc.strerror or exc}); probing in-process")
            return
        self._proc = proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        # Room for a second of verdicts at 1,000 probes a second even if this process is slow to read:
        # a full pipe would stall the child's loop, and with it every probe.
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        config = {
            "slots": [{"host": s.host, "index": s.index, "guard": s.guard.model_dump(mode="json")} for s in self._slots]
        }
        try:
            proc.stdin.write(json.dumps(config).encode() + b"\n")
            proc.stdin.flush()
        except OSError:
            pass  # the child is already gone: the reader meets EOF and falls back
        self._reader = threading.Thread(target=self._read, name="guard-prober-reader", daemon=True)
        self._reader.start()

    def stop(self, wait: float = 30.0) -> None:
        """Stop probing; after this returns nothing more is delivered and the child's counts are merged."""
        with self._delivery:
            self._stopping = True
        deadline = time.monotonic() + wait
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.write(b"stop\n")
                proc.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc is not None:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._fallback is not None:
            self._fallback.stop(wait=max(0.0, deadline - time.monotonic()))

    # --- the reader thread -------------------------------------------------------------

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        errors = threading.Thread(target=self._keep_stderr, args=(proc.stderr,), daemon=True)
        errors.start()
        stats_seen = False
        try:
            for line in proc.stdout:
                message = json.loads(line)
                if "stats" in message:
                    self._stats.merge(message["stats"])
                    stats_seen = True
                else:
                    self._dispatch(message)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            # A line we cannot read (something else wrote to the child's stdout): a prober we
            # cannot understand is not guarding. End it; the fallback below takes its slots over.
            self._stderr += f"\nunreadable message from the prober: {exc!r}".encode()
            proc.kill()
            stats_seen = False
        errors.join(timeout=1.0)
        if not stats_seen:
            self._child_died(proc)

    def _keep_stderr(self, stream: IO[bytes]) -> None:
        for chunk in iter(lambda: stream.read(1024), b""):
            self._stderr = (self._stderr + chunk)[-STDERR_KEPT:]

    def _dispatch(self, message: dict[str, Any]) -> None:
        with self._delivery:
            if self._stopping:
                return
            if "v" in message:
                verdict = Verdict(message["ok"], message["s"], message["o"])
                self._deliver(self._slots[message["v"]], verdict, message["t"])
            else:
                slot = self._slots[message["l"]]
                slot.skipped = message["skipped"]
                self._report_lag(slot, message["late"], message["why"])

    def _child_died(self, proc: subprocess.Popen[bytes]) -> None:
        """The child exited unasked: say so for every slot and keep guarding from this process."""
        code = proc.wait()
        with self._delivery:
            if self._stopping:
                return
            lines = self._stderr.decode(errors="replace").strip().splitlines()
            self._probe_in_process(
                f"prober process exited ({code}){': ' + lines[-1] if lines else ''}; probing in-process"
            )

    def _probe_in_process(self, why: str) -> None:
        """Say why for every slot, then guard them from this process (called holding `_delivery`)."""
        for slot in self._slots:
            self._report_lag(slot, 0.001, why)
        self._fallback = ProbeScheduler(
            self._slots, self._runner, self._executors, self._stats, self._deliver, self._report_lag
        )
        self._fallback.start()


def _import_path() -> str:
    """PYTHONPATH for the child: where this copy of rollout lives first, so it runs the same code."""
    here = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH", "")
    return here + (os.pathsep + rest if rest else "")


# --- the child ---------------------------------------------------------------------------


class _Out:
    """Writes the child's messages to stdout, one line each, from the loop thread or the main thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd = sys.stdout.fileno()

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        with self._lock:
            while data:
                data = data[os.write(self._fd, data) :]


def main() -> int:
    """The child: probe the slots it is given until told to stop or its stdin closes."""
    from rollout.model import Guard

    # Ctrl-C and SIGTERM reach the whole process group; the run decides what they mean and
    # stops this process (or dies, closing its stdin). Guards must keep probing during a rollback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config = json.loads(sys.stdin.buffer.readline() or b"{}")
    slots = [Slot(s["host"], s["index"], Guard.model_validate(s["guard"])) for s in config.get("slots", [])]
    number = {id(slot): n for n, slot in enumerate(slots)}
    out = _Out()
    stats = ProbeStats()

    def deliver(slot: Slot, verdict: Verdict | None, started: float) -> None:
        if verdict is None:  # inconclusive: already counted and reported as lag
            return
        out.send(
            {"v": number[id(slot)], "ok": verdict.ok, "s": verdict.summary, "o": dict(verdict.observed), "t": started}
        )

    def lag(slot: Slot, late: float, why: str) -> None:
        out.send({"l": number[id(slot)], "late": late, "why": why, "skipped": slot.skipped})

    def no_executor(host: str) -> Executor:
        raise RuntimeError(f"the prober process runs only HTTP and TCP probes, not commands on {host}")

    scheduler = ProbeScheduler(slots, CheckRunner(Path.cwd()), no_executor, stats, deliver, lag)
    scheduler.start()
    while sys.stdin.buffer.readline() not in (b"", b"stop\n"):
        pass
    scheduler.stop(wait=5.0)
    out.send({"stats": stats.counts()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
