"""Check verdicts are pure functions of what came back: table-driven, plus real probes on loopback."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from rollout.checks import (
    HttpObservation,
    TcpObservation,
    evaluate_command,
    evaluate_http,
    evaluate_tcp,
    json_path_get,
)
from rollout.checks.http import http_probe, tcp_probe
from rollout.model import CommandCheck, HttpCheck


@dataclass(frozen=True)
class Result:
    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    duration: float = 0.01


@pytest.mark.parametrize(
    ("spec", "result", "ok", "summary"),
    [
        (CommandCheck(run="x"), Result(0), True, "exit code 0"),
        (CommandCheck(run="x"), Result(1, stderr="no such file"), False, "exit code 1, expected 0: no such file"),
        (CommandCheck(run="x", exit_code=3), Result(3), True, "exit code 3"),
        (CommandCheck(run="x"), Result(None, timed_out=True, duration=2.0), False, "timed out after 2.0s"),
        (CommandCheck(run="x", stdout="^active$"), Result(0, stdout="active\n"), True, "exit code 0"),
        (
            CommandCheck(run="x", stdout="^active$"),
            Result(0, stdout="inactive\n"),
            False,
            "stdout does not match /^active$/",
        ),
        (CommandCheck(run="x", stderr="warn"), Result(0, stderr="all good"), False, "stderr does not match /warn/"),
        (CommandCheck(run="x"), Result(None, stderr="killed"), False, "exit code None, expected 0: killed"),
    ],
)
def test_command_verdicts(spec: CommandCheck, result: Result, ok: bool, summary: str) -> None:
    verdict = evaluate_command(spec, result)
    assert verdict.ok is ok
    assert verdict.summary == summary
    assert verdict.observed["exit_code"] == result.exit_code


def _http(**kwargs: object) -> HttpCheck:
    return HttpCheck.model_validate({"url": "http://127.0.0.1:1/", **kwargs})


@pytest.mark.parametrize(
    ("spec", "obs", "ok", "summary"),
    [
        (_http(), HttpObservation(200, "ok"), True, "status 200"),
        (_http(), HttpObservation(503, "down"), False, "status 503, expected 200"),
        (_http(status=[200, 204]), HttpObservation(204), True, "status 204"),
        (_http(status=[200, 204]), HttpObservation(500), False, "status 500, expected 200 or 204"),
        (_http(), HttpObservation(None, error="cannot connect: refused"), False, "cannot connect: refused"),
        (_http(body="READY"), HttpObservation(200, "state: READY"), True, "status 200"),
        (_http(body="READY"), HttpObservation(200, "state: STARTING"), False, "body does not match /READY/"),
        (_http(json={"$.ok": True}), HttpObservation(200, '{"ok": true}'), True, "status 200"),
        (_http(json={"$.ok": True}), HttpObservation(200, '{"ok": false}'), False, "$.ok is false, expected true"),
        (_http(json={"$.a.b[1]": 2}), HttpObservation(200, '{"a": {"b": [1, 2]}}'), True, "status 200"),
        (_http(json={"$.missing": 1}), HttpObservation(200, "{}"), False, "$.missing is missing"),
        (_http(json={"$.ok": True}), HttpObservation(200, "<html>"), False, "body is not JSON"),
    ],
)
def test_http_verdicts(spec: HttpCheck, obs: HttpObservation, ok: bool, summary: str) -> None:
    verdict = evaluate_http(spec, obs)
    assert verdict.ok is ok
    assert verdict.summary == summary


@pytest.mark.parametrize(
    ("obs", "ok", "summary"),
    [
        (TcpObservation(True), True, "connected"),
        (
            TcpObservation(False, "cannot connect to 127.0.0.1:1: Connection refused"),
            False,
            "cannot connect to 127.0.0.1:1: Connection refused",
        ),
        (TcpObservation(False), False, "connection failed"),
    ],
)
def test_tcp_verdicts(obs: TcpObservation, ok: bool, summary: str) -> None:
    verdict = evaluate_tcp(obs)
    assert (verdict.ok, verdict.summary) == (ok, summary)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("$", {"a": [{"b": 1}]}), ("$.a[0].b", 1), ("$['a'][0]", {"b": 1})],
)
def test_json_path_reads_documents(path: str, expected: object) -> None:
    assert json_path_get({"a": [{"b": 1}]}, path) == expected


@pytest.mark.parametrize("path", ["a.b", "$.a[5]", "$.x", "$.a[0].b.c", "$!"])
def test_json_path_misses_raise_key_error(path: str) -> None:
    with pytest.raises(KeyError):
        json_path_get({"a": [{"b": 1}]}, path)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            threading.Event().wait(2)
        body = b'{"ok": true}' if self.path != "/down" else b'{"ok": false}'
        self.send_response(200 if self.path != "/down" else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_probe_against_a_real_server(server: str) -> None:
    green = evaluate_http(_http(json={"$.ok": True}), http_probe(f"{server}/probe", timeout=2))
    red = evaluate_http(_http(json={"$.ok": True}), http_probe(f"{server}/down", timeout=2))
    assert green.ok
    assert not red.ok
    assert red.summary == "status 503, expected 200"


def test_http_probe_times_out_on_the_monotonic_clock(server: str) -> None:
    obs = http_probe(f"{server}/slow", timeout=0.2)
    assert obs.status is None
    assert obs.error == "timed out after 0.2s"
    assert obs.elapsed < 1.5


def test_http_probe_reports_a_refused_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    obs = http_probe(f"http://127.0.0.1:{port}/", timeout=1)
    assert obs.status is None
    assert obs.error is not None
    assert obs.error.startswith("cannot connect")


def test_tcp_probe_connects_and_reports_refusal() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert tcp_probe("127.0.0.1", port, timeout=1).connected
    refused = tcp_probe("127.0.0.1", port, timeout=1)
    assert not refused.connected
    assert "127.0.0.1" in (refused.error or "")
