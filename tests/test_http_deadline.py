"""HTTP probes have one overall deadline and yield to an interrupt, against a real trickling server.

The server on 127.0.0.1 answers every request by writing its status line and headers one
byte every 0.3 s: each read gets a byte well within any per-read timeout, so only an
overall deadline ends the probe. Until the fix, a `timeout: 2s` pre-check on it waited for
more than ten minutes, SIGTERM did not end the run, and as a guard it never reported.
"""

from __future__ import annotations

import signal
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.checks.http import HttpProber
from rollout.engine.probe import CheckRunner
from tests.helpers import events, is_event, rollout, start_rollout, wait_for_event, write_plan

TRICKLE_EVERY = 0.3
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\nok"
)


class TrickleServer:
    """An HTTP server on 127.0.0.1 that trickles its answer, or answers at once when `fast` is set."""

    def __init__(self) -> None:
        self.fast = threading.Event()
        self.stopping = threading.Event()
        self.requests = 0
        self.connections = 0
        self.got_request = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                outer.connections += 1
                buffer = b""
                while not outer.stopping.is_set():
                    while b"\r\n\r\n" not in buffer:
                        data = sock.recv(4096)
                        if not data:
                            return
                        buffer += data
                    buffer = buffer.split(b"\r\n\r\n", 1)[1]
                    outer.requests += 1
                    outer.got_request.set()
                    try:
                        if outer.fast.is_set():
                            sock.sendall(RESPONSE)
                            continue
                        for byte in RESPONSE:
                            if outer.stopping.wait(TRICKLE_EVERY):
                                return
                            sock.sendall(bytes([byte]))
                    except OSError:
                        return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def close(self) -> None:
        """Stop serving and end every trickle."""
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    server = TrickleServer()
    server.thread.start()
    yield server
    server.close()


def test_a_trickling_server_times_out_at_the_overall_deadline(trickle: TrickleServer) -> None:
    prober = HttpProber()
    try:
        obs = prober.probe(trickle.url, timeout=2.0)
    finally:
        prober.close()
    assert obs.status is None
    assert obs.error == "timed out after 2s"
    assert 1.9 <= obs.elapsed < 3.5, obs.elapsed


def test_a_probe_yields_to_an_interrupt_long_before_its_timeout(trickle: TrickleServer) -> None:
    stop = threading.Event()
    result: list[Any] = []
    prober = HttpProber()
    worker = threading.Thread(
        target=lambda: result.append(prober.probe(trickle.url, timeout=60, interrupted=stop.is_set))
    )
    worker.start()
    assert trickle.got_request.wait(10)
    stopped_at = time.monotonic()
    stop.set()
    worker.join(timeout=10)
    prober.close()
    assert not worker.is_alive()
    assert time.monotonic() - stopped_at < 2.0
    assert result[0].error == "interrupted"


def test_one_check_reuses_one_client_and_its_connection(trickle: TrickleServer, tmp_path: Path) -> None:
    trickle.fast.set()
    runner = CheckRunner(tmp_path)
    key = object()
    try:
        for _ in range(5):
            assert runner.prober(key).probe(trickle.url, timeout=5).status == 200
        assert runner.prober(key) is runner.prober(key)
        assert runner.prober(object()) is not runner.prober(key)
    finally:
        runner.close()
    assert trickle.requests == 5
    assert trickle.connections == 1  # kept alive: no new client, no new connection per probe


def _plan(tmp_path: Path, url: str, *, precheck_timeout: str | None = None, guard: bool = False) -> Path:
    plan: dict[str, Any] = {
        "version": 1,
        "name": "trickle",
        "environments": {"demo": {"rehearsal": True, "connection": "local", "hosts": {"h1": {}}}},
        "steps": [{"name": "wait", "run": "sleep 8", "rollback": "true", "timeout": "30s"}],
    }
    if precheck_timeout is not None:
        plan["prechecks"] = [{"name": "slow health", "http": {"url": url}, "timeout": precheck_timeout}]
    if guard:
        plan["guards"] = [
            {"name": "slow guard", "http": {"url": url}, "every": "100ms", "timeout": "2s", "fail_after": 1}
        ]
    return write_plan(tmp_path / "plan.yaml", plan)


def test_a_trickled_precheck_fails_at_its_timeout_in_a_real_run(trickle: TrickleServer, tmp_path: Path) -> None:
    plan = _plan(tmp_path, trickle.url, precheck_timeout="2s")
    started = time.monotonic()
    result = rollout("run", plan, "--env", "demo", "--state-dir", tmp_path / "state", timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 3, result.stdout + result.stderr
    assert "timed out after 2s" in result.stdout
    assert took < 15, took


def test_sigterm_ends_a_run_waiting_on_a_trickled_precheck(trickle: TrickleServer, tmp_path: Path) -> None:
    plan = _plan(tmp_path, trickle.url, precheck_timeout="10m")
    state = tmp_path / "state"
    proc = start_rollout("run", plan, "--env", "demo", "--state-dir", state)
    try:
        assert trickle.got_request.wait(30), "the pre-check never reached the server"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert time.monotonic() - signalled < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert [e["kind"] for e in events(state)][-1] == "run.end"
    assert not any(e["kind"] == "step.intent" for e in events(state))


def test_a_trickling_guard_reports_failing_and_trips(trickle: TrickleServer, tmp_path: Path) -> None:
    plan = _plan(tmp_path, trickle.url, guard=True)
    state = tmp_path / "state"
    proc = start_rollout("run", plan, "--env", "demo", "--state-dir", state, "--grace", "1s")
    try:
        tripped = wait_for_event(state, is_event("guard.state", outcome="tripped"), timeout=30, proc=proc)
        assert "timed out after 2s" in str(tripped["data"]), tripped
        trickle.fast.set()  # the service recovers once the change is rolled back
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    assert "ROLLED BACK" in out


def test_an_abort_ends_a_precheck_probe_but_lets_a_verification_finish(trickle: TrickleServer, tmp_path: Path) -> None:
    """Pre-checks yield to an abort; a step's verification is not cut short (it would record a healthy host failed)."""
    from rollout.model import Check, HttpCheck

    abort = threading.Event()
    abort.set()  # another host's failure aborted the run while these probes are in flight
    runner = CheckRunner(tmp_path, abort=abort)
    check = Check(http=HttpCheck(url=trickle.url), timeout=60)
    try:
        precheck = runner.run(check, executor=None, yield_to_abort=True)  # type: ignore[arg-type]
        assert not precheck.ok
        assert "interrupted" in precheck.summary
        trickle.fast.set()
        verification = runner.run(check, executor=None)  # type: ignore[arg-type]
        assert verification.ok, verification.summary
    finally:
        runner.close()
