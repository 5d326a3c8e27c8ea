"""rollout.http, the one home of HTTP: the only httpx importer, one exception table, real requests.

Invariants: no module but rollout/http.py imports httpx or httpcore; every httpx error
maps to exactly one of ours, and the messages are the ones probes and webhooks have
always journaled; a kept client serves many requests on one connection. The requests go
to a real server on 127.0.0.1; waits synchronise on events, never on sleeps.
"""

from __future__ import annotations

import ast
import json
import socket
import threading
import typing
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollout import http
from rollout.checks.http import HttpProber

ROLLOUT = Path(__file__).resolve().parents[1] / "rollout"


class Server:
    """A real HTTP server on 127.0.0.1 whose answer is chosen by the request path."""

    def __init__(self) -> None:
        self.connections = 0
        self.posted: list[Any] = []
        self.got_request = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                outer.connections += 1
                super().setup()

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(self) -> None:
                outer.got_request.set()
                if self.path == "/garbage":
                    self.wfile.write(b"NOT HTTP\r\n\r\n")
                    self.close_connection = True
                    return
                if self.path == "/hang":
                    outer.release.wait(30)
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    outer.posted.append(json.loads(self.rfile.read(length)))
                body = "h\xe9llo".encode("latin-1") if self.path != "/big" else b"x" * 5000
                self.send_response(201 if self.command == "POST" else 200)
                self.send_header("Content-Type", "text/plain; charset=latin-1")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def client() -> Iterator[http.HttpClient]:
    with http.HttpClient() as c:
        yield c


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_rollout_http_imports_httpx_httpcore_or_h11() -> None:
    importers = sorted(
        str(p.relative_to(ROLLOUT.parent)) for p in ROLLOUT.rglob("*.py") if _imports(p) & {"httpx", "httpcore"}
    )
    assert importers == ["rollout/http/__init__.py"]
    h11_importers = sorted(str(p.relative_to(ROLLOUT.parent)) for p in ROLLOUT.rglob("*.py") if "h11" in _imports(p))
    assert h11_importers == ["rollout/http/aio.py"]


def test_the_client_is_typed_as_httpx_client_not_any() -> None:
    hints = typing.get_type_hints(http.HttpClient._get, vars(http) | {"httpx": httpx})
    assert hints["return"] is httpx.Client


def _subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def _ours(exc: BaseException) -> type[http.HttpFailure]:
    return next(ours for theirs, ours in http.exception_table() if isinstance(exc, theirs))


def test_every_httpx_error_maps_to_one_of_ours_by_the_table() -> None:
    for cls in _subclasses(httpx.HTTPError) | {httpx.HTTPError}:
        exc = cls.__new__(cls)
        expected = (
            http.HttpTimeout
            if issubclass(cls, httpx.TimeoutException)
            else http.HttpConnectFailure
            if issubclass(cls, httpx.ConnectError)
            else http.HttpFailure
        )
        assert _ours(exc) is expected, cls
    assert _ours(UnicodeEncodeError("ascii", "é", 0, 1, "no")) is http.HttpLocalFailure
    assert _ours(OSError()) is http.HttpLocalFailure


def test_a_kept_client_decodes_by_charset_and_reuses_its_connection(server: Server, client: http.HttpClient) -> None:
    first = client.request("GET", server.url + "/", timeout=10)
    second = client.request("GET", server.url + "/", timeout=10)
    assert (first.status, first.text, first.too_large) == (200, "h\xe9llo", False)
    assert second.text == "h\xe9llo"
    assert server.connections == 1


def test_a_body_over_the_limit_is_not_kept(server: Server, client: http.HttpClient) -> None:
    response = client.request("GET", server.url + "/big", timeout=10, max_body=100)
    assert (response.status, response.text, response.too_large) == (200, "", True)


def test_post_json_sends_the_document(server: Server) -> None:
    response = http.post_json(server.url + "/hook", {"status": "resolved", "n": [1, 2]}, timeout=10)
    assert response.status == 201
    assert server.posted == [{"status": "resolved", "n": [1, 2]}]


def test_refused_connection_message_for_webhooks_and_for_probes() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/"
    with pytest.raises(http.HttpConnectFailure) as caught:
        http.post_json(url, {}, timeout=5)
    assert str(caught.value) == f"ConnectError: {caught.value.reason}"
    assert "refused" in caught.value.reason.lower()
    prober = HttpProber()
    try:
        obs = prober.probe(url, timeout=5)
    finally:
        prober.close()
    assert obs.error == f"cannot connect: {caught.value.reason}"


def test_protocol_error_names_httpx_type_and_reason(server: Server, client: http.HttpClient) -> None:
    with pytest.raises(http.HttpFailure) as caught:
        client.request("GET", server.url + "/garbage", timeout=10)
    assert type(caught.value) is http.HttpFailure
    assert str(caught.value).startswith("RemoteProtocolError: illegal status line")


def test_unencodable_header_is_a_local_failure(server: Server, client: http.HttpClient) -> None:
    with pytest.raises(http.HttpLocalFailure) as caught:
        client.request("GET", server.url + "/", timeout=10, headers={"X-Name": "\u2603"})
    assert str(caught.value).startswith("UnicodeEncodeError: 'ascii' codec can't encode")


def test_silent_server_ends_at_the_overall_deadline(server: Server, client: http.HttpClient) -> None:
    with pytest.raises(http.HttpTimeout) as caught:
        client.request("GET", server.url + "/hang", timeout=0.5)
    assert str(caught.value) == "timed out after 0.5s"
    assert 0.5 <= caught.value.elapsed < 10


def test_an_interrupt_ends_a_request_within_a_slice(server: Server, client: http.HttpClient) -> None:
    with pytest.raises(http.HttpInterrupted) as caught:
        client.request("GET", server.url + "/hang", timeout=60, interrupted=server.got_request.is_set)
    assert str(caught.value) == "interrupted"
    assert server.got_request.is_set()
    assert caught.value.elapsed < 30
