"""HTTP for every layer: the only package that imports httpx (and httpcore, and h11).

It owns three things: building a client, making a request within one overall deadline,
and translating httpx's exceptions into ours through one table (the way httpx translates
httpcore's). Checks probe through it (rollout.checks.http) and the notifier posts status
documents through it (rollout.report.notify). httpx is imported inside the functions so
that commands that never make a request (validate, plan, --help) do not pay for it.

Invariant: a request's timeout is one overall deadline on the monotonic clock covering
connect, TLS, sending the request and reading every byte of the response. httpx's own
timeouts are per phase and per socket operation, so a server that trickles a byte every
0.3 s would never time out; here every socket operation of the request is given only what
is left of the deadline, in slices of at most SLICE seconds, and between slices the
caller's `interrupted()` is asked, so a request yields to an abort within a slice. (A TCP
connect cannot be resumed after a slice: it is bounded by the deadline, not sliced.)

One `HttpClient` (one httpx client with its connection pool) is meant to be kept for many
requests: building one costs about 100 ms of CPU, a request on a kept-alive connection
almost nothing. Guards that probe a whole fleet use rollout.http.aio instead: one event
loop, h11 over asyncio streams, a quarter of the CPU per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import ssl

    import httpcore
    import httpx

MAX_BODY = 64 * 1024 * 1024
SLICE = 0.1

Interrupted = Callable[[], bool]
_T = TypeVar("_T")


def _never() -> bool:
    return False


# --- our exceptions, and the one table that maps httpx's to them ------------------------


class HttpFailure(Exception):
    """A request that got no usable response; str() is the one line to show or journal."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.elapsed = 0.0

    @classmethod
    def translate(cls, exc: BaseException, timeout: float) -> HttpFailure:
        """Ours for one of httpx's: `ReadError: connection reset` (the type's name when it says nothing)."""
        reason = str(exc) or type(exc).__name__
        return cls(f"{type(exc).__name__}: {reason}", reason)


class HttpTimeout(HttpFailure):
    """The overall deadline (or a phase's timeout) passed."""

    @classmethod
    def translate(cls, exc: BaseException, timeout: float) -> HttpFailure:
        """`timed out after 2s`: the deadline, not httpx's phase, is what the user set."""
        return cls(f"timed out after {timeout:g}s")


class HttpInterrupted(HttpFailure):
    """The caller's `interrupted()` said stop."""

    @classmethod
    def translate(cls, exc: BaseException, timeout: float) -> HttpFailure:
        """Always `interrupted`."""
        return cls("interrupted")


class HttpConnectFailure(HttpFailure):
    """No connection: refused, unreachable, name not resolved, TLS handshake failed."""


class HttpLocalFailure(HttpFailure):
    """An OSError or ValueError outside httpx's tree (a header that cannot be encoded, TLS set-up)."""

    @classmethod
    def translate(cls, exc: BaseException, timeout: float) -> HttpFailure:
        """`UnicodeEncodeError: ...`, the exception's own text even when empty."""
        return cls(f"{type(exc).__name__}: {exc}", str(exc))


class _Interrupted(Exception):
    """Raised inside the transport when the caller asks the request to stop."""


@cache
def exception_table() -> tuple[tuple[type[BaseException], type[HttpFailure]], ...]:
    """Theirs -> ours, first match wins; anything not listed propagates unchanged."""
    import httpx

    return (
        (_Interrupted, HttpInterrupted),
        (httpx.TimeoutException, HttpTimeout),
        (httpx.ConnectError, HttpConnectFailure),
        (httpx.HTTPError, HttpFailure),
        (OSError, HttpLocalFailure),
        (ValueError, HttpLocalFailure),
    )


@contextmanager
def _translated(timeout: float, start: float) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in exception_table():
            if isinstance(exc, theirs):
                failure = ours.translate(exc, timeout)
                failure.elapsed = time.monotonic() - start
                raise failure from exc
        raise


# --- the deadline, enforced in the network backend ----------------------------------------


class _Limits(threading.local):
    """The deadline and interrupt of the request this thread is making, read by its streams."""

    deadline: float = float("inf")
    interrupted: Interrupted = staticmethod(_never)


_limits = _Limits()


def _remaining(timeout: float | None) -> float:
    """What is left of the deadline (capped by the phase timeout); raises when nothing is."""
    import httpcore

    if _limits.interrupted():
        raise _Interrupted
    left = _limits.deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("overall deadline passed")
    return left if timeout is None else min(left, timeout)


def _sliced(operation: Callable[[float], _T], timeout: float | None, timeout_error: type[Exception]) -> _T:
    """Repeat a socket operation in slices until it completes, the deadline passes or the caller stops."""
    while True:
        left = _remaining(timeout)
        try:
            return operation(min(left, SLICE))
        except timeout_error:
            if left <= SLICE:
                raise


def _backend() -> httpcore.NetworkBackend:
    """An httpcore network backend whose streams obey the thread's deadline and interrupt."""
    import httpcore

    class DeadlineStream(httpcore.NetworkStream):
        def __init__(self, inner: httpcore.NetworkStream) -> None:
            self._inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return bytes(_sliced(lambda t: self._inner.read(max_bytes, t), timeout, httpcore.ReadTimeout))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            # a partial send before a slice's timeout cannot be told apart from none: one bounded send
            self._inner.write(buffer, _remaining(timeout))

        def close(self) -> None:
            self._inner.close()

        def start_tls(
            self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
        ) -> httpcore.NetworkStream:
            return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, _remaining(timeout)))

        def get_extra_info(self, info: str) -> Any:  # httpcore's own signature: the value depends on `info`
            return self._inner.get_extra_info(info)

    class DeadlineBackend(httpcore.NetworkBackend):
        def __init__(self) -> None:
            self._inner = httpcore.SyncBackend()

        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
        ) -> httpcore.NetworkStream:
            stream = self._inner.connect_tcp(host, port, _remaining(timeout), local_address, socket_options)
            return DeadlineStream(stream)

        def connect_unix_socket(
            self,
            path: str,
            timeout: float | None = None,
            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
        ) -> httpcore.NetworkStream:
            return DeadlineStream(self._inner.connect_unix_socket(path, _remaining(timeout), socket_options))

        def sleep(self, seconds: float) -> None:
            time.sleep(min(seconds, max(0.0, _remaining(None))))

    return DeadlineBackend()


@cache
def ssl_context() -> ssl.SSLContext:
    """The one TLS context for every request: certificates verified against httpx's trust store, no environment."""
    import httpx

    return httpx.create_ssl_context(trust_env=False)


def _new_client() -> httpx.Client:
    """No proxies or netrc from the environment, no redirects, and our deadline-aware pool."""
    import httpcore
    import httpx

    transport = httpx.HTTPTransport(trust_env=False)
    # httpx takes no network backend; its transport's pool is swapped for one that has ours.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ssl_context(),
        max_connections=16,
        max_keepalive_connections=4,
        keepalive_expiry=5.0,
        network_backend=_backend(),
    )
    return httpx.Client(transport=transport, follow_redirects=False, trust_env=False)


# --- the client -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpResponse:
    """A status and the decoded body; a body over the limit is not kept (`too_large`)."""

    status: int
    text: str
    elapsed: float
    too_large: bool = False


def _read(response: httpx.Response, max_body: int, start: float) -> HttpResponse:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_body:
            return HttpResponse(response.status_code, "", time.monotonic() - start, too_large=True)
        chunks.append(chunk)
    text = b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")
    return HttpResponse(response.status_code, text, time.monotonic() - start)


class HttpClient:
    """One httpx client, built on first use and kept; safe to share between threads."""

    def __init__(self) -> None:
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _get(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = _new_client()
            return self._client

    def close(self) -> None:
        """Close the client and its pooled connections; safe to call twice."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        json: object = None,
        interrupted: Interrupted = _never,
        max_body: int = MAX_BODY,
        started: float | None = None,
    ) -> HttpResponse:
        """One request finished within `timeout` seconds overall, or HttpFailure.

        The deadline counts from `started` (monotonic) when given, else from once the client is built.
        """
        import httpx

        client = self._get()
        start = time.monotonic() if started is None else started
        _limits.deadline, _limits.interrupted = start + timeout, interrupted
        try:
            with (
                _translated(timeout, start),
                client.stream(
                    method, url, headers=dict(headers or {}), json=json, timeout=httpx.Timeout(timeout)
                ) as response,
            ):
                return _read(response, max_body, start)
        finally:
            _limits.deadline, _limits.interrupted = float("inf"), _never


def post_json(url: str, payload: object, *, headers: Mapping[str, str] | None = None, timeout: float) -> HttpResponse:
    """POST a JSON document on a client of its own (one-off uses) within `timeout` overall, or HttpFailure."""
    start = time.monotonic()
    with HttpClient() as client:
        return client.request("POST", url, timeout=timeout, headers=headers, json=payload, started=start)
