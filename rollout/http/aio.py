"""HTTP/1.1 requests on one asyncio event loop, for guards that probe a whole fleet.

h11 (the protocol engine httpx itself uses) over asyncio streams, with kept-alive
connections per origin. httpx's sync client costs about 1.9 ms of CPU per request on a
kept connection, this about 0.4 ms (1,000 probes a second against a local keep-alive
server, measured with both cores shared), which is what lets one loop thread watch 1,000
hosts every second on under half a core.

Invariants:
- A request's timeout is one overall deadline: connect, TLS, sending, and reading every
  byte of the response all run under it; when it passes the request is abandoned.
- Same TLS as every other request rollout makes: the context comes from
  rollout.http.ssl_context() (verification on, the same trust store, no environment).
- No proxies, no redirects, no netrc: like the sync client, a probe talks to the URL given.
- A pool belongs to the loop that uses it: call it only from that loop's thread.

Failures raise the same HttpFailure family as the sync client, with the same texts.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rollout.http import (
    MAX_BODY,
    HttpConnectFailure,
    HttpFailure,
    HttpResponse,
    HttpTimeout,
    ssl_context,
)

if TYPE_CHECKING:
    import ssl

    import h11

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (as the sync client's pool)
MAX_IDLE_PER_ORIGIN = 1024  # never the bound in practice: a guard has at most one probe in flight
READ_SIZE = 65536
_CHARSET = re.compile(r"charset=([\w.:-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: h11.Connection
    idle_since: float = 0.0
    reused: bool = False

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A kept connection the server had closed before it sent a byte of the response."""


@dataclass(frozen=True)
class _Target:
    origin: _Origin
    host_header: str
    path: str


@dataclass
class AsyncHttpPool:
    """Kept-alive connections per origin and the requests made on them (one loop only)."""

    keepalive_expiry: float = KEEPALIVE_EXPIRY
    _idle: dict[_Origin, list[_Conn]] = field(default_factory=dict)
    _ssl: ssl.SSLContext | None = None

    def close(self) -> None:
        """Close every idle connection; requests in flight close theirs when they end."""
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        max_body: int = MAX_BODY,
    ) -> HttpResponse:
        """One request finished within `timeout` seconds overall, or HttpFailure."""
        start = time.monotonic()
        try:
            target = _target(url)
            async with asyncio.timeout(timeout):
                return await self._exchange(method, target, headers or {}, max_body, start)
        except TimeoutError as exc:
            failure: HttpFailure = HttpTimeout(f"timed out after {timeout:g}s")
            failure.elapsed = time.monotonic() - start
            raise failure from exc
        except HttpFailure as failure:
            failure.elapsed = time.monotonic() - start
            raise

    async def _exchange(
        self, method: str, target: _Target, headers: Mapping[str, str], max_body: int, start: float
    ) -> HttpResponse:
        conn = self._take(target.origin)
        if conn is not None:
            try:
                return await self._on(conn, method, target, headers, max_body, start)
            except _Stale:
                pass  # the server closed a kept connection: ask once more on a new one
        conn = await self._connect(target.origin)
        try:
            return await self._on(conn, method, target, headers, max_body, start)
        except _Stale as exc:
            raise _disconnected() from exc

    def _take(self, origin: _Origin) -> _Conn | None:
        conns = self._idle.get(origin)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if now - conn.idle_since <= self.keepalive_expiry and not conn.reader.at_eof():
                conn.reused = True
                return conn
            conn.close()
        return None

    def _give_back(self, origin: _Origin, conn: _Conn) -> None:
        import h11

        if conn.protocol.our_state is h11.DONE and conn.protocol.their_state is h11.DONE:
            conn.protocol.start_next_cycle()
            conns = self._idle.setdefault(origin, [])
            if len(conns) < MAX_IDLE_PER_ORIGIN:
                conn.idle_since = time.monotonic()
                conns.append(conn)
                return
        conn.close()

    async def _connect(self, origin: _Origin) -> _Conn:
        import h11

        tls = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl_context()
            tls = self._ssl
        try:
            reader, writer = await asyncio.open_connection(
                origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
            )
        except TimeoutError:
            raise
        except OSError as exc:
            reason = _os_reason(exc)
            raise HttpConnectFailure(f"ConnectError: {reason}", reason) from exc
        return _Conn(reader, writer, h11.Connection(h11.CLIENT))

    async def _on(
        self, conn: _Conn, method: str, target: _Target, headers: Mapping[str, str], max_body: int, start: float
    ) -> HttpResponse:
        """The exchange on one connection; it goes back to the pool only after a complete response."""
        import h11

        done = False
        try:
            try:
                conn.writer.write(_request_bytes(conn.protocol, method, target, headers))
                await conn.writer.drain()
                response = await _read_response(conn, max_body, start)
            except h11.ProtocolError as exc:
                raise HttpFailure(f"RemoteProtocolError: {exc}", str(exc)) from exc
            except OSError as exc:
                if conn.reused and conn.protocol.their_state is h11.SEND_RESPONSE:
                    raise _Stale from exc
                reason = str(exc) or type(exc).__name__
                raise HttpFailure(f"ReadError: {reason}", reason) from exc
            done = not response.too_large
            return response
        finally:
            if done:
                self._give_back(target.origin, conn)
            else:
                conn.close()


# A guard asks the same URL every `every`: parse it once (errors are not cached, so they recur).
@lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise HttpFailure(f"InvalidURL: {exc}", str(exc)) from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        message = f"Request URL has an unsupported protocol '{scheme}://'."
        raise HttpFailure(f"UnsupportedProtocol: {message}", message)
    host = parts.hostname
    if not host:
        raise HttpFailure("UnsupportedProtocol: Request URL is missing an 'http://' or 'https://' protocol.")
    default = 443 if scheme == "https" else 80
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port in (None, default) else f"{shown}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(_Origin(scheme, host, port or default), host_header, path)


def _request_bytes(protocol: h11.Connection, method: str, target: _Target, headers: Mapping[str, str]) -> bytes:
    """The request head (no body) with httpx's default headers, the check's own taking precedence."""
    import h11

    try:
        head = protocol.send(_request_event(method, target, tuple(headers.items())))
        return (head or b"") + (protocol.send(h11.EndOfMessage()) or b"")
    except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
        raise HttpFailure(f"{type(exc).__name__}: {exc}", str(exc)) from exc


# Building and validating a request's headers is most of h11's cost per probe, and a guard
# sends the same request every `every`: h11's events are immutable, so one serves them all.
@lru_cache(maxsize=4096)
def _request_event(method: str, target: _Target, headers: tuple[tuple[str, str], ...]) -> h11.Request:
    """The h11 request event for a method, target and the check's own headers."""
    import h11

    given = {k.lower() for k, _ in headers}
    fields = [(k, v) for k, v in _default_headers(target) if k.lower() not in given]
    fields += list(headers)
    if method in ("POST", "PUT") and "content-length" not in given:
        fields.append(("Content-Length", "0"))
    return h11.Request(method=method, target=target.path, headers=fields)


def _default_headers(target: _Target) -> list[tuple[str, str]]:
    """What httpx sends unasked (bar its User-Agent), so a server sees the same request either way."""
    return [
        ("Host", target.host_header),
        ("Accept", "*/*"),
        ("Accept-Encoding", "gzip, deflate"),
        ("Connection", "keep-alive"),
        ("User-Agent", "rollout"),
    ]


async def _read_response(conn: _Conn, max_body: int, start: float) -> HttpResponse:
    """Read one response through h11; a body over `max_body` is not kept (`too_large`)."""
    import h11

    protocol = conn.protocol
    status = 0
    content_type = encoding = ""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = protocol.next_event()
        if event is h11.NEED_DATA:
            data = await conn.reader.read(READ_SIZE)
            if not data and protocol.their_state is h11.SEND_RESPONSE:
                raise _Stale  # closed before a byte of the response: retried once if the connection was kept
            protocol.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
            for name, value in event.headers:
                if name == b"content-type":
                    content_type = value.decode("latin-1")
                elif name == b"content-encoding":
                    encoding = value.decode("latin-1").strip().lower()
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > max_body:
                return HttpResponse(status, "", time.monotonic() - start, too_large=True)
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise _disconnected()
    body = _decoded(b"".join(chunks), encoding)
    charset = _CHARSET.search(content_type)
    text = _text(body, charset.group(1) if charset else "utf-8")
    return HttpResponse(status, text, time.monotonic() - start)


def _os_reason(exc: OSError) -> str:
    """`[Errno 111] Connection refused`, as a blocking connect says it (asyncio says `Connect call failed`)."""
    import ssl

    if exc.errno and not isinstance(exc, ssl.SSLError):  # a TLS failure's own text names the certificate problem
        return f"[Errno {exc.errno}] {os.strerror(exc.errno)}"
    return str(exc) or type(exc).__name__


def _disconnected() -> HttpFailure:
    message = "Server disconnected without sending a response."
    return HttpFailure(f"RemoteProtocolError: {message}", message)


def _decoded(body: bytes, encoding: str) -> bytes:
    """Undo gzip or deflate, as httpx does; a body that does not decode is an error."""
    if not body or encoding in ("", "identity"):
        return body
    try:
        if encoding == "gzip":
            return zlib.decompress(body, zlib.MAX_WBITS | 16)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise HttpFailure(f"DecodingError: {exc}", str(exc)) from exc
    return body


def _text(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")
