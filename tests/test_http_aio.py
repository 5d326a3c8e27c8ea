"""rollout.http.aio, the guards' HTTP: the same observations as the blocking client, for less.

Invariants: for every kind of answer (a body in a declared charset, a body over the
limit, not HTTP at all, no answer within the deadline, nobody listening, a certificate
that does not verify) a probe on the event loop observes exactly what the blocking probe
observes, bar the elapsed time; kept-alive connections serve many probes; the deadline is
overall. Real servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rollout.checks import HttpObservation
from rollout.checks.http import http_probe, probe_async
from rollout.http.aio import AsyncHttpPool
from tests.test_http import Server, _closed_port


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.stop()


def _async_probes(url: str, count: int = 1, *, timeout: float = 2.0, max_body: int = 1024) -> list[HttpObservation]:
    async def main() -> list[HttpObservation]:
        pool = AsyncHttpPool()
        try:
            return [await probe_async(pool, url, timeout=timeout, max_body=max_body) for _ in range(count)]
        finally:
            pool.close()

    return asyncio.run(main())


def _same(a: HttpObservation, b: HttpObservation) -> bool:
    return replace(a, elapsed=0.0) == replace(b, elapsed=0.0)


@pytest.mark.parametrize("path", ["/", "/big", "/garbage"])
def test_a_probe_on_the_loop_observes_what_the_blocking_probe_observes(server: Server, path: str) -> None:
    (on_loop,) = _async_probes(server.url + path)
    blocking = http_probe(server.url + path, timeout=2.0, max_body=1024)
    assert _same(on_loop, blocking), (on_loop, blocking)


def test_nobody_listening_reads_the_same() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/"
    (on_loop,) = _async_probes(url)
    assert _same(on_loop, http_probe(url, timeout=2.0)), on_loop
    assert on_loop.error == "cannot connect: [Errno 111] Connection refused"


def test_no_answer_times_out_at_the_overall_deadline(server: Server) -> None:
    (on_loop,) = _async_probes(server.url + "/hang", timeout=0.5)
    assert on_loop.error == "timed out after 0.5s"
    assert 0.45 <= on_loop.elapsed < 2.0, on_loop.elapsed


def test_kept_alive_connection_serves_every_probe(server: Server) -> None:
    observations = _async_probes(server.url + "/", count=5)
    assert all(o.status == 200 and o.body == "h\xe9llo" for o in observations), observations
    assert server.connections == 1


@pytest.fixture
def tls_url(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server whose self-signed certificate no trust store knows."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_port}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_certificate_that_does_not_verify_is_refused_as_by_the_blocking_probe(tls_url: str) -> None:
    (on_loop,) = _async_probes(tls_url)
    blocking = http_probe(tls_url, timeout=2.0)
    assert on_loop.status is None
    assert on_loop.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in on_loop.error, on_loop.error
    assert blocking.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in blocking.error, blocking.error
