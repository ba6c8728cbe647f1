"""What one request costs dispatch's API process, in CPU: the app called in-process, no network.

    python -m loadtests.api_cost [--rounds 8] [--per-round 200] [--out api_cost]

At 200 orders/s the API process is the largest consumer of the box (~3.4 ms of CPU per order
placed, two requests and the feed), and the dispatch-latency benchmark's figures swing with
the host. This measures the requests alone: the dispatch app as ``polder up`` runs it (its
matcher in a process of its own, which also relays the outbox) on an embedded Postgres and
broker, its ASGI callable called directly by this process (no sockets, no HTTP parser: what
is left is the app), on uvloop as the service runs. Per request, in process time of this
process (the app's CPU, not the matcher's, Postgres' or the broker's):

* ``bare``: a POST route added for the measurement that reads nothing and answers 201: the
  middleware, routing and response of every request;
* ``dependencies``: a probe route with ``POST /v1/orders``' dependencies (the bearer token,
  the body model, the Idempotency-Key header) and nothing else;
* ``POST /v1/orders``: a ride order placed with its Idempotency-Key (quote, surge, the
  order, its event and the key's answer in one statement);
* ``GET /v1/orders/{id}``: the customer reading an order of their own;
* ``POST /v1/drivers/{id}/status``: a driver going online and offline in turn (the worker's
  row, its event).
* ``POST /v1/offers/{id}/accept``: a driver accepting its offer (the order, the offer and the
  worker read unlocked, then one guarded statement: the trip, three rows moved, three
  events). Before each turn, untimed: as many drivers go online, each at the pickup of an
  order placed for it, and the matcher offers them (its own process; with
  ``matcher="none"`` this process runs the batches).

The modes take turns in rounds, so a drift of the host's speed hits them alike; each figure
is the median over the rounds of a round's CPU per request. Writes
``loadtests/results/<out>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shlex
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import uvloop
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from loadtests._dispatch_load import position_event
from loadtests._report import host_loop_s, host_row, table, write_result
from loadtests._system import infrastructure, stop_on_sigterm
from polder.common.auth import CurrentPrincipal, issue_token
from polder.common.bus import Bus
from polder.common.logging import configure_logging
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DRIVER_LOCATIONS
from polder.dispatch.api import IdempotencyKey
from polder.dispatch.main import MatcherMode, build_app
from polder.dispatch.models import OrderIn

CENTRE = (52.3676, 4.9041)
ORDER = {
    "kind": "ride",
    "pickup": {"lat": CENTRE[0] + 0.002, "lng": CENTRE[1]},
    "dropoff": {"lat": CENTRE[0] + 0.03, "lng": CENTRE[1] + 0.02},
}
BARE, PROBE = "/bench/bare", "/bench/dependencies"
ACCEPT = "POST /v1/offers/{id}/accept"
MODES = (
    "bare",
    "dependencies",
    "POST /v1/orders",
    "GET /v1/orders/{id}",
    "POST /v1/drivers/{id}/status",
    ACCEPT,
)
OFFERS_WAIT_S = 60.0


@dataclass(frozen=True, slots=True)
class Options:
    rounds: int
    per_round: int
    out: str


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtests.api_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8, help="turns of every mode (default 8)")
    p.add_argument("--per-round", type=int, default=200, help="requests a mode makes a turn")
    p.add_argument("--out", default="api_cost")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.per_round < 1:
        p.error("--rounds and --per-round must be at least 1")
    return Options(a.rounds, a.per_round, a.out)


def with_probes(app: FastAPI) -> FastAPI:
    """The app with the two probe routes (``bare`` and ``dependencies``) added."""

    @app.post(BARE, include_in_schema=False)
    async def bare() -> JSONResponse:
        return JSONResponse({"ok": True}, status_code=201)

    @app.post(PROBE, include_in_schema=False)
    async def dependencies(
        body: OrderIn, principal: CurrentPrincipal, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        return JSONResponse({"ok": True}, status_code=201)

    return app


Call = Callable[[str, str, str, Any, dict[str, str]], Awaitable[tuple[int, bytes]]]


def caller(app: FastAPI) -> Call:
    """An HTTP request to ``app`` as its ASGI callable sees one from uvicorn."""

    async def call(
        method: str, path: str, token: str, body: Any, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        raw = orjson.dumps(body) if body is not None else b""
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "server": ("127.0.0.1", 8002),
            "client": ("127.0.0.1", 50000), "state": {},
            "headers": [
                (b"host", b"127.0.0.1:8002"),
                (b"authorization", b"Bearer " + token.encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in headers.items()),
            ],
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return {"type": "http.disconnect"}

        status, chunks = 0, []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await app(scope, receive, send)
        return status, b"".join(chunks)

    return call


async def measure(
    settings: Settings, opts: Options, matcher: MatcherMode = "process"
) -> dict[str, Any]:
    """Every mode ``opts.rounds`` times in turn; CPU µs per request, median over the rounds.
    Every answer is checked (status and, for orders, the order's id)."""
    app = with_probes(build_app(settings, matcher=matcher))
    call = caller(app)
    customers = [issue_token(settings, "customer", f"cust-{i}") for i in range(50)]
    drivers = [(f"drv-{i}", issue_token(settings, "driver", f"drv-{i}")) for i in range(50)]
    placed: list[tuple[str, str]] = []  # (order id, its customer's token)
    online: dict[str, bool] = {}
    offers: list[tuple[str, str, str]] = []  # pending: (offer id, its driver's token, order id)
    accepted: list[str] = []  # trip ids
    turns = itertools.count()
    positions = Bus(settings, SchemaRegistry.load(), source="polder/location")

    async def expect(want: int, method: str, path: str, token: str, body: Any = None,
                     headers: dict[str, str] | None = None) -> bytes:
        status, answer = await call(method, path, token, body, headers or {})
        if status != want:
            raise RuntimeError(f"{method} {path}: {status} {answer[:300]!r}")
        return answer

    async def request(mode: str, i: int) -> None:
        key = {"Idempotency-Key": uuid.uuid4().hex}
        if mode == "bare":
            await expect(201, "POST", BARE, customers[i % 50], ORDER, key)
        elif mode == "dependencies":
            await expect(201, "POST", PROBE, customers[i % 50], ORDER, key)
        elif mode == "POST /v1/orders":
            token = customers[i % 50]
            answer = orjson.loads(await expect(201, "POST", "/v1/orders", token, ORDER, key))
            placed.append((answer["order_id"], token))
        elif mode == "GET /v1/orders/{id}":
            order_id, token = placed[i % len(placed)]
            answer = orjson.loads(await expect(200, "GET", f"/v1/orders/{order_id}", token))
            if answer["order_id"] != order_id:
                raise RuntimeError(f"asked for {order_id}, got {answer['order_id']}")
        elif mode == ACCEPT:
            offer_id, token, order_id = offers.pop()
            answer = orjson.loads(await expect(200, "POST", f"/v1/offers/{offer_id}/accept",
                                               token))
            if answer["order_id"] != order_id:
                raise RuntimeError(f"accepted {offer_id} of {order_id}, got {answer}")
            accepted.append(answer["trip_id"])
        else:
            driver_id, token = drivers[i % 50]
            status = "offline" if online.get(driver_id) else "online"
            await expect(200, "POST", f"/v1/drivers/{driver_id}/status", token,
                         {"status": status})
            online[driver_id] = status == "online"

    async def prepare(mode: str, n: int) -> None:
        """Untimed, before a turn of ``mode``: for accepts, ``n`` new drivers online, an order
        at each one's position, and an offer for each of those drivers."""
        if mode != ACCEPT:
            return
        turn = next(turns)
        fresh = {f"acc-{turn}-{i}": issue_token(settings, "driver", f"acc-{turn}-{i}")
                 for i in range(n)}
        now = datetime.now(UTC)
        # Each driver waits at its own order's pickup (spread over ~2 km), so that the orders'
        # nearest drivers differ and one batch offers them all.
        spots = [(CENTRE[0] + 0.001 * (i % 20), CENTRE[1] + 0.0015 * (i // 20)) for i in range(n)]
        for (driver_id, token), (lat, lng) in zip(fresh.items(), spots, strict=True):
            await expect(200, "POST", f"/v1/drivers/{driver_id}/status", token,
                         {"status": "online"})
            event = position_event(positions, driver_id, lat, lng, int(now.timestamp() * 1000), now)
            await positions.publish(DRIVER_LOCATIONS, driver_id, event)
        for i, (lat, lng) in enumerate(spots):
            await expect(201, "POST", "/v1/orders", customers[i % 50],
                         {**ORDER, "pickup": {"lat": lat, "lng": lng}},
                         {"Idempotency-Key": uuid.uuid4().hex})
        rt = app.state.runtime
        deadline = time.monotonic() + OFFERS_WAIT_S
        while True:
            if matcher == "none":  # no matcher process: this one runs the batches
                await rt.matcher.run_once(datetime.now(UTC))
            rows = await rt.handlers.pool.fetch(
                "SELECT offer_id, driver_id, order_id FROM offers "
                "WHERE status = 'pending' AND driver_id = ANY($1::text[])", list(fresh))
            if len(rows) == n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(rows)} of {n} drivers offered in {OFFERS_WAIT_S:.0f} s")
            await asyncio.sleep(0.2)
        offers[:] = [(str(r["offer_id"]), fresh[r["driver_id"]], str(r["order_id"]))
                     for r in rows]

    per_round: dict[str, list[float]] = {mode: [] for mode in MODES}
    async with app.router.lifespan_context(app):
        await positions.start()
        try:
            for mode in MODES:  # warm up (and give GET orders to read)
                warm_up = max(20, opts.per_round // 4)
                await prepare(mode, warm_up)
                for i in range(warm_up):
                    await request(mode, i)
            for _ in range(opts.rounds):
                for mode in MODES:
                    await prepare(mode, opts.per_round)
                    started = time.process_time()
                    for i in range(opts.per_round):
                        await request(mode, i)
                    per_round[mode].append((time.process_time() - started) / opts.per_round)
        finally:
            await positions.stop()
    return {
        "cpu_us_per_request": {
            mode: {
                "median": statistics.median(v) * 1e6,
                "min": min(v) * 1e6,
                "max": max(v) * 1e6,
            }
            for mode, v in per_round.items()
        },
        "requests": opts.rounds * opts.per_round * len(MODES),
        "orders_placed": len(placed),
        "offers_accepted": len(accepted),
    }


def render(opts: Options, doc: dict[str, Any]) -> str:
    rows = [
        (f"{mode}: median (min–max) of {opts.rounds} rounds",
         f"{q['median']:,.0f} µs ({q['min']:,.0f}–{q['max']:,.0f})")
        for mode, q in doc["cpu_us_per_request"].items()
    ]
    if "host_loop_s" in doc:
        rows.append(host_row(doc["host_loop_s"]))
    return table(
        f"Dispatch API: CPU of this process per request, in-process ASGI calls, "
        f"{opts.per_round} requests a mode a round",
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = "python -m loadtests.api_cost " + shlex.join(sys.argv[1:] if argv is None else argv)
    configure_logging("WARNING", json=False)
    stop_on_sigterm()  # the infrastructure is stopped and its directory removed then too
    with infrastructure() as settings:
        doc = uvloop.run(measure(settings.model_copy(update={"log_level": "WARNING"}), opts))
    doc["host_loop_s"] = host_loop_s()
    doc["options"] = asdict(opts)
    print("\n" + render(opts, doc) + "\n", flush=True)
    print(f"wrote {write_result(opts.out, command.strip(), doc)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
