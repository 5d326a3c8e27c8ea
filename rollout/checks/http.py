"""Network probes: HTTP (the only httpx importer) and TCP.

httpx is imported inside the functions so that start-up of commands that never probe
(validate, plan, --help) does not pay for it. Every failure becomes an observation with
an error string: a probe never raises for a network problem.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Any

from rollout.checks import HttpObservation, TcpObservation

MAX_BODY = 64 * 1024 * 1024


def _client() -> Any:
    import httpx

    return httpx


def http_probe(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout: float,
    max_body: int = MAX_BODY,
) -> HttpObservation:
    """One HTTP request with an overall timeout; errors become observations."""
    httpx = _client()
    start = time.monotonic()
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False) as client,
            client.stream(method, url, headers=dict(headers or {})) as response,
        ):
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
    except httpx.TimeoutException:
        return HttpObservation(None, error=f"timed out after {timeout:g}s", elapsed=time.monotonic() - start)
    except httpx.ConnectError as exc:
        return HttpObservation(None, error=f"cannot connect: {_reason(exc)}", elapsed=time.monotonic() - start)
    except httpx.HTTPError as exc:
        return HttpObservation(None, error=f"{type(exc).__name__}: {_reason(exc)}", elapsed=time.monotonic() - start)
    except (OSError, ValueError) as exc:
        return HttpObservation(None, error=f"{type(exc).__name__}: {exc}", elapsed=time.monotonic() - start)


def http_post_json(
    url: str, payload: Any, *, headers: Mapping[str, str] | None = None, timeout: float
) -> HttpObservation:
    """POST a JSON document (status notifications); errors become observations."""
    httpx = _client()
    start = time.monotonic()
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), trust_env=False) as client:
            response = client.post(url, json=payload, headers=dict(headers or {}))
            return HttpObservation(response.status_code, response.text[:2000], elapsed=time.monotonic() - start)
    except httpx.TimeoutException:
        return HttpObservation(None, error=f"timed out after {timeout:g}s", elapsed=time.monotonic() - start)
    except httpx.HTTPError as exc:
        return HttpObservation(None, error=f"{type(exc).__name__}: {_reason(exc)}", elapsed=time.monotonic() - start)
    except (OSError, ValueError) as exc:
        return HttpObservation(None, error=f"{type(exc).__name__}: {exc}", elapsed=time.monotonic() - start)


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
