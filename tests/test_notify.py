"""Status notifications from real runs to a real webhook on 127.0.0.1 and to a file."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    RUNTIME_BREAK,
    Fleet,
    PlanSpec,
    events,
    exchange_plan,
    rollout,
    run_args,
    running_fleet,
    write_plan,
)

ROLLED_BACK_SEQUENCE = ["in_progress", "investigating", "identified", "monitoring", "resolved"]


class Webhook:
    """An HTTP server in a thread that records every POSTed JSON document."""

    def __init__(self, delay: float = 0.0) -> None:
        self.received: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.delay = delay
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # stdlib naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if hook.delay:
                    time.sleep(hook.delay)
                hook.requests.append({"path": self.path, "headers": dict(self.headers), "body": body.decode()})
                hook.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.port}/hook"

    def statuses(self) -> list[str]:
        """The status of every document received, in order."""
        return [d["status"] for d in self.received]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    hook.thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("notify-fleet"), 2) as running:
        yield running


def notify_plan(
    tmp_path: Path, fleet: Fleet, notify: list[dict[str, Any]], *, broken: bool = False, name: str = "plan.yaml"
) -> Path:
    """The exchange plan with these notify sinks; `broken` ships metadata that breaks order flow."""
    spec = PlanSpec(
        release=RUNTIME_BREAK if broken else PlanSpec().release,
        waves=(1, "100%"),
        bake="300ms",
        probe_verify=False,  # let the guard, not a verification, see the break: that opens an incident
        guard_fail_after=2,
    )
    plan = exchange_plan(fleet, spec)
    plan["notify"] = notify
    return write_plan(tmp_path / name, plan)


def free_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_successful_run_posts_maintenance_in_progress_then_completed(
    tmp_path: Path, fleet: Fleet, webhook: Webhook
) -> None:
    plan = notify_plan(
        tmp_path, fleet, [{"webhook": {"url": webhook.url, "timeout": "2s"}, "component": "Order entry"}]
    )
    result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert webhook.statuses() == ["in_progress", "completed"]
    first, last = webhook.received
    assert first["kind"] == "scheduled_maintenance"
    assert first["components"] == [{"name": "Order entry", "status": "under_maintenance"}]
    assert last["components"] == [{"name": "Order entry", "status": "operational"}]
    assert first["impact"] == last["impact"] == "none"
    assert first["created_at"] == last["created_at"] <= last["updated_at"]
    assert last["updated_at"].endswith("Z")
    delivered = [e for e in events(tmp_path / "state") if e["kind"] == "notify.delivery"]
    assert [(e["outcome"], e["data"]["status"], e["data"]["http_status"]) for e in delivered] == [
        ("delivered", "in_progress", 204),
        ("delivered", "completed", 204),
    ]


def test_rolled_back_run_posts_the_incident_lifecycle(tmp_path: Path, fleet: Fleet, webhook: Webhook) -> None:
    status_file = tmp_path / "status.jsonl"
    plan = notify_plan(
        tmp_path,
        fleet,
        [{"webhook": {"url": webhook.url, "timeout": "2s"}}, {"file": {"path": str(status_file)}, "component": "API"}],
        broken=True,
    )
    result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert webhook.statuses() == ROLLED_BACK_SEQUENCE
    by_status = {d["status"]: d for d in webhook.received}
    # one of two hosts (the canary) failing is half the fleet: a partial outage, major impact
    assert by_status["investigating"]["kind"] == "incident"
    assert by_status["investigating"]["components"] == [{"name": "exchange-upgrade", "status": "partial_outage"}]
    assert by_status["investigating"]["impact"] == "major"
    assert by_status["identified"]["components"][0]["status"] == "partial_outage"
    assert by_status["monitoring"]["components"][0]["status"] == "operational"
    assert by_status["resolved"]["components"][0]["status"] == "operational"
    filed = [json.loads(line) for line in status_file.read_text().splitlines()]
    assert [d["status"] for d in filed] == ROLLED_BACK_SEQUENCE
    assert {d["components"][0]["name"] for d in filed} == {"API"}
    assert status_file.stat().st_mode & 0o777 == 0o600
    delivered = [e for e in events(tmp_path / "state") if e["kind"] == "notify.delivery"]
    assert len(delivered) == 10
    assert all(e["outcome"] == "delivered" for e in delivered)


def test_refused_run_sends_nothing(tmp_path: Path, fleet: Fleet, webhook: Webhook) -> None:
    plan_path = notify_plan(tmp_path, fleet, [{"webhook": {"url": webhook.url}}])
    plan = json.loads(plan_path.read_text())
    plan["prechecks"].append({"name": "never", "command": "false"})
    write_plan(plan_path, plan)
    result = rollout(*run_args(plan_path, tmp_path / "state"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert webhook.received == []
    assert not [e for e in events(tmp_path / "state") if e["kind"] == "notify.delivery"]


def _timed_run(tmp_path: Path, fleet: Fleet, notify: list[dict[str, Any]]) -> tuple[float, int, list[dict[str, Any]]]:
    tmp_path.mkdir(exist_ok=True)
    plan = notify_plan(tmp_path, fleet, notify)
    start = time.monotonic()
    result = rollout(*run_args(plan, tmp_path / "state"))
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    return elapsed, result.returncode, events(tmp_path / "state")


def test_hanging_webhook_costs_at_most_the_bounded_flush_and_is_journaled(tmp_path: Path, fleet: Fleet) -> None:
    hook = Webhook(delay=8.0)
    hook.thread.start()
    try:
        baseline, _, _ = _timed_run(tmp_path / "a", fleet, [{"file": {"path": str(tmp_path / "s.jsonl")}}])
        elapsed, _, evts = _timed_run(
            tmp_path / "b", fleet, [{"webhook": {"url": hook.url, "timeout": "500ms", "retries": 3}}]
        )
    finally:
        hook.server.shutdown()
        hook.server.server_close()
    assert elapsed < baseline + 5.0 + 1.5, (elapsed, baseline)
    outcomes = [(e["outcome"], e["data"].get("error", "")) for e in evts if e["kind"] == "notify.delivery"]
    assert ("failed", "timed out after 0.5s") in outcomes
    assert any(outcome == "abandoned" for outcome, _ in outcomes)
    assert evts[-1]["kind"] == "notify.delivery"  # journaled before the journal closed


def test_refused_connection_is_journaled_and_does_not_fail_the_run(tmp_path: Path, fleet: Fleet) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook?token=abc"
    elapsed, code, evts = _timed_run(tmp_path, fleet, [{"webhook": {"url": url, "timeout": "1s", "retries": 1}}])
    assert code == 0
    failed = [e for e in evts if e["kind"] == "notify.delivery"]
    assert [e["data"]["status"] for e in failed] == ["in_progress", "completed"]
    assert all(e["outcome"] == "failed" and e["data"]["attempt"] == 2 for e in failed)
    assert all("cannot connect" in e["data"]["error"] or "Connect" in e["data"]["error"] for e in failed)
    # the sink is named by scheme, host and port: a token in the URL never reaches the journal
    assert all(e["data"]["sink"].startswith("webhook http://127.0.0.1:") for e in failed)
    assert "token=abc" not in json.dumps(evts)
    assert elapsed < 10
