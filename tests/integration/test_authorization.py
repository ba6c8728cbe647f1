"""The authorization matrix, generated from the routes: every route of every service, called
by every kind of caller, against real resources owned by driver A and customer A.

* A route the table below does not know fails the test: a new route cannot ship unreviewed.
* Without a token every route answers 401.
* Every caller the table does not allow gets 403 or 404 — and the resource is unchanged.
* Every caller it allows on a read gets through (not 401/403/404).
* The two WebSockets refuse another driver's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute

from polder.billing.main import build_app as build_billing
from polder.common.auth import issue_token
from polder.common.envelope import format_time
from polder.common.settings import Settings
from polder.dispatch.main import build_app as build_dispatch
from polder.location.main import build_app as build_location
from tests.conftest import eventually
from tests.integration.test_billing import billing_service
from tests.integration.test_dispatch import CENTRE, running
from tests.support import serve

pytestmark = pytest.mark.integration

# The callers: the owners of the resources, strangers of each role, and an operator.
DRIVER_A, DRIVER_B = ("driver", "drv-a"), ("driver", "drv-b")
CUSTOMER_A, CUSTOMER_B = ("customer", "cust-a"), ("customer", "cust-b")
OPERATOR = ("operator", "ops")
CALLERS = (DRIVER_A, DRIVER_B, CUSTOMER_A, CUSTOMER_B, OPERATOR)
ANY_DRIVER, ANY_CUSTOMER = frozenset({DRIVER_A, DRIVER_B}), frozenset({CUSTOMER_A, CUSTOMER_B})

# (service, method, path template) → who may call it. Resources belong to driver A and
# customer A; the trip is driver A's ride for customer A.
ALLOWED: dict[tuple[str, str, str], frozenset[tuple[str, str]]] = {
    ("location", "POST", "/v1/drivers/{driver_id}/locations"): frozenset({DRIVER_A}),
    ("location", "WS", "/v1/drivers/{driver_id}/locations/ws"): frozenset({DRIVER_A}),
    ("location", "GET", "/v1/drivers/nearby"): frozenset({OPERATOR}),
    ("location", "GET", "/v1/supply"): frozenset({OPERATOR}),
    ("location", "GET", "/v1/drivers/{driver_id}/export"): frozenset({DRIVER_A, OPERATOR}),
    ("dispatch", "POST", "/v1/drivers/{driver_id}/status"): frozenset({DRIVER_A}),
    ("dispatch", "GET", "/v1/drivers/{driver_id}/offers"): frozenset({DRIVER_A}),
    ("dispatch", "WS", "/v1/drivers/{driver_id}/feed"): frozenset({DRIVER_A}),
    ("dispatch", "POST", "/v1/offers/{offer_id}/accept"): frozenset({DRIVER_A}),
    ("dispatch", "POST", "/v1/offers/{offer_id}/decline"): frozenset({DRIVER_A}),
    ("dispatch", "POST", "/v1/trips/{trip_id}/events"): frozenset({DRIVER_A}),
    ("dispatch", "POST", "/v1/orders"): ANY_CUSTOMER,
    # driver A only holds an offer for this order: an order is shown to its assigned driver
    ("dispatch", "GET", "/v1/orders/{order_id}"): frozenset({CUSTOMER_A, OPERATOR}),
    ("dispatch", "POST", "/v1/orders/{order_id}/cancel"): frozenset({CUSTOMER_A, OPERATOR}),
    ("dispatch", "GET", "/v1/orders/{order_id}/decisions"): frozenset({OPERATOR}),
    ("billing", "GET", "/v1/drivers/{driver_id}/statement"): frozenset({DRIVER_A, OPERATOR}),
    ("billing", "GET", "/v1/drivers/{driver_id}/export"): frozenset({DRIVER_A, OPERATOR}),
    ("billing", "GET", "/v1/trips/{trip_id}/fare"): frozenset({DRIVER_A, CUSTOMER_A, OPERATOR}),
    ("billing", "GET", "/v1/reports/waiting"): frozenset({OPERATOR}),
}
PUBLIC = {"/healthz", "/readyz", "/metrics"}  # no token, no data about anyone


def routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path) of every API and WebSocket route, included routers unfolded."""

    def walk(items: list[Any]) -> Iterator[Any]:
        for r in items:
            if hasattr(r, "original_router"):
                yield from walk(r.original_router.routes)
            else:
                yield r

    for r in walk(app.routes):
        if isinstance(r, APIWebSocketRoute):
            yield "WS", r.path
        elif isinstance(r, APIRoute):
            for method in sorted(r.methods):
                yield method, r.path


@dataclass
class World:
    bases: dict[str, str]
    ids: dict[str, str]
    settings: Settings
    client: httpx.AsyncClient

    def url(self, service: str, path: str) -> str:
        return self.bases[service] + path.format(**self.ids)

    async def call(
        self, service: str, method: str, path: str, caller: tuple[str, str] | None
    ) -> httpx.Response:
        headers = {"Idempotency-Key": f"authz-{caller}-{method}-{path}"}
        if caller is not None:
            headers["authorization"] = f"Bearer {issue_token(self.settings, *caller)}"
        return await self.client.request(
            method, self.url(service, path), headers=headers, **body_for(method, path)
        )


def body_for(method: str, path: str) -> dict[str, Any]:
    """A request that would succeed for an allowed caller, so a refusal is about who asks."""
    if method == "GET":
        if path == "/v1/drivers/nearby":
            return {"params": {"lat": CENTRE[0], "lng": CENTRE[1], "radius_m": 500}}
        if path == "/v1/reports/waiting":
            return {"params": {"group_by": "driver"}}
        return {}
    bodies: dict[str, Any] = {
        "/v1/drivers/{driver_id}/locations": {
            "pings": [
                {"lat": CENTRE[0], "lng": CENTRE[1], "recorded_at": format_time(datetime.now(UTC))}
            ]
        },
        "/v1/drivers/{driver_id}/status": {"status": "break"},
        "/v1/trips/{trip_id}/events": {"type": "arrived_pickup"},
        "/v1/orders": {
            "kind": "ride",
            "pickup": {"lat": CENTRE[0], "lng": CENTRE[1]},
            "dropoff": {"lat": CENTRE[0] + 0.01, "lng": CENTRE[1]},
        },
    }
    return {"json": bodies[path]} if path in bodies else {}


@contextlib.asynccontextmanager
async def world(settings: Settings) -> AsyncIterator[World]:
    async with (
        running(settings) as d,
        billing_service(settings) as b,
        serve(build_location(settings)) as location_base,
        httpx.AsyncClient(timeout=15) as client,
    ):
        # Driver A drove customer A (trip completed and billed), then got an offer for
        # customer A's second order, still pending.
        await d.online("drv-a", *CENTRE)
        await d.order("cust-a")
        await d.batch()
        [offer] = await d.offers("drv-a")
        r = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", "drv-a")
        assert r.status_code == 200, r.text
        trip_id = r.json()["trip_id"]
        for step in ("arrived_pickup", "picked_up", "arrived_dropoff", "completed"):
            r = await d.call(
                "POST", f"/v1/trips/{trip_id}/events", "driver", "drv-a", json={"type": step}
            )
            assert r.status_code == 200, r.text
        second = await d.order("cust-a")
        await d.batch()
        [pending] = await d.offers("drv-a")

        async def fare() -> int:
            r = await b.get(f"/v1/trips/{trip_id}/fare", "operator", "ops")
            return r.status_code

        await eventually(fare, until=lambda code: code == 200)
        ids = {
            "driver_id": "drv-a",
            "order_id": second["order_id"],
            "trip_id": trip_id,
            "offer_id": pending["offer_id"],
        }
        bases = {"location": location_base, "dispatch": d.base, "billing": b.base}
        yield World(bases, ids, settings, client)


def all_routes(settings: Settings) -> set[tuple[str, str, str]]:
    apps = {
        "location": build_location(settings),
        "dispatch": build_dispatch(settings, matcher="none"),
        "billing": build_billing(settings),
    }
    return {(s, m, p) for s, app in apps.items() for m, p in routes(app) if p not in PUBLIC}


def test_the_table_covers_every_route(settings: Settings) -> None:
    api = {r for r in all_routes(settings) if r[2].startswith("/v1/")}
    assert api == set(ALLOWED), {
        "routes missing from the table": api - set(ALLOWED),
        "table rows with no route": set(ALLOWED) - api,
    }
    assert all_routes(settings) == api, "a route outside /v1/ that is not public"


async def test_every_route_refuses_whoever_may_not_call_it(settings: Settings) -> None:
    async with world(settings) as w:
        http = sorted(k for k in ALLOWED if k[1] != "WS")
        for service, method, path in http:
            r = await w.call(service, method, path, None)
            assert r.status_code == 401, (service, method, path, r.status_code)
        for service, method, path in http:
            for caller in CALLERS:
                if caller in ALLOWED[(service, method, path)]:
                    continue
                r = await w.call(service, method, path, caller)
                assert r.status_code in (403, 404), (path, method, caller, r.status_code, r.text)
        # nothing a stranger sent changed anything
        order = (await w.call("dispatch", "GET", "/v1/orders/{order_id}", OPERATOR)).json()
        assert order["status"] == "offered"
        offers = await w.call("dispatch", "GET", "/v1/drivers/{driver_id}/offers", DRIVER_A)
        assert [o["offer_id"] for o in offers.json()["offers"]] == [w.ids["offer_id"]]
        # and every allowed reader gets through
        for service, method, path in http:
            if method != "GET":
                continue
            for caller in ALLOWED[(service, method, path)]:
                r = await w.call(service, method, path, caller)
                assert r.status_code not in (401, 403, 404), (path, caller, r.status_code, r.text)

        # the WebSockets: another driver's token gets the error and a 4403 close, no data
        for service, _, path in (k for k in ALLOWED if k[1] == "WS"):
            url = w.url(service, path).replace("http", "ws", 1)
            token = issue_token(w.settings, *DRIVER_B)
            async with websockets.connect(f"{url}?token={token}") as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), timeout=5))
                assert first["error"]["code"] == "forbidden", first
                with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_unknown_body_fields_are_refused(settings: Settings) -> None:
    """A misspelt field is an error, not silently ignored: `{"statsu": ...}` must not pass."""
    async with world(settings) as w:
        posts = [k for k in ALLOWED if k[1] == "POST" and body_for("POST", k[2])]
        assert len(posts) == 4
        for service, method, path in posts:
            [owner, *_] = sorted(ALLOWED[(service, method, path)])
            body = {**body_for(method, path)["json"], "surprise": 1}
            headers = {
                "authorization": f"Bearer {issue_token(w.settings, *owner)}",
                "Idempotency-Key": f"unknown-{path}",
            }
            r = await w.client.post(w.url(service, path), json=body, headers=headers)
            assert r.status_code == 422, (path, r.status_code, r.text)
            assert "surprise" in r.text, r.text
