"""A tiny client for one gateway, used by plan commands instead of curl.

    python examples/exchange/ctl.py reload|probe|metadata|health --port P

Prints the JSON answer. Exit 0 when the gateway says ok (any 2xx), 1 when it answers
with an error (a red probe, a failed reload), 2 when it cannot be reached in 2 seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import urllib.error
import urllib.request

TIMEOUT = 2.0
ROUTES = {
    "reload": ("POST", "/reload"),
    "probe": ("GET", "/probe"),
    "metadata": ("GET", "/metadata"),
    "health": ("GET", "/health"),
}


def call(command: str, port: int, timeout: float = TIMEOUT) -> tuple[int, bytes]:
    """HTTP status and body of one command against 127.0.0.1:port."""
    method, path = ROUTES[command]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(ROUTES))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=TIMEOUT)
    args = parser.parse_args(argv)
    try:
        status, body = call(args.command, args.port, args.timeout)
    except OSError as exc:
        print(f"ctl: 127.0.0.1:{args.port} {args.command}: {exc}", file=sys.stderr)
        return 2
    # The served document is printed byte for byte, so a read-back hashes what was served.
    text = body.decode("utf-8", errors="replace")
    if args.command != "metadata":
        with contextlib.suppress(ValueError):
            text = json.dumps(json.loads(body), indent=2)
    print(text)
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    raise SystemExit(main())
