"""Network probes: HTTP (the only httpx importer) and TCP.

httpx is imported inside the functions so that start-up of commands that never probe
(validate, plan, --help) does not pay for it. Every failure becomes an observation with
an error string: a probe never raises for a network problem.

Invariant: a probe's timeout is one overall deadline on the monotonic clock covering
connect, TLS, sending the request and reading every byte of the response. httpx's own
timeouts are per phase and per socket operation, so a server that trickles a byte every
0.3 s would never time out; here every socket operation of the request is given only what
is left of the deadline, in slices of at most PROBE_SLICE seconds, and between slices the
caller's `interrupted()` is asked, so a probe yields to an abort within a slice. (A TCP
connect cannot be resumed after a slice: it is bounded by the deadline, not sliced.)

One `HttpProber` (one httpx client with its connection pool) serves every probe of one
check: building a client costs about 100 ms of CPU, a probe on a kept-alive connection
almost nothing.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rollout.checks import HttpObservation, TcpObservation

MAX_BODY = 64 * 1024 * 1024
PROBE_SLICE = 0.1

Interrupted = Callable[[], bool]


def _never() -> bool:
    return False


class _ProbeInterrupted(Exception):
    """Raised inside the transport when the caller asks the probe to stop."""


class _Limits(threading.local):
    """The deadline and interrupt of the request this thread is making, read by its streams."""

    deadline: float = float("inf")
    interrupted: Interrupted = staticmethod(_never)


_limits = _Limits()


def _remaining(timeout: float | None) -> float:
    """What is left of the deadline (capped by the phase timeout); raises when nothing is."""
    import httpcore

    if _limits.interrupted():
        raise _ProbeInterrupted
    left = _limits.deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("overall deadline passed")
    return left if timeout is None else min(left, timeout)


def _sliced(operation: Callable[[float], Any], timeout: float | None, timeout_error: type[Exception]) -> Any:
    """Repeat a socket operation in slices until it completes, the deadline passes or the caller stops."""
    while True:
        left = _remaining(timeout)
        try:
            return operation(min(left, PROBE_SLICE))
        except timeout_error:
            if left <= PROBE_SLICE:
                raise


def _backend() -> Any:
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
            self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
        ) -> httpcore.NetworkStream:
            return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, _remaining(timeout)))

        def get_extra_info(self, info: str) -> Any:
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
            socket_options: Iterable[Any] | None = None,
        ) -> httpcore.NetworkStream:
            stream = self._inner.connect_tcp(host, port, _remaining(timeout), local_address, socket_options)
            return DeadlineStream(stream)

        def connect_unix_socket(
            self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
        ) -> httpcore.NetworkStream:
            return DeadlineStream(self._inner.connect_unix_socket(path, _remaining(timeout), socket_options))

        def sleep(self, seconds: float) -> None:
            time.sleep(min(seconds, max(0.0, _remaining(None))))

    return DeadlineBackend()


def _new_client() -> Any:
    import httpcore
    import httpx

    transport = httpx.HTTPTransport(trust_env=False)
    # httpx takes no network backend; its transport's pool is swapped for one that has ours.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=16,
        max_keepalive_connections=4,
        keepalive_expiry=5.0,
        network_backend=_backend(),
    )
    return httpx.Client(transport=transport, follow_redirects=False, trust_env=False)


class HttpProber:
    """One HTTP client reused by every probe of one check; safe to share between threads."""

    def __init__(self) -> None:
        self._client: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
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

    def probe(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        timeout: float,
        interrupted: Interrupted = _never,
        max_body: int = MAX_BODY,
    ) -> HttpObservation:
        """One request, finished within `timeout` seconds overall or given up; errors become observations."""
        import httpx

        client = self._get()
        start = time.monotonic()
        _limits.deadline, _limits.interrupted = start + timeout, interrupted

        def failed(error: str) -> HttpObservation:
            return HttpObservation(None, error=error, elapsed=time.monotonic() - start)

        try:
            with client.stream(method, url, headers=dict(headers or {}), timeout=httpx.Timeout(timeout)) as response:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_body:
                        return HttpObservation(
                            response.status_code,
                            error=f"body larger than {max_body} bytes",
                            elapsed=time.monotonic() - start,
                        )
                    chunks.append(chunk)
                body = b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")
                return HttpObservation(response.status_code, body, elapsed=time.monotonic() - start)
        except _ProbeInterrupted:
            return failed("interrupted")
        except httpx.TimeoutException:
            return failed(f"timed out after {timeout:g}s")
        except httpx.ConnectError as exc:
            return failed(f"cannot connect: {_reason(exc)}")
        except httpx.HTTPError as exc:
            return failed(f"{type(exc).__name__}: {_reason(exc)}")
        except (OSError, ValueError) as exc:
            return failed(f"{type(exc).__name__}: {exc}")
        finally:
            _limits.deadline, _limits.interrupted = float("inf"), _never


def http_probe(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout: float,
    max_body: int = MAX_BODY,
    interrupted: Interrupted = _never,
) -> HttpObservation:
    """One HTTP request on a client of its own (one-off uses); see HttpProber for repeated probes."""
    prober = HttpProber()
    try:
        return prober.probe(
            url, method=method, headers=headers, timeout=timeout, interrupted=interrupted, max_body=max_body
        )
    finally:
        prober.close()


def http_post_json(
    url: str, payload: Any, *, headers: Mapping[str, str] | None = None, timeout: float
) -> HttpObservation:
    """POST a JSON document (status notifications) within an overall timeout; errors become observations."""
    import httpx

    start = time.monotonic()
    _limits.deadline, _limits.interrupted = start + timeout, _never
    try:
        with _new_client() as client:
            response = client.post(url, json=payload, headers=dict(headers or {}), timeout=httpx.Timeout(timeout))
            return HttpObservation(response.status_code, response.text[:2000], elapsed=time.monotonic() - start)
    except httpx.TimeoutException:
        return HttpObservation(None, error=f"timed out after {timeout:g}s", elapsed=time.monotonic() - start)
    except httpx.HTTPError as exc:
        return HttpObservation(None, error=f"{type(exc).__name__}: {_reason(exc)}", elapsed=time.monotonic() - start)
    except (OSError, ValueError) as exc:
        return HttpObservation(None, error=f"{type(exc).__name__}: {exc}", elapsed=time.monotonic() - start)
    finally:
        _limits.deadline = float("inf")


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text or type(exc).__name__


def tcp_probe(host: str, port: int, *, timeout: float) -> TcpObservation:
    """Connect and close; errors become observations."""
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return TcpObservation(True, elapsed=time.monotonic() - start)
    except TimeoutError:
        return TcpObservation(False, f"timed out after {timeout:g}s", time.monotonic() - start)
    except OSError as exc:
        return TcpObservation(
            False,
            f"cannot connect to {host}:{port}: {exc.strerror or exc}",
            time.monotonic() - start,
        )
