"""Network probes for checks: HTTP (through rollout.http) and TCP, blocking or on an event loop.

Every failure becomes an observation with an error string: a probe never raises for a
network problem. The deadline, the interrupt and the kept connection pool are
rollout.http's; what is done with the answer (status, body, errors) is decided here.

One `HttpProber` (one kept client with its connection pool) serves every probe of one
check: building a client costs about 100 ms of CPU, a probe on a kept-alive connection
almost nothing. Guards probe on the scheduler's event loop instead (`probe_async`,
`tcp_probe_async`): same observations, same texts, a fraction of the CPU and no thread each.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from rollout.checks import HttpObservation, TcpObservation
from rollout.http import (
    MAX_BODY,
    HttpClient,
    HttpConnectFailure,
    HttpFailure,
    HttpResponse,
    Interrupted,
)

if TYPE_CHECKING:
    from rollout.http.aio import AsyncHttpPool


def _never() -> bool:
    return False


class HttpProber:
    """One HTTP client reused by every probe of one check; safe to share between threads."""

    def __init__(self) -> None:
        self._client = HttpClient()

    def close(self) -> None:
        """Close the client and its pooled connections; safe to call twice."""
        self._client.close()

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
        try:
            response = self._client.request(
                method, url, headers=headers, timeout=timeout, interrupted=interrupted, max_body=max_body
            )
        except HttpFailure as failure:
            return _failed(failure)
        return _observed(response, max_body)


def _failed(failure: HttpFailure) -> HttpObservation:
    if isinstance(failure, HttpConnectFailure):
        return HttpObservation(None, error=f"cannot connect: {failure.reason}", elapsed=failure.elapsed)
    return HttpObservation(None, error=str(failure), elapsed=failure.elapsed)


def _observed(response: HttpResponse, max_body: int) -> HttpObservation:
    if response.too_large:
        return HttpObservation(response.status, error=f"body larger than {max_body} bytes", elapsed=response.elapsed)
    return HttpObservation(response.status, response.text, elapsed=response.elapsed)


async def probe_async(
    pool: AsyncHttpPool,
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout: float,
    max_body: int = MAX_BODY,
) -> HttpObservation:
    """HttpProber.probe on an event loop, on the loop's kept connections; errors become observations."""
    try:
        response = await pool.request(method, url, headers=headers, timeout=timeout, max_body=max_body)
    except HttpFailure as failure:
        return _failed(failure)
    return _observed(response, max_body)


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


async def tcp_probe_async(host: str, port: int, *, timeout: float) -> TcpObservation:
    """tcp_probe without blocking a thread: a non-blocking connect under one deadline."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return TcpObservation(False, f"timed out after {timeout:g}s", time.monotonic() - start)
    except OSError as exc:
        # asyncio words a refusal `Connect call failed`: say it as the blocking probe does
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return TcpObservation(False, f"cannot connect to {host}:{port}: {reason}", time.monotonic() - start)
    writer.close()
    return TcpObservation(True, elapsed=time.monotonic() - start)
