"""A toy order gateway: places, amends and cancels orders against instrument metadata.

    python examples/exchange/gateway.py --port P --metadata FILE [--pidfile F] [--portfile F] [--build B]

Stdlib only, bound to 127.0.0.1. It loads metadata the way a real service too often does:
naively. A reload swaps in whatever the file holds and rebuilds its routing table in place,
so broken metadata does not crash the process; it makes orders fail (500s on a renamed
field or a zero tick, rejections on a stale duplicate, no route after a dangling market)
and turns `GET /probe` red. That is the behaviour rollout's guards must catch.

Endpoints: POST /orders, POST /orders/<id>/amend, POST /orders/<id>/cancel, GET /probe,
GET /metadata, GET /health, GET /version, POST /reload. SIGHUP reloads too; SIGTERM stops cleanly.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
import threading
import time
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Symbols present in every good version; the probe trades each of them end to end.
PROBE_SYMBOLS = ("BTC-USD", "ETH-USD")
# Integer reference prices are multiples of every sane tick, so the probe needs no rounding.
PROBE_PRICES = {"BTC-USD": Decimal(30000), "ETH-USD": Decimal(2000)}
# The build a gateway reports unless told otherwise: a parity fact the plans compare.
DEFAULT_BUILD = "1.4.2"


class Rejected(Exception):
    """An order the gateway refuses on purpose (a 4xx, not a crash)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def to_decimal(value: Any, field: str) -> Decimal:
    """Parse a price or quantity sent as a JSON number or string."""
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise Rejected(HTTPStatus.BAD_REQUEST, f"{field} is not a number: {value!r}") from None
    if not number.is_finite() or number <= 0:
        raise Rejected(HTTPStatus.BAD_REQUEST, f"{field} must be positive: {value!r}")
    return number


class Exchange:
    """The gateway's state: loaded metadata, routing table and open orders."""

    def __init__(self, metadata_path: Path) -> None:
        self.metadata_path = metadata_path
        self.lock = threading.RLock()
        self.doc: Any = None
        self.instruments: dict[str, dict[str, Any]] = {}
        self.routes: dict[str, str] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.loaded_at = 0.0
        self.last_reload_error: str | None = None

    def reload(self) -> str | None:
        """Re-read the metadata file; returns the error text if it did not load cleanly."""
        with self.lock:
            try:
                doc = json.loads(self.metadata_path.read_bytes())
            except (OSError, ValueError) as exc:
                # Unreadable or not JSON: keep serving the old version, like most services.
                self.last_reload_error = f"{type(exc).__name__}: {exc}"
                return self.last_reload_error
            try:
                # Deliberately naive: the new document is live before it is fully indexed,
                # later duplicates overwrite earlier ones, and routes are rebuilt in place.
                self.doc = doc
                self.loaded_at = time.time()
                self.instruments = {i["symbol"]: i for i in doc["instruments"]}
                self.routes.clear()
                for market in doc["markets"]:
                    instrument = self.instruments[market["instrument"]]
                    self.routes.setdefault(instrument["symbol"], market["id"])
            except Exception as exc:  # a half-loaded state is the point
                self.last_reload_error = f"{type(exc).__name__}: {exc}"
                return self.last_reload_error
            self.last_reload_error = None
            return None

    def _instrument(self, symbol: Any) -> dict[str, Any]:
        instrument = self.instruments.get(symbol) if isinstance(symbol, str) else None
        if instrument is None:
            raise Rejected(HTTPStatus.NOT_FOUND, f"unknown symbol {symbol!r}")
        if instrument["status"] != "trading":
            raise Rejected(HTTPStatus.CONFLICT, f"{symbol} is {instrument['status']}, not trading")
        return instrument

    def _check(self, instrument: dict[str, Any], price: Decimal, qty: Decimal) -> None:
        # Prices are compared in integer minor units, as matching engines do; a tick finer
        # than the precision truncates to 0 here, which is how the runtime break bites.
        precision = int(instrument["price_precision"])
        scale = Decimal(10) ** precision
        price_units = price * scale
        if price_units != price_units.to_integral_value():
            raise Rejected(HTTPStatus.BAD_REQUEST, f"price {price} has more than {precision} decimals")
        tick_units = int(Decimal(str(instrument["tick_size"])) * scale)
        if int(price_units) % tick_units:
            raise Rejected(
                HTTPStatus.BAD_REQUEST,
                f"price {price} is not a multiple of tick_size {instrument['tick_size']}",
            )
        lot = Decimal(str(instrument["lot_size"]))
        if qty < lot or qty % lot:
            raise Rejected(HTTPStatus.BAD_REQUEST, f"qty {qty} is not a multiple of lot_size {lot}")

    def _route(self, symbol: str) -> str:
        return self.routes[symbol]  # a KeyError here is a 500: the route table is incomplete

    def place(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate and accept a new order."""
        instrument = self._instrument(body.get("symbol"))
        side = body.get("side")
        if side not in ("buy", "sell"):
            raise Rejected(HTTPStatus.BAD_REQUEST, f"side must be buy or sell, not {side!r}")
        price = to_decimal(body.get("price"), "price")
        qty = to_decimal(body.get("qty"), "qty")
        self._check(instrument, price, qty)
        market = self._route(instrument["symbol"])
        with self.lock:
            order_id = f"o-{next(self.ids)}"
            order = {
                "id": order_id,
                "symbol": instrument["symbol"],
                "market": market,
                "side": side,
                "price": str(price),
                "qty": str(qty),
                "status": "open",
            }
            self.orders[order_id] = order
        return dict(order)

    def _open_order(self, order_id: str) -> dict[str, Any]:
        order = self.orders.get(order_id)
        if order is None:
            raise Rejected(HTTPStatus.NOT_FOUND, f"unknown order {order_id!r}")
        if order["status"] != "open":
            raise Rejected(HTTPStatus.CONFLICT, f"order {order_id} is {order['status']}")
        return order

    def amend(self, order_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Change an open order's price and quantity, re-validated against current metadata."""
        order = self._open_order(order_id)
        instrument = self._instrument(order["symbol"])
        price = to_decimal(body.get("price", order["price"]), "price")
        qty = to_decimal(body.get("qty", order["qty"]), "qty")
        self._check(instrument, price, qty)
        self._route(order["symbol"])
        with self.lock:
            order.update(price=str(price), qty=str(qty))
            return dict(order)

    def cancel(self, order_id: str) -> dict[str, Any]:
        """Cancel an open order; needs its market route like any other instruction."""
        order = self._open_order(order_id)
        self._route(order["symbol"])
        with self.lock:
            order["status"] = "cancelled"
            return dict(order)

    def probe(self) -> dict[str, Any]:
        """Place, amend and cancel one order per probe symbol; names every step that failed."""
        errors: list[str] = []
        checked: list[str] = []
        for symbol in PROBE_SYMBOLS:
            step = "place"
            try:
                instrument = self.instruments.get(symbol) or {}
                lot = Decimal(str(instrument.get("lot_size", 1)))
                price = PROBE_PRICES[symbol]
                order = self.place({"symbol": symbol, "side": "buy", "price": str(price), "qty": str(lot * 10)})
                step = "amend"
                self.amend(order["id"], {"price": str(price - 1), "qty": str(lot * 20)})
                step = "cancel"
                self.cancel(order["id"])
                # Guards probe every second for the length of a rollout; keep no history.
                with self.lock:
                    self.orders.pop(order["id"], None)
                checked.append(symbol)
            except Rejected as exc:
                errors.append(f"{symbol} {step}: {int(exc.status)} {exc.message}")
            except Exception as exc:  # the probe reports, it never crashes
                errors.append(f"{symbol} {step}: 500 {type(exc).__name__}: {exc}")
        return {"ok": not errors, "version": self.version, "checked": checked, "errors": errors}

    @property
    def version(self) -> Any:
        """The loaded document's `version`, if it has one."""
        return self.doc.get("version") if isinstance(self.doc, dict) else None


class Handler(BaseHTTPRequestHandler):
    """JSON in, JSON out; every failure is a JSON error body."""

    exchange: Exchange
    build = DEFAULT_BUILD
    verbose = False
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        if self.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw)
        except ValueError:
            raise Rejected(HTTPStatus.BAD_REQUEST, "body is not JSON") from None
        if not isinstance(body, dict):
            raise Rejected(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    def _dispatch(self, method: str) -> None:
        ex = self.exchange
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        try:
            if method == "GET" and parts == ["health"]:
                self._send(
                    200,
                    {
                        "ok": True,
                        "pid": os.getpid(),
                        "build": self.build,
                        "version": ex.version,
                        "loaded_at": ex.loaded_at,
                        "reload_error": ex.last_reload_error,
                    },
                )
            elif method == "GET" and parts == ["version"]:
                self._send(200, {"build": self.build, "metadata_version": ex.version})
            elif method == "GET" and parts == ["metadata"]:
                self._send(200, ex.doc)
            elif method == "GET" and parts == ["probe"]:
                result = ex.probe()
                self._send(200 if result["ok"] else 503, result)
            elif method == "POST" and parts == ["reload"]:
                error = ex.reload()
                self._send(
                    500 if error else 200,
                    {"ok": error is None, "version": ex.version, "error": error},
                )
            elif method == "POST" and parts == ["orders"]:
                self._send(201, ex.place(self._body()))
            elif method == "POST" and len(parts) == 3 and parts[0] == "orders" and parts[2] == "amend":
                self._send(200, ex.amend(parts[1], self._body()))
            elif method == "POST" and len(parts) == 3 and parts[0] == "orders" and parts[2] == "cancel":
                self._send(200, ex.cancel(parts[1]))
            else:
                self._send(404, {"error": f"no route for {method} {self.path}"})
        except Rejected as exc:
            self._send(int(exc.status), {"error": exc.message})
        except Exception as exc:  # a naive service answers 500 and carries on
            self._send(500, {"error": "internal error", "detail": f"{type(exc).__name__}: {exc}"})

    def do_GET(self) -> None:  # stdlib naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # stdlib naming
        self._dispatch("POST")


def serve(
    port: int,
    metadata: Path,
    pidfile: Path | None,
    portfile: Path | None,
    verbose: bool,
    build: str = DEFAULT_BUILD,
) -> int:
    """Run until SIGTERM or SIGINT."""
    exchange = Exchange(metadata)
    error = exchange.reload()
    if exchange.doc is None:
        print(f"gateway: cannot load {metadata}: {error}", file=sys.stderr)
        return 2
    handler = type("BoundHandler", (Handler,), {"exchange": exchange, "verbose": verbose, "build": build})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True

    def stop(signum: int, frame: object) -> None:
        # shutdown() blocks until serve_forever returns, so it must not run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    def reload(signum: int, frame: object) -> None:
        threading.Thread(target=exchange.reload, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    # Written after bind, so a reader that sees the port can connect to it.
    if portfile:
        portfile.write_text(f"{server.server_address[1]}\n")
    if pidfile:
        pidfile.write_text(f"{os.getpid()}\n")
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        for path in (pidfile, portfile):
            if path:
                path.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="toy order gateway (127.0.0.1 only)")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--metadata", type=Path, required=True)
    parser.add_argument("--pidfile", type=Path)
    parser.add_argument("--portfile", type=Path, help="where to write the bound port")
    parser.add_argument("--verbose", action="store_true", help="log one line per request")
    parser.add_argument("--build", default=DEFAULT_BUILD, help="the gateway build it reports (GET /version)")
    args = parser.parse_args(argv)
    return serve(args.port, args.metadata, args.pidfile, args.portfile, args.verbose, args.build)


if __name__ == "__main__":
    raise SystemExit(main())
