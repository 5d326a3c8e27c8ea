"""Live progress: a rich view on a TTY, one plain line per event elsewhere (CI logs)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rollout.cli.app import SHOWN_TEXT
from rollout.event import Event, EventKind

if TYPE_CHECKING:
    from rollout.api import Schedule
from rollout.api import describe_event


def utc_now_ms() -> str:
    """HH:MM:SS.mmm in UTC."""
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%H:%M:%S.") + f"{now.microsecond // 1000:03d}"


#: What the CLI never prints (SHOWN_TEXT), and on a one-line event no tab or newline either.
_NO_CONTROL = {**SHOWN_TEXT, 0x09: None, 0x0A: None}


class PlainDisplay:
    """One line per event, no control codes: for logs and pipes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        # Reentrant: note() is called from a signal handler on the thread that may be printing.
        self._lock = threading.RLock()

    def emit(self, event: Event, *, sync: bool) -> None:
        """Write the event as a timestamped line.

        Straight to the console's file: a plain line needs none of rich's rendering, which
        cost a third of a millisecond a line under the event bus's lock, on the path of every
        step of every host (1,600 lines for 100 hosts x 5 steps).
        """
        line = f"{utc_now_ms()}  {describe_event(event).translate(_NO_CONTROL)}\n"
        with self._lock:
            out = self.console.file
            out.write(line)
            out.flush()

    def note(self, text: str) -> None:
        """A message from the CLI itself (e.g. on Ctrl-C)."""
        with self._lock:
            self.console.print(f"{utc_now_ms()}  {text}", markup=False, highlight=False)

    def close(self) -> None:
        """Nothing to tear down."""


_SYMBOL = {
    "pending": ("·", "dim"),
    "running": ("▶", "bold cyan"),
    "ok": ("✓", "green"),
    "failed": ("✗", "bold red"),
    "timed_out": ("⏱", "bold red"),
    "aborted": ("✗", "red"),
    "verifying": ("?", "cyan"),
    "rolling_back": ("↺", "bold yellow"),
    "rolled_back": ("↺", "yellow"),
    "rollback_failed": ("✗↺", "bold white on red"),
    "skipped": ("-", "dim"),
}
_GUARD_STYLE = {"green": "green", "failing": "bold yellow", "tripped": "bold white on red"}


class LiveDisplay:
    """Waves x hosts x steps with states, guard health per host, elapsed time, rollback status."""

    def __init__(self, console: Console, schedule: Schedule) -> None:
        self.console = console
        self.schedule = schedule
        self.steps = [s.name for s in schedule.loaded.plan.steps]
        self.wave_of = {h: w.index for w in schedule.waves for h in w.hosts}
        self.cells: dict[tuple[str, str], str] = {(h, s): "pending" for h in schedule.hosts for s in self.steps}
        self.guard: dict[str, str] = dict.fromkeys(schedule.hosts, "—")
        self.lagging: set[str] = set()  # hosts whose guard probes do not keep their pace
        self.phase = "pre-checks"
        self.rehearsal = ""  # the --rehearse-rollback phase, shown before the run's phase
        self.status = ""
        self.recent: deque[str] = deque(maxlen=6)
        self.started = time.monotonic()
        # Reentrant: note() is called from a signal handler on the thread that may be printing.
        self._lock = threading.RLock()
        # Live re-renders this object on every refresh, so the elapsed time keeps ticking.
        # Started on the first event, so a run refused before it began (lock held) leaves no view behind.
        self._live = Live(self, console=console, refresh_per_second=8, transient=False)
        self._live_started = False

    def emit(self, event: Event, *, sync: bool) -> None:
        """Fold the event into the view."""
        with self._lock:
            self._fold(event)
            self.recent.append(f"{utc_now_ms()}  {describe_event(event)}")
        self._refresh()

    def note(self, text: str) -> None:
        """A message from the CLI itself."""
        with self._lock:
            self.recent.append(f"{utc_now_ms()}  {text}")
        self._refresh()

    def _refresh(self) -> None:
        with self._lock:
            if not self._live_started:
                self._live_started = True
                self.started = time.monotonic()
                self._live.start()
        self._live.refresh()

    def _fold(self, e: Event) -> None:
        key = (e.host or "", e.step or "")
        self._fold_phase(e)
        self._fold_cell(e, key)
        if e.kind == EventKind.GUARD_STATE and e.host:
            self.guard[e.host] = str(e.outcome)
        elif e.kind == EventKind.GUARDS_START:
            self.guard = dict.fromkeys(self.guard, "green")
        elif e.kind in (EventKind.GUARD_LAGGING, EventKind.GUARD_CAUGHT_UP) and e.host:
            (self.lagging.add if e.kind == EventKind.GUARD_LAGGING else self.lagging.discard)(e.host)
        if self.cells.get(key) == "verifying" and self._verified(e, key):
            self.cells[key] = "ok"

    def _fold_phase(self, e: Event) -> None:
        """The run's phase and status line."""
        k = e.kind
        if k == EventKind.REHEARSAL_PHASE:
            self.rehearsal = f"rehearsal {e.data.get('phase')}: "
        if k == EventKind.WAVE_START:
            self.phase = f"wave {e.wave}"
        elif k == EventKind.BAKE_START:
            self.phase = f"baking wave {e.wave}"
        elif k == EventKind.ABORT:
            self.phase = "ABORTING"
            self.status = str(e.data.get("cause", {}).get("summary", ""))
        elif k == EventKind.ROLLBACK_START:
            self.phase = "ROLLING BACK"
        elif k == EventKind.ROLLBACK_INTENT:
            self.status = f"rolling back {e.step} on {e.host}"
        elif k == EventKind.ROLLBACK_END:
            self.status = ""
        elif k == EventKind.RUN_END:
            self.phase = f"ended: {e.outcome}"

    def _fold_cell(self, e: Event, key: tuple[str, str]) -> None:
        """The state of one step on one host."""
        k = e.kind
        if k == EventKind.STEP_INTENT:
            self.cells[key] = "running"
        elif k == EventKind.STEP_RESULT:
            self.cells[key] = "verifying" if e.outcome == "ok" else str(e.outcome)
        elif k == EventKind.VERIFY and e.outcome != "ok":
            self.cells[key] = "failed"
        elif k == EventKind.ROLLBACK_INTENT:
            self.cells[key] = "rolling_back"
        elif k == EventKind.ROLLBACK_RESULT:
            self.cells[key] = (
                "rolled_back" if e.outcome == "ok" else ("skipped" if e.outcome == "skipped" else "rollback_failed")
            )

    def _verified(self, e: Event, key: tuple[str, str]) -> bool:
        """A step that succeeded is ok once it has no verifications, or once its last one passed."""
        if e.kind == EventKind.STEP_RESULT:
            return not self._verify_labels(key)
        return (
            e.kind == EventKind.VERIFY and e.outcome == "ok" and self._verify_labels(key)[-1:] == [e.data.get("check")]
        )

    def _verify_labels(self, cell: tuple[str, str]) -> list[str]:
        """The labels of a step's verifications on a host, in order."""
        host = self.schedule.hosts.get(cell[0])
        step = next((s for s in host.steps if s.name == cell[1]), None) if host else None
        return [c.label for c in step.verify] if step else []

    def __rich__(self) -> Group:
        """Rendered by rich.live on every refresh."""
        with self._lock:
            return self._render()

    def _render(self) -> Group:
        elapsed = time.monotonic() - self.started
        head = Text.assemble(
            (f"{self.schedule.plan_name} ", "bold"),
            (f"on {self.schedule.env_name}  ", ""),
            (
                f"{self.rehearsal}{self.phase}",
                "bold magenta" if "ROLL" in self.phase or "ABORT" in self.phase else "bold",
            ),
            (f"  {elapsed:6.1f}s", "dim"),
        )
        table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
        table.add_column("wave", justify="right")
        table.add_column("host")
        for step in self.steps:
            table.add_column(step[:18], justify="center")
        table.add_column("guards")
        for host in self.schedule.host_order():
            row: list[Any] = [str(self.wave_of.get(host, "")), host]
            for step in self.steps:
                symbol, style = _SYMBOL.get(self.cells[(host, step)], ("?", ""))
                row.append(Text(symbol, style=style))
            g = self.guard.get(host, "—")
            guard_cell = Text(g, style=_GUARD_STYLE.get(g, "dim"))
            if host in self.lagging:  # a guard that cannot keep up is not guarding: show it
                guard_cell.append(" lagging", style="bold magenta")
            row.append(guard_cell)
            table.add_row(*row)
        parts: list[Any] = [head, table]
        if self.status:
            parts.append(Text(self.status, style="yellow"))
        parts.extend(Text(line, style="dim") for line in self.recent)
        return Group(*parts)

    def close(self) -> None:
        """Leave the final view on screen."""
        with self._lock:
            started = self._live_started
        # Not under our lock: rich's refresh thread holds its own lock while it renders this
        # view, which takes ours; stopping takes rich's lock, so holding ours here deadlocks.
        if started:
            self._live.stop()
