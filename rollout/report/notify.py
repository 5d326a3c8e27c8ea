"""Status notifications: Statuspage-shaped JSON documents to webhooks and files, off the run's path.

The Notifier is a Bus sink. `emit` runs under the bus lock, so it only turns events into
documents and enqueues them; one background thread delivers them with each sink's
timeout and a few retries with exponential backoff, and journals every delivery outcome
as a `notify.delivery` event. A slow, hanging or refusing sink must never slow or break a
rollout: the CLI flushes with a bounded wait before the journal closes.

What is sent (one document per state change, the same sequence to every sink):

    pre-checks passed         maintenance  in_progress   component under_maintenance
    a guard trips             incident     investigating component degraded/partial/major outage
    rollback starts           incident     identified    (or a maintenance update when no guard failed)
    guards green after it     incident     monitoring    component operational
    run ends rolled back      incident     resolved      (maintenance completed when no guard failed)
    run succeeds              maintenance  completed     component operational

A run refused by its pre-checks sends nothing: no maintenance was started, so there is
nothing to cancel on a status page. Documents are built from events the bus has already
redacted; webhook URLs and headers come from the rendered plan and must never be journaled
(deliveries are named by scheme, host and port only).
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.atomic import write_atomic
from rollout.event import Event, EventKind, Outcome

if TYPE_CHECKING:
    from rollout.engine.events import Bus
    from rollout.engine.prepare import Schedule
    from rollout.model import Notify

BACKOFF_BASE = 0.5
BACKOFF_MAX = 4.0
IMPACT_FOR_COMPONENT = {
    "operational": "none",
    "under_maintenance": "none",
    "degraded_performance": "minor",
    "partial_outage": "major",
    "major_outage": "critical",
}


def component_status_for_share(failing: int, total: int) -> str:
    """Component status by the share of hosts whose guards fail: <=25% degraded, <=50% partial, else major."""
    if failing <= 0 or total <= 0:
        return "operational"
    share = failing / total
    if share <= 0.25:
        return "degraded_performance"
    if share <= 0.5:
        return "partial_outage"
    return "major_outage"


def _now() -> str:
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class _Update:
    """One state change, before it is shaped for a sink's component."""

    kind: str  # scheduled_maintenance | incident
    status: str
    component_status: str
    body: str


@dataclass(frozen=True)
class _Delivery:
    """A document waiting for one sink."""

    sink: int
    document: dict[str, Any]


class _Sink:
    """One notify entry of the plan: where to deliver and what to call it in the journal."""

    def __init__(self, entry: Notify, plan_dir: Path, default_component: str) -> None:
        self.entry = entry
        self.component = entry.component or default_component
        if entry.webhook is not None:
            url = urllib.parse.urlsplit(entry.webhook.url)
            port = f":{url.port}" if url.port else ""
            self.label = f"webhook {url.scheme}://{url.hostname or '?'}{port}"
            self.timeout = entry.webhook.timeout
            self.attempts = entry.webhook.retries + 1
        else:
            assert entry.file is not None
            path = Path(entry.file.path)
            self.path = path if path.is_absolute() else plan_dir / path
            self.label = f"file {self.path}"
            self.timeout = 0.0
            self.attempts = 3

    def deliver(self, document: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
        """One attempt: (delivered, what to journal about it)."""
        if self.entry.webhook is not None:
            from rollout.http import HttpFailure, post_json

            hook = self.entry.webhook
            try:
                response = post_json(hook.url, document, headers=hook.headers, timeout=hook.timeout)
            except HttpFailure as failure:
                # an error text may quote the URL, whose query can hold a token: name the sink instead
                return False, {"error": str(failure).replace(hook.url, self.label)}
            return 200 <= response.status < 300, {"http_status": response.status}
        line = json.dumps(document, sort_keys=True, ensure_ascii=False) + "\n"
        try:
            # Rewritten whole rather than appended: a reader never sees a torn document,
            # and a full disk leaves the previous documents intact. A run sends a handful.
            try:
                before = self.path.read_bytes()
            except FileNotFoundError:
                before = b""
            write_atomic(self.path, before + line.encode("utf-8"), mode=0o600)
        except OSError as exc:
            return False, {"error": f"cannot append to {self.path}: {exc.strerror or exc}"}
        return True, {}

    def retryable(self, info: Mapping[str, Any]) -> bool:
        """Network errors, timeouts, 408, 429 and 5xx are worth another attempt; other 4xx are not."""
        status = info.get("http_status")
        return status is None or status in (408, 429) or status >= 500


class Notifier:
    """A Bus sink that turns run events into status documents and delivers them in the background."""

    def __init__(
        self,
        schedule: Schedule,
        bus: Bus,
        *,
        backoff: float = BACKOFF_BASE,
        head: Callable[[], tuple[int, str]] | None = None,
    ) -> None:
        self._bus = bus
        self._head = head
        self._backoff = backoff
        self._plan = schedule.plan_name
        self._env = schedule.env_name
        self._run_id = schedule.run_id
        self._hosts = len(schedule.hosts)
        plan_dir = schedule.loaded.path.parent.resolve()
        self._sinks = [_Sink(entry, plan_dir, schedule.plan_name) for entry in schedule.notify]
        self._phase = "idle"  # idle -> maintenance -> incident -> closed
        self._bad: dict[str, set[str]] = {}
        self._component_status = "operational"
        self._created_at: str | None = None
        self._recovered = False
        self.sent: list[dict[str, Any]] = []
        self._queue: queue.Queue[_Delivery] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._abandon = threading.Event()
        self._emit_lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._in_flight: _Sink | None = None

    # --- the sink side (under the bus lock: compute and enqueue, nothing else) ---------

    def emit(self, event: Event, *, sync: bool) -> None:
        """Turn a state change into documents for every sink; never blocks."""
        update = self._transition(event)
        if update is not None:
            self._enqueue(update)

    def _failing_hosts(self) -> int:
        return sum(1 for guards in self._bad.values() if guards)

    def _transition(self, event: Event) -> _Update | None:
        if event.kind == EventKind.GUARD_STATE and event.host is not None:
            guards = self._bad.setdefault(event.host, set())
            name = str(event.data.get("guard"))
            if event.outcome == "green":
                guards.discard(name)
            else:
                guards.add(name)
        handler = {
            EventKind.PRECHECKS_PASSED: self._prechecks_passed,
            EventKind.GUARD_STATE: self._guard_state,
            EventKind.ROLLBACK_START: self._rollback_started,
            EventKind.RECOVERY: self._recovery,
            EventKind.RUN_END: self._ended,
        }.get(event.kind)
        return None if handler is None else handler(event, f"{self._plan} on {self._env}")

    def _prechecks_passed(self, event: Event, what: str) -> _Update | None:
        if self._phase != "idle":
            return None
        self._phase = "maintenance"
        return _Update(
            "scheduled_maintenance",
            "in_progress",
            "under_maintenance",
            f"Maintenance in progress: {what} ({self._hosts} hosts), canary first, guarded and reversible.",
        )

    def _guard_state(self, event: Event, what: str) -> _Update | None:
        if event.outcome != "tripped" or self._phase not in ("maintenance", "incident"):
            return None
        status = component_status_for_share(self._failing_hosts(), self._hosts)
        if self._phase == "incident" and status == self._component_status:
            return None
        self._phase = "incident"
        self._component_status = status
        return _Update(
            "incident",
            "investigating",
            status,
            f"Health checks are failing on {self._failing_hosts()} of {self._hosts} hosts during {what}; "
            "the change is being rolled back automatically.",
        )

    def _rollback_started(self, event: Event, what: str) -> _Update | None:
        if self._phase not in ("maintenance", "incident"):
            return None
        if self._phase == "maintenance" and self._failing_hosts() == 0:
            return _Update(
                "scheduled_maintenance",
                "in_progress",
                "under_maintenance",
                f"A change in {what} failed its checks before any customer-visible impact; rolling it back.",
            )
        self._phase = "incident"
        self._component_status = component_status_for_share(max(self._failing_hosts(), 1), self._hosts)
        return _Update(
            "incident",
            "identified",
            self._component_status,
            f"The cause is the change in {what}; it is being rolled back on every host it reached.",
        )

    def _recovery(self, event: Event, what: str) -> _Update | None:
        if self._phase != "incident":
            return None
        if event.outcome == "green":
            self._recovered = True
            self._component_status = "operational"
            return _Update(
                "incident",
                "monitoring",
                "operational",
                f"The change in {what} was rolled back and health checks are green again; monitoring.",
            )
        return _Update(
            "incident",
            "identified",
            self._component_status,
            f"The change in {what} was rolled back but health checks are still failing; engineers are on it.",
        )

    def _ended(self, event: Event, what: str) -> _Update | None:
        phase, self._phase = self._phase, "closed"
        if phase in {"idle", "closed"}:
            return None  # refused or stopped before any change: no maintenance was started
        clean = event.outcome in (Outcome.SUCCEEDED, Outcome.ROLLED_BACK, Outcome.INTERRUPTED)
        if phase == "incident":
            if clean and self._recovered:
                return _Update(
                    "incident",
                    "resolved",
                    "operational",
                    f"Resolved: the change in {what} was rolled back and service is back to normal.",
                )
            return _Update(
                "incident",
                "identified",
                self._component_status if self._component_status != "operational" else "degraded_performance",
                f"The change in {what} could not be fully rolled back ({event.outcome}); manual action is under way.",
            )
        if event.outcome == Outcome.SUCCEEDED:
            return _Update("scheduled_maintenance", "completed", "operational", f"Maintenance completed: {what}.")
        if clean:
            return _Update(
                "scheduled_maintenance",
                "completed",
                "operational",
                f"Maintenance ended: the change in {what} was rolled back ({event.outcome}); "
                "no customer-visible impact was detected.",
            )
        return _Update(
            "incident",
            "identified",
            "degraded_performance",
            f"The change in {what} could not be fully rolled back ({event.outcome}); manual action is under way.",
        )

    def _document(self, update: _Update, sink: _Sink, now: str) -> dict[str, Any]:
        assert self._created_at is not None
        return {
            "id": f"rollout-{self._run_id}",
            "kind": update.kind,
            "name": (
                f"Scheduled maintenance: {self._plan} on {self._env}"
                if update.kind == "scheduled_maintenance"
                else f"Service disruption during {self._plan} on {self._env}"
            ),
            "status": update.status,
            "impact": IMPACT_FOR_COMPONENT[update.component_status],
            "body": update.body,
            "components": [{"name": sink.component, "status": update.component_status}],
            "incident_updates": [{"status": update.status, "body": update.body, "created_at": now}],
            "created_at": self._created_at,
            "updated_at": now,
            "run_id": self._run_id,
            "plan": self._plan,
            "environment": self._env,
            **self._journal_head(),
        }

    def _journal_head(self) -> dict[str, str]:
        """The journal head as of the event behind this document: an anchor kept off the machine."""
        if self._head is None:
            return {}
        seq, digest = self._head()
        return {"journal_head": f"{seq}:{digest}"}

    def _enqueue(self, update: _Update) -> None:
        now = _now()
        self._created_at = self._created_at or now
        for index, sink in enumerate(self._sinks):
            document = self._document(update, sink, now)
            self.sent.append(document)
            with self._idle:
                self._pending += 1
            self._queue.put(_Delivery(index, document))
        if self._thread is None and self._sinks:
            self._thread = threading.Thread(target=self._deliver_loop, name="rollout-notifier", daemon=True)
            self._thread.start()

    # --- the delivery side (its own thread) --------------------------------------------

    def _deliver_loop(self) -> None:
        while not self._abandon.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self._in_flight = self._sinks[item.sink]
            try:
                self._deliver(item)
            finally:
                self._in_flight = None
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _deliver(self, item: _Delivery) -> None:
        sink = self._sinks[item.sink]
        info: dict[str, Any] = {}
        attempt = 0
        delivered = False
        for attempt in range(1, sink.attempts + 1):
            try:
                delivered, info = sink.deliver(item.document)
            except Exception as exc:  # a notifier bug must never reach the rollout
                delivered, info = False, {"error": f"{type(exc).__name__}: {exc}"}
            if delivered or not sink.retryable(info) or attempt == sink.attempts:
                break
            if self._abandon.wait(min(self._backoff * 2 ** (attempt - 1), BACKOFF_MAX)):
                break
        self._journal(
            Event(
                EventKind.NOTIFY,
                outcome="delivered" if delivered else "failed",
                data={"sink": sink.label, "status": item.document["status"], "attempt": attempt, **info},
            )
        )

    def _journal(self, event: Event) -> None:
        with self._emit_lock:
            if self._closed:
                return
            try:
                self._bus.emit(event)
            except Exception:  # the journal's own failure is the engine's to report, not ours
                return

    # --- the end of the run ------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> bool:
        """Wait up to `timeout` seconds for every document to be delivered; True if all were."""
        with self._idle:
            done = self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)
        self._abandon.set()
        in_flight = self._in_flight
        if not done:
            counts: dict[str, int] = {}
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                label = self._sinks[item.sink].label
                counts[label] = counts.get(label, 0) + 1
            for sink in self._sinks:
                waiting = counts.get(sink.label, 0) + (1 if in_flight is sink else 0)
                if waiting:
                    self._journal(
                        Event(
                            EventKind.NOTIFY,
                            outcome="abandoned",
                            data={
                                "sink": sink.label,
                                "status": "undelivered",
                                "pending": waiting,
                                "error": f"not delivered within the {timeout:g}s flush at the end of the run",
                            },
                        )
                    )
        with self._emit_lock:
            self._closed = True
        return done
