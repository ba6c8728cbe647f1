"""The dispatch service for real: orders, offers, matching and trips on the broker and Postgres.

Batches are driven by the test (``matcher.run_once``) so each step is deterministic; the
position stream, the database, the outbox and the topics are all real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import websockets

from polder.common.auth import issue_token
from polder.common.bus import Bus
from polder.common.deferred import Tx
from polder.common.envelope import format_time, parse_time
from polder.common.retention import cut_for, delete_before
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DRIVER_EVENTS, DRIVER_LOCATIONS, ORDERS
from polder.dispatch import matcher as matcher_module
from polder.dispatch.domain.availability import Availability
from polder.dispatch.domain.states import Cause, IllegalTransition
from polder.dispatch.handlers import after_commit
from polder.dispatch.main import build_app
from polder.dispatch.retention import DecisionRetention
from polder.dispatch.runtime import DispatchRuntime
from polder.dispatch.transitions import Rows, lock_many
from tests.conftest import eventually
from tests.support import read_topic, serve

pytestmark = pytest.mark.integration

CENTRE = (52.3676, 4.9041)


class Dispatch:
    def __init__(self, base: str, rt: DispatchRuntime, client: httpx.AsyncClient, bus: Bus) -> None:
        self.base = base
        self.rt = rt
        self.client = client
        self.bus = bus
        self.settings = rt.settings

    def auth(self, role: str, sub: str) -> dict[str, str]:
        return {"authorization": f"Bearer {issue_token(self.settings, role, sub)}"}

    async def call(self, method: str, path: str, role: str, sub: str, **kw: Any) -> httpx.Response:
        headers = {**self.auth(role, sub), **kw.pop("headers", {})}
        return await self.client.request(method, f"{self.base}{path}", headers=headers, **kw)

    async def online(self, driver: str, lat: float, lng: float) -> None:
        r = await self.call(
            "POST", f"/v1/drivers/{driver}/status", "driver", driver, json={"status": "online"}
        )
        assert r.status_code == 200, r.text
        await self.position(driver, lat, lng)

    async def position(self, driver: str, lat: float, lng: float) -> None:
        now = datetime.now(UTC)
        event = self.bus.event(
            "polder.location.pings_recorded.v1",
            driver,
            {
                "driver_id": driver,
                "received_at": format_time(now),
                "pings": [
                    {
                        "lat": lat,
                        "lng": lng,
                        "recorded_at_ms": int(now.timestamp() * 1000),
                    }
                ],
            },
            now,
        )
        await self.bus.publish(DRIVER_LOCATIONS, driver, event)

        async def seen() -> Any:
            return self.rt.matcher.positions.get(driver)

        await eventually(seen, until=lambda p: p is not None and (p.lat, p.lng) == (lat, lng))

    async def order(
        self,
        customer: str,
        *,
        dlat: float = 0.002,
        kind: str = "ride",
        key: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        body = {
            "kind": kind,
            "pickup": {"lat": CENTRE[0] + dlat, "lng": CENTRE[1]},
            "dropoff": {"lat": CENTRE[0] + 0.03, "lng": CENTRE[1] + 0.02},
            **extra,
        }
        r = await self.call(
            "POST",
            "/v1/orders",
            "customer",
            customer,
            json=body,
            headers={"Idempotency-Key": key or uuid.uuid4().hex},
        )
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        return created

    async def batch(self) -> Any:
        return await self.rt.matcher.run_once(datetime.now(UTC))

    async def offers(self, driver: str) -> list[dict[str, Any]]:
        r = await self.call("GET", f"/v1/drivers/{driver}/offers", "driver", driver)
        assert r.status_code == 200, r.text
        offers: list[dict[str, Any]] = r.json()["offers"]
        return offers

    async def get_order(
        self, order_id: str, role: str = "operator", sub: str = "ops"
    ) -> dict[str, Any]:
        r = await self.call("GET", f"/v1/orders/{order_id}", role, sub)
        assert r.status_code == 200, r.text
        order: dict[str, Any] = r.json()
        return order

    async def worker_status(self, driver: str) -> str:
        status: str = await self.rt.handlers.pool.fetchval(
            "SELECT status FROM workers WHERE driver_id = $1", driver
        )
        return status


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Dispatch]:
    app = build_app(settings, matcher="none")
    bus = Bus(settings, SchemaRegistry.load(), source="test")
    await bus.start()
    try:
        async with serve(app) as base, httpx.AsyncClient(timeout=15) as client:
            yield Dispatch(base, app.state.runtime, client, bus)
    finally:
        await bus.stop()


@pytest.fixture
async def d(settings: Settings) -> AsyncIterator[Dispatch]:
    async with running(settings) as dispatch:
        yield dispatch


async def test_a_ride_from_order_to_completion(d: Dispatch) -> None:
    await d.online("drv-1", *CENTRE)
    created = await d.order("cust-1")
    assert created["status"] == "searching"
    assert created["quote"]["currency"] == "EUR" and created["quote"]["amount_minor"] > 0
    outcome = await d.batch()
    assert outcome.offered == 1
    [offer] = await d.offers("drv-1")
    assert offer["order_id"] == created["order_id"] and offer["kind"] == "ride"
    assert 0 < offer["pickup_distance_m"] < 1000 and offer["pickup_eta_s"] > 0
    assert (
        offer["estimated_pay"]["currency"] == "EUR" and offer["estimated_pay"]["amount_minor"] > 0
    )
    assert (await d.get_order(created["order_id"]))["status"] == "offered"

    r = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", "drv-1")
    assert r.status_code == 200, r.text
    trip_id = r.json()["trip_id"]
    assert r.json()["order_id"] == created["order_id"]
    order = await d.get_order(created["order_id"], "customer", "cust-1")
    assert (
        order["status"] == "assigned"
        and order["driver_id"] == "drv-1"
        and order["pickup_eta_s"] > 0
    )

    steps = [
        ("arrived_pickup", "at_pickup", "driver_arrived"),
        ("picked_up", "on_trip", "in_progress"),
        ("arrived_dropoff", "at_dropoff", "in_progress"),
        ("completed", "idle", "completed"),
    ]
    for step, driver_status, order_status in steps:
        r = await d.call(
            "POST", f"/v1/trips/{trip_id}/events", "driver", "drv-1", json={"type": step}
        )
        assert r.status_code == 200, r.text
        assert (r.json()["driver_status"], r.json()["order_status"]) == (
            driver_status,
            order_status,
        )

    # Billing depends on this stream: every state change of the driver, in order, numbered.
    events = await read_topic(d.settings, DRIVER_EVENTS, until=lambda rs: len(rs) >= 7)
    mine = [r.event.data for r in events if r.key == "drv-1"]
    assert [e["to"] for e in mine] == [
        "idle",
        "offered",
        "en_route_pickup",
        "at_pickup",
        "on_trip",
        "at_dropoff",
        "idle",
    ]
    assert [e["seq"] for e in mine] == list(range(1, 8))
    assert all(e["trip_id"] == trip_id for e in mine[2:])
    orders = await read_topic(d.settings, ORDERS, until=lambda rs: len(rs) >= 7)
    assert orders[0].event.type == "polder.order.placed.v1"
    assert [r.event.data["to"] for r in orders[1:]] == [
        "offered",
        "assigned",
        "driver_arrived",
        "in_progress",
        "in_progress",
        "completed",
    ]


async def test_order_creation_is_idempotent(d: Dispatch) -> None:
    first = await d.order("cust-2", key="k-1")
    again = await d.order("cust-2", key="k-1")
    assert again == first
    other_body = await d.call(
        "POST",
        "/v1/orders",
        "customer",
        "cust-2",
        headers={"Idempotency-Key": "k-1"},
        json={
            "kind": "ride",
            "pickup": {"lat": 52.1, "lng": 4.1},
            "dropoff": {"lat": 52.2, "lng": 4.2},
        },
    )
    assert (
        other_body.status_code == 422
        and other_body.json()["error"]["code"] == "idempotency_key_reused"
    )
    missing = await d.call(
        "POST",
        "/v1/orders",
        "customer",
        "cust-2",
        json={
            "kind": "ride",
            "pickup": {"lat": 52.1, "lng": 4.1},
            "dropoff": {"lat": 52.2, "lng": 4.2},
        },
    )
    assert missing.status_code == 400
    # another customer may use the same key for their own order
    theirs = await d.order("cust-3", key="k-1")
    assert theirs["order_id"] != first["order_id"]
    count = await d.rt.handlers.pool.fetchval("SELECT count(*) FROM orders")
    assert count == 2


async def test_concurrent_retries_of_one_order_create_one_order(d: Dispatch) -> None:
    results = await asyncio.gather(*(d.order("cust-4", key="same") for _ in range(5)))
    assert len({r["order_id"] for r in results}) == 1
    assert await d.rt.handlers.pool.fetchval("SELECT count(*) FROM orders") == 1


async def test_no_one_reads_or_acts_on_what_is_not_theirs(d: Dispatch) -> None:
    await d.online("drv-a", *CENTRE)
    created = await d.order("cust-a")
    await d.batch()
    [offer] = await d.offers("drv-a")
    oid = created["order_id"]
    assert (await d.call("GET", f"/v1/orders/{oid}", "customer", "cust-b")).status_code == 404
    assert (
        await d.call("POST", f"/v1/orders/{oid}/cancel", "customer", "cust-b")
    ).status_code == 404
    assert (await d.call("GET", f"/v1/orders/{oid}", "driver", "drv-b")).status_code == 404
    assert (
        await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", "drv-b")
    ).status_code == 404
    assert (
        await d.call("POST", f"/v1/offers/{offer['offer_id']}/decline", "driver", "drv-b")
    ).status_code == 404
    assert (await d.call("GET", "/v1/drivers/drv-a/offers", "driver", "drv-b")).status_code == 403
    assert (
        await d.call(
            "POST", "/v1/drivers/drv-a/status", "driver", "drv-b", json={"status": "offline"}
        )
    ).status_code == 403
    assert (
        await d.call("GET", f"/v1/orders/{oid}/decisions", "customer", "cust-a")
    ).status_code == 403
    assert (
        await d.call("GET", f"/v1/orders/{oid}/decisions", "driver", "drv-a")
    ).status_code == 403
    assert (await d.call("POST", "/v1/orders", "driver", "drv-a", json={})).status_code in (
        403,
        422,
    )
    # the rightful parties still can
    assert (await d.call("GET", f"/v1/orders/{oid}", "customer", "cust-a")).status_code == 200
    assert (
        await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", "drv-a")
    ).status_code == 200
    assert (await d.call("GET", f"/v1/orders/{oid}", "driver", "drv-a")).status_code == 200


async def test_decline_redispatches_to_someone_else(d: Dispatch) -> None:
    await d.online("near", CENTRE[0] + 0.002, CENTRE[1])
    await d.online("far", CENTRE[0] + 0.01, CENTRE[1])
    created = await d.order("cust-5")
    await d.batch()
    [offer] = await d.offers("near")
    assert await d.offers("far") == []
    r = await d.call("POST", f"/v1/offers/{offer['offer_id']}/decline", "driver", "near")
    assert r.status_code == 200
    assert await d.worker_status("near") == "idle"
    assert (await d.get_order(created["order_id"]))["status"] == "searching"
    await d.batch()
    assert await d.offers("near") == []
    [second] = await d.offers("far")
    assert second["order_id"] == created["order_id"]
    again = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", "near")
    assert again.status_code == 409 and again.json()["error"]["current_state"] == "declined"


async def test_an_unanswered_offer_expires_and_the_order_moves_on(settings: Settings) -> None:
    async with running(settings.model_copy(update={"offer_ttl_s": 0.3})) as d:
        await d.online("slow", *CENTRE)
        await d.online("quick", CENTRE[0] + 0.01, CENTRE[1])
        created = await d.order("cust-6")
        await d.batch()
        [offer] = await d.offers("slow")
        await asyncio.sleep(0.4)
        assert await d.offers("slow") == []  # past expires_at it is not shown any more
        assert await d.rt.handlers.expire_offers(datetime.now(UTC)) == 1
        late = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", "slow")
        assert late.status_code == 409
        assert await d.worker_status("slow") == "idle"
        await d.batch()
        [second] = await d.offers("quick")
        assert second["order_id"] == created["order_id"]


async def test_an_order_nobody_takes_expires_after_the_search_timeout(settings: Settings) -> None:
    async with running(settings.model_copy(update={"search_timeout_s": 0.2})) as d:
        created = await d.order("cust-7")
        await asyncio.sleep(0.3)
        assert await d.rt.handlers.expire_orders(datetime.now(UTC)) == 1
        assert (await d.get_order(created["order_id"]))["status"] == "expired"
        cancel = await d.call(
            "POST", f"/v1/orders/{created['order_id']}/cancel", "customer", "cust-7"
        )
        assert cancel.status_code == 409 and cancel.json()["error"]["current_state"] == "expired"


async def test_cancelling_an_offered_order_withdraws_the_offer(d: Dispatch) -> None:
    await d.online("drv-c", *CENTRE)
    created = await d.order("cust-8")
    await d.batch()
    [offer] = await d.offers("drv-c")
    r = await d.call("POST", f"/v1/orders/{created['order_id']}/cancel", "customer", "cust-8")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert await d.offers("drv-c") == []
    assert await d.worker_status("drv-c") == "idle"
    status = await d.rt.handlers.pool.fetchval(
        "SELECT status FROM offers WHERE offer_id = $1", uuid.UUID(offer["offer_id"])
    )
    assert status == "withdrawn"
    accept = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", "drv-c")
    assert accept.status_code == 409


async def test_unavailable_workers_get_no_offers(d: Dispatch) -> None:
    await d.online("on-break", *CENTRE)
    r = await d.call(
        "POST", "/v1/drivers/on-break/status", "driver", "on-break", json={"status": "break"}
    )
    assert r.json()["status"] == "break"
    await d.position("no-status", *CENTRE)  # pinging but never went online
    await d.online("busy", *CENTRE)
    await d.order("cust-9")
    await d.batch()
    [busy_offer] = await d.offers("busy")
    await d.order("cust-10")
    outcome = await d.batch()
    assert outcome.offered == 0
    assert await d.offers("on-break") == [] and await d.offers("no-status") == []
    assert [o["offer_id"] for o in await d.offers("busy")] == [busy_offer["offer_id"]]


async def test_status_changes_follow_the_state_machine(d: Dispatch) -> None:
    await d.online("drv-s", *CENTRE)
    again = await d.call(
        "POST", "/v1/drivers/drv-s/status", "driver", "drv-s", json={"status": "online"}
    )
    assert again.status_code == 200 and again.json()["status"] == "idle"
    created = await d.order("cust-11")
    await d.batch()
    [offer] = await d.offers("drv-s")
    # going offline with an open offer declines it, and the order searches again
    off = await d.call(
        "POST", "/v1/drivers/drv-s/status", "driver", "drv-s", json={"status": "offline"}
    )
    assert off.json()["status"] == "offline"
    assert (await d.get_order(created["order_id"]))["status"] == "searching"
    await d.online("drv-s", *CENTRE)
    await d.batch()  # excluded now: the driver declined this order
    assert await d.offers("drv-s") == []
    created2 = await d.order("cust-12")
    await d.batch()
    [offer2] = await d.offers("drv-s")
    assert offer2["order_id"] == created2["order_id"]
    await d.call("POST", f"/v1/offers/{offer2['offer_id']}/accept", "driver", "drv-s")
    refused = await d.call(
        "POST", "/v1/drivers/drv-s/status", "driver", "drv-s", json={"status": "offline"}
    )
    assert refused.status_code == 409
    assert refused.json()["error"]["current_state"] == "en_route_pickup"
    bad = await d.call(
        "POST", "/v1/drivers/drv-s/status", "driver", "drv-s", json={"status": "asleep"}
    )
    assert bad.status_code == 422
    assert offer["offer_id"] != offer2["offer_id"]


async def test_trip_steps_out_of_order_are_409(d: Dispatch) -> None:
    await d.online("drv-t", *CENTRE)
    await d.order("cust-13")
    await d.batch()
    [offer] = await d.offers("drv-t")
    trip_id = (
        await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", "drv-t")
    ).json()["trip_id"]
    r = await d.call(
        "POST", f"/v1/trips/{trip_id}/events", "driver", "drv-t", json={"type": "picked_up"}
    )
    assert r.status_code == 409 and r.json()["error"]["current_state"] == "en_route_pickup"
    other = await d.call(
        "POST", f"/v1/trips/{trip_id}/events", "driver", "drv-x", json={"type": "arrived_pickup"}
    )
    assert other.status_code == 404
    await d.call(
        "POST", f"/v1/trips/{trip_id}/events", "driver", "drv-t", json={"type": "arrived_pickup"}
    )
    no_show = await d.call(
        "POST",
        f"/v1/trips/{trip_id}/events",
        "driver",
        "drv-t",
        json={"type": "cancelled", "reason": "no_show"},
    )
    assert no_show.status_code == 200 and no_show.json()["order_status"] == "cancelled"
    assert await d.worker_status("drv-t") == "idle"
    end = await d.rt.handlers.pool.fetchrow(
        "SELECT status, end_reason FROM trips WHERE trip_id = $1", uuid.UUID(trip_id)
    )
    assert (end["status"], end["end_reason"]) == ("cancelled_by_driver", "no_show")


@pytest.mark.parametrize("round_", range(3))
async def test_accept_and_expiry_race_exactly_one_wins(d: Dispatch, round_: int) -> None:
    driver = f"race-{round_}"
    await d.online(driver, *CENTRE)
    created = await d.order(f"cust-r{round_}")
    await d.batch()
    [offer] = await d.offers(driver)
    late = datetime.now(UTC) + timedelta(seconds=d.settings.offer_ttl_s + 1)
    accept, expired = await asyncio.gather(
        d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", driver),
        d.rt.handlers.expire_offers(late),
    )
    order = await d.get_order(created["order_id"])
    if accept.status_code == 200:
        assert expired == 0 and order["status"] == "assigned"
        assert await d.worker_status(driver) == "en_route_pickup"
    else:
        assert accept.status_code == 409 and expired == 1
        assert order["status"] == "searching" and await d.worker_status(driver) == "idle"


async def test_double_accept_and_accept_versus_cancel(d: Dispatch) -> None:
    await d.online("dbl", *CENTRE)
    await d.order("cust-d")
    await d.batch()
    [offer] = await d.offers("dbl")
    url = f"/v1/offers/{offer['offer_id']}/accept"
    codes = sorted(
        r.status_code
        for r in await asyncio.gather(*(d.call("POST", url, "driver", "dbl") for _ in range(4)))
    )
    assert codes == [200, 409, 409, 409]
    assert await d.rt.handlers.pool.fetchval("SELECT count(*) FROM trips") == 1

    await d.online("dbl2", CENTRE[0] + 0.001, CENTRE[1])
    created = await d.order("cust-e")
    await d.batch()
    [offer2] = await d.offers("dbl2")
    accept, cancel = await asyncio.gather(
        d.call("POST", f"/v1/offers/{offer2['offer_id']}/accept", "driver", "dbl2"),
        d.call("POST", f"/v1/orders/{created['order_id']}/cancel", "customer", "cust-e"),
    )
    assert cancel.status_code == 200
    assert (await d.get_order(created["order_id"]))["status"] == "cancelled"
    assert await d.worker_status("dbl2") == "idle"
    assert accept.status_code in (200, 409)  # accepted then cancelled, or too late


@pytest.mark.parametrize("round_", range(3))
async def test_a_trip_step_racing_a_cancel_settles_without_deadlock(
    d: Dispatch, round_: int
) -> None:
    """The step locks the order and worker in one statement and writes the trip after; the
    cancel locks the order, the worker, then writes the trip: one waits for the other."""
    driver, customer = f"tc-{round_}", f"cust-tc{round_}"
    await d.online(driver, *CENTRE)
    created = await d.order(customer)
    await d.batch()
    [offer] = await d.offers(driver)
    accepted = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", driver)
    trip_id = accepted.json()["trip_id"]
    step, cancel = await asyncio.gather(
        d.call(
            "POST",
            f"/v1/trips/{trip_id}/events",
            "driver",
            driver,
            json={"type": "arrived_pickup"},
        ),
        d.call("POST", f"/v1/orders/{created['order_id']}/cancel", "customer", customer),
    )
    assert cancel.status_code == 200, cancel.text
    assert step.status_code in (200, 409), step.text  # arrived first, or after the cancel
    if step.status_code == 409:  # says what the trip is now, not what it was before the wait
        assert step.json()["error"]["current_state"] == "cancelled_by_customer", step.text
    assert (await d.get_order(created["order_id"]))["status"] == "cancelled"
    assert await d.worker_status(driver) == "idle"
    trip = await d.rt.handlers.pool.fetchrow(
        "SELECT status, arrived_pickup_at FROM trips WHERE trip_id = $1", uuid.UUID(trip_id)
    )
    assert trip["status"] == "cancelled_by_customer"
    assert (trip["arrived_pickup_at"] is not None) == (step.status_code == 200)


def _optimistic(d: Dispatch, outcome: str) -> float:
    return d.rt.metrics.optimistic_steps.labels(outcome)._value.get()  # noqa: SLF001


async def _on_trip(d: Dispatch, driver: str, customer: str) -> tuple[str, str]:
    await d.online(driver, *CENTRE)
    created = await d.order(customer)
    await d.batch()
    [offer] = await d.offers(driver)
    accepted = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", driver)
    return accepted.json()["trip_id"], created["order_id"]


async def test_orders_accepts_and_trip_steps_take_the_optimistic_path(d: Dispatch) -> None:
    """An order is one statement; the batch's offer, an accept and a trip step read unlocked
    and write in one guarded statement: none falls back to a transaction when nothing races
    it."""
    before = [_optimistic(d, o) for o in ("applied", "changed", "needs_lock")]
    trip_id, order_id = await _on_trip(d, "opt-1", "cust-opt1")
    for step in ("arrived_pickup", "picked_up", "arrived_dropoff", "completed"):
        r = await d.call(
            "POST", f"/v1/trips/{trip_id}/events", "driver", "opt-1", json={"type": step}
        )
        assert r.status_code == 200, r.text
    after = [_optimistic(d, o) for o in ("applied", "changed", "needs_lock")]
    # order, the batch's offer (one part), accept, four steps
    assert after == [before[0] + 7, before[1], before[2]]
    assert (await d.get_order(order_id))["status"] == "completed"
    assert await d.worker_status("opt-1") == "idle"
    trip = await d.rt.handlers.pool.fetchrow(
        "SELECT status, arrived_pickup_at, picked_up_at, arrived_dropoff_at, ended_at "
        "FROM trips WHERE trip_id = $1",
        uuid.UUID(trip_id),
    )
    assert trip["status"] == "completed" and None not in list(trip.values())


async def test_an_accept_undone_by_a_race_counts_its_latency_once(d: Dispatch) -> None:
    """order→assignment is observed when the accept commits: the optimistic attempt that a
    concurrent writer undoes, and the locked one that applies, count one assignment."""
    await d.online("opt-3", *CENTRE)
    await d.order("cust-opt3")
    await d.batch()
    [offer] = await d.offers("opt-3")
    handlers, pool = d.rt.handlers, d.rt.handlers.pool
    assignments = d.rt.metrics.order_to_assignment.collect()[0]
    count = [s for s in assignments.samples if s.name.endswith("_count")][0].value
    attempts: list[bool] = []

    async def step(conn: Any, events: list[Any]) -> Any:
        attempts.append(conn.optimistic)
        result = await handlers.accept(
            conn, events, uuid.UUID(offer["offer_id"]), "opt-3", datetime.now(UTC)
        )
        if conn.optimistic:  # a concurrent writer, between the read and the write
            await pool.execute("UPDATE workers SET seq = seq WHERE driver_id = 'opt-3'")
        return result

    await handlers.run(step, optimistic=True)
    assert attempts == [True, False]
    after = d.rt.metrics.order_to_assignment.collect()[0]
    assert [s for s in after.samples if s.name.endswith("_count")][0].value == count + 1


async def test_a_worker_state_change_stays_on_its_page(d: Dispatch) -> None:
    """No index covers what a state change writes (migration 004), so Postgres can update
    the row where it is (HOT: no new index entries), seven times an order."""
    await d.online("hot-1", *CENTRE)
    hot_updates = "SELECT pg_stat_get_xact_tuples_hot_updated('workers'::regclass)"
    async with d.rt.handlers.pool.acquire() as conn, conn.transaction():
        before = await conn.fetchval(hot_updates)
        for status in ("offered", "en_route_pickup", "at_pickup", "on_trip", "idle"):
            await conn.execute(
                "UPDATE workers SET status = $2, status_since = now(), seq = seq + 1, "
                "waiting_since = NULL, offer_id = NULL, trip_id = NULL WHERE driver_id = $1",
                "hot-1",
                status,
            )
        assert await conn.fetchval(hot_updates) - before == 5


async def test_after_commit_runs_for_what_committed_only(d: Dispatch) -> None:
    """A keyed step: its action runs once when it commits, not for a stored refusal, not for
    the replay of a stored answer."""
    handlers, ran = d.rt.handlers, []

    async def applies(conn: Any, events: list[Any]) -> Any:
        after_commit(lambda: ran.append("applied"))
        return 200, {"ok": True}

    async def refuses(conn: Any, events: list[Any]) -> Any:
        after_commit(lambda: ran.append("refused"))
        raise IllegalTransition("order", "completed", Cause.OFFER_ACCEPTED)

    first = await handlers.run_once("driver:ac-1", "k-applies", "d1", applies)
    again = await handlers.run_once("driver:ac-1", "k-applies", "d1", applies)
    refused = await handlers.run_once("driver:ac-1", "k-refuses", "d2", refuses)
    assert (first.replayed, again.replayed, refused.status) == (False, True, 409)
    assert ran == ["applied"]
    with pytest.raises(RuntimeError):
        after_commit(lambda: None)  # outside a step: nothing would run it


async def test_a_trip_step_whose_rows_change_before_its_write_runs_again_locked(
    d: Dispatch,
) -> None:
    """Another writer changes the worker's row between the step's read and its write: the
    guarded write is undone whole and the step runs again in a transaction, once."""
    trip_id, order_id = await _on_trip(d, "opt-2", "cust-opt2")
    handlers, pool = d.rt.handlers, d.rt.handlers.pool
    seq = await pool.fetchval("SELECT seq FROM workers WHERE driver_id = 'opt-2'")
    before = _optimistic(d, "changed")
    attempts: list[bool] = []

    async def step(conn: Any, events: list[Any]) -> Any:
        attempts.append(conn.optimistic)
        result = await handlers.trip_step(
            conn, events, uuid.UUID(trip_id), "opt-2", "arrived_pickup", None, datetime.now(UTC)
        )
        if conn.optimistic:  # a concurrent writer, between the read and the write
            await pool.execute("UPDATE workers SET seq = seq WHERE driver_id = 'opt-2'")
        return result

    result = await handlers.run(step, optimistic=True)
    assert attempts == [True, False]
    assert _optimistic(d, "changed") == before + 1
    assert (result.worker_status, result.order_status) == ("at_pickup", "driver_arrived")
    # Applied once: one seq step, one arrival, one event per row.
    assert await pool.fetchval("SELECT seq FROM workers WHERE driver_id = 'opt-2'") == seq + 1
    assert (await d.get_order(order_id))["status"] == "driver_arrived"
    rows = await pool.fetch(
        "SELECT event->'data'->>'to' AS to FROM outbox WHERE key = 'opt-2' "
        "AND event->'data'->>'cause' = 'arrived_pickup'"
    )
    assert [r["to"] for r in rows] == ["at_pickup"]


async def test_a_batch_part_whose_rows_change_before_its_write_runs_again_locked(
    d: Dispatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker goes offline between the part's unlocked read and its guarded write: the
    write is undone whole (no offer, event or decision of it stays) and the part runs again
    in a transaction, which skips that worker and offers the other order."""
    for i in range(2):
        await d.online(f"drv-part-{i}", CENTRE[0] + 0.01 * i, CENTRE[1])
    placed = [(await d.order(f"cust-part-{i}", dlat=0.01 * i))["order_id"] for i in range(2)]
    pool, real = d.rt.handlers.pool, matcher_module.lock_many
    before = _optimistic(d, "changed")
    attempts: list[bool] = []

    async def then_go_offline(conn: Any, *tables: Any) -> Any:
        attempts.append(conn.optimistic)
        rows = await real(conn, *tables)
        if conn.optimistic:  # a concurrent writer, between the read and the write
            await pool.execute(
                "UPDATE workers SET status = 'offline', seq = seq + 1 "
                "WHERE driver_id = 'drv-part-1'"
            )
        return rows

    monkeypatch.setattr(matcher_module, "lock_many", then_go_offline)
    outcome = await d.batch()
    assert attempts == [True, False] and _optimistic(d, "changed") == before + 1
    assert outcome.offered == 1
    assert [o["order_id"] for o in await d.offers("drv-part-0")] == [placed[0]]
    assert (await d.get_order(placed[1]))["status"] == "searching"
    offers = await pool.fetch("SELECT order_id::text AS order_id FROM offers")
    made = await pool.fetch(
        "SELECT event->'data'->>'order_id' AS order_id FROM outbox "
        "WHERE event->>'type' = 'polder.dispatch.offer_made.v1'"
    )
    decided = await pool.fetch("SELECT order_id::text AS order_id FROM decisions")
    assert [r["order_id"] for r in offers] == [r["order_id"] for r in made] == [placed[0]]
    assert sorted(r["order_id"] for r in decided) == sorted(placed)
    assert await d.worker_status("drv-part-1") == "offline"


async def test_a_guard_checks_its_orders_before_it_waits_for_its_workers(d: Dispatch) -> None:
    """``lock_many``'s guard locks a part's orders before its workers (the lock order) and
    stops at the first table whose rows changed: with an order changed since the read, it
    raises at once, though another session holds the worker's row."""
    await d.online("drv-lock-order", *CENTRE)
    order_id = uuid.UUID((await d.order("cust-lock-order"))["order_id"])
    pool = d.rt.handlers.pool
    async with pool.acquire() as raw:
        tx = Tx(raw, optimistic=True)
        orders, workers = await lock_many(
            tx,
            Rows("orders", "order_id", "uuid", [order_id], where="status = 'searching'"),
            Rows("workers", "driver_id", "text", ["drv-lock-order"], where="status = 'idle'"),
        )
        assert list(orders) == [order_id] and list(workers) == ["drv-lock-order"]
        await pool.execute("UPDATE orders SET updated_at = now() WHERE order_id = $1", order_id)
        tx.defer("UPDATE workers SET seq = seq WHERE driver_id = $1", "drv-lock-order")
        async with pool.acquire() as holder, holder.transaction():
            await holder.execute(
                "SELECT 1 FROM workers WHERE driver_id = 'drv-lock-order' FOR UPDATE"
            )
            with pytest.raises(asyncpg.SerializationError):
                await asyncio.wait_for(tx.send(), timeout=5)  # not a wait for the holder


async def test_a_batch_finds_its_rows_by_key_among_many(d: Dispatch) -> None:
    """The statements of a batch's part (the guard of ``lock_many`` and the offers' updates)
    find their orders and workers through the keys' index, not by reading the whole table:
    with 10 000 workers and orders, a scan of all of them took 3-4 ms of a part's critical
    statement where the index takes under one."""
    pool = d.rt.handlers.pool
    await pool.execute(
        "INSERT INTO workers (driver_id, status, status_since) "
        "SELECT 'drv-many-' || i, 'idle', now() FROM generate_series(1, 10000) i"
    )
    await pool.execute(
        "INSERT INTO orders (order_id, customer_id, kind, city, pickup_lat, pickup_lng, "
        "dropoff_lat, dropoff_lng, status, created_at, updated_at, search_deadline, quote) "
        "SELECT gen_random_uuid(), 'cust-many', 'ride', 'ams', 52.37, 4.89, 52.38, 4.9, "
        "'searching', now(), now(), now() + interval '1 minute', '{}' "
        "FROM generate_series(1, 10000)"
    )
    await pool.execute("ANALYZE workers; ANALYZE orders")
    order_ids = [r["order_id"] for r in await pool.fetch("SELECT order_id FROM orders LIMIT 64")]
    driver_ids = [f"drv-many-{i}" for i in range(1, 10001, 157)]  # 64 of them
    at = [datetime.now(UTC)] * 64
    offer_ids = [uuid.uuid4() for _ in range(64)]
    async with pool.acquire() as raw:
        tx = Tx(raw, optimistic=True)
        await lock_many(
            tx,
            Rows("orders", "order_id", "uuid", order_ids, where="status = 'searching'"),
            Rows("workers", "driver_id", "text", driver_ids, where="status = 'idle'"),
        )
        guard = tx._guard  # noqa: SLF001
        assert guard is not None
        guard_sql, guard_args = guard
        plans = {
            "guard": (guard_sql, guard_args),
            "orders": (matcher_module.OFFER_ORDERS, (order_ids, offer_ids, at)),
            "workers": (matcher_module.OFFER_WORKERS, (driver_ids, offer_ids, at)),
        }
        for name, (sql, args) in plans.items():
            # The plan a prepared statement gets from these values, as the matcher's would.
            plan = "\n".join(r[0] for r in await raw.fetch("EXPLAIN " + sql, *args))
            assert "Index Scan" in plan, (name, plan)
            assert "Seq Scan on workers" not in plan and "Seq Scan on orders" not in plan, (
                name,
                plan,
            )


async def test_the_matcher_forgets_a_position_gone_stale(d: Dispatch) -> None:
    """A worker whose position is older than the TTL leaves the matcher's index at the next
    batch (its cells do not keep every driver ever seen) and gets no offer; a new ping brings
    them back."""
    await d.online("drv-stale", *CENTRE)
    order_id = (await d.order("cust-stale"))["order_id"]
    positions = d.rt.matcher.positions
    assert positions.get("drv-stale") is not None
    later = datetime.now(UTC) + timedelta(seconds=d.settings.location_ttl_s + 1)
    assert (await d.rt.matcher.run_once(later)).offered == 0
    assert positions.get("drv-stale") is None and len(positions) == 0
    await d.position("drv-stale", *CENTRE)
    assert (await d.batch()).offered == 1
    [offer] = await d.offers("drv-stale")
    assert offer["order_id"] == order_id


async def test_operators_see_every_round_and_why(d: Dispatch) -> None:
    created = await d.order("cust-f")
    await d.batch()  # nobody around
    await d.online("drv-f", *CENTRE)
    await d.batch()
    r = await d.call("GET", f"/v1/orders/{created['order_id']}/decisions", "operator", "ops")
    assert r.status_code == 200
    rounds = r.json()["decisions"]
    assert len(rounds) == 2
    first, second = (x["decision"] for x in rounds)
    assert first["chosen_driver_id"] is None and first["reason"]
    assert second["chosen_driver_id"] == "drv-f" and second["reason"]
    [candidate] = second["candidates"]
    assert candidate["driver_id"] == "drv-f" and candidate["eta_s"] > 0
    missing = await d.call("GET", f"/v1/orders/{uuid.uuid4()}/decisions", "operator", "ops")
    assert missing.status_code == 404


@pytest.mark.parametrize("first", [2, 0])
async def test_a_batch_writes_its_oldest_orders_offers_first(
    settings: Settings, first: int
) -> None:
    """The offers of the orders waiting longest for a first offer commit (and reach the outbox)
    before the rest; an order offered before and searching again is not among them, however
    old. 0: one transaction."""
    async with running(settings.model_copy(update={"batch_first_offers": first})) as d:
        await d.online("drv-old-x", *CENTRE)
        again = (await d.order("cust-old-again"))["order_id"]  # the oldest order
        assert (await d.batch()).offered == 1
        [declined] = await d.offers("drv-old-x")
        r = await d.call(
            "POST", f"/v1/offers/{declined['offer_id']}/decline", "driver", "drv-old-x"
        )
        assert r.status_code == 200, r.text
        for i in range(4):
            await d.online(f"drv-old-{i}", CENTRE[0] + 0.001 * i, CENTRE[1])
        placed = [(await d.order(f"cust-old-{i}", dlat=0.001 * i))["order_id"] for i in range(4)]
        nobody = (await d.order("cust-old-far", dlat=1.0))["order_id"]  # no driver near
        assert (await d.batch()).offered == 5
        pool = d.rt.handlers.pool
        tx = {
            r["order_id"]: r["tx"]
            for r in await pool.fetch(
                "SELECT order_id::text AS order_id, xmin::text AS tx FROM offers "
                "WHERE status = 'pending'"
            )
        }
        assert set(tx) == {again, *placed}
        published = [
            r["order_id"]
            for r in await pool.fetch(
                "SELECT event->'data'->>'order_id' AS order_id FROM outbox "
                "WHERE event->>'type' = 'polder.dispatch.offer_made.v1' "
                "AND event->'data'->>'offer_id' <> $1 ORDER BY id",
                declined["offer_id"],
            )
        ]
        batch = await pool.fetchval("SELECT batch_id FROM decisions ORDER BY id DESC LIMIT 1")
        decided = {
            r["order_id"]: r["tx"]
            for r in await pool.fetch(
                "SELECT order_id::text AS order_id, xmin::text AS tx FROM decisions "
                "WHERE batch_id = $1",
                batch,
            )
        }
        assert set(decided) == {again, *placed, nobody}
        if first:
            head, rest = placed[:2], [*placed[2:], again]
            assert tx[head[0]] == tx[head[1]] != tx[rest[0]]
            assert {tx[o] for o in rest} == {tx[rest[0]]}
            assert published[:2] == head and sorted(published[2:]) == sorted(rest)
            # Each order's decision is written with its offer; the unmatched one with the rest.
            assert all(decided[o] == tx[o] for o in tx) and decided[nobody] == tx[rest[0]]
        else:
            assert len({*tx.values(), *decided.values()}) == 1
            assert sorted(published) == sorted([again, *placed])


async def test_the_first_parts_offers_are_with_the_producer_before_the_next_part_is_written(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two parts a batch lets this process's relay take the first part's offers:
    without it the relay, woken by the commit, would read them only once the next part's
    building (CPU on the same event loop, ~10 ms under load) let it run."""
    monkeypatch.setattr(matcher_module, "HAND_OVER_WAIT_S", 20.0)  # a slow box must not time out
    async with running(settings.model_copy(update={"batch_first_offers": 1})) as d:
        for i in range(2):
            await d.online(f"drv-hand-{i}", CENTRE[0] + 0.001 * i, CENTRE[1])
        older = (await d.order("cust-hand-0"))["order_id"]
        newer = (await d.order("cust-hand-1", dlat=0.001))["order_id"]
        relay = d.rt.handlers.relay
        assert relay is not None
        original = relay.bus.send_many
        handed_at: dict[str, float] = {}

        async def recording(records, handed=None):  # type: ignore[no-untyped-def]
            def mark() -> None:
                for _, _, value in records:
                    event = orjson.loads(value)
                    if event["type"] == "polder.dispatch.offer_made.v1":
                        handed_at.setdefault(event["data"]["order_id"], time.time())
                if handed is not None:
                    handed()

            await original(records, handed=mark)

        relay.bus.send_many = recording  # type: ignore[method-assign]
        try:
            assert (await d.batch()).offered == 2
            await eventually(lambda: _handed(handed_at), until=lambda n: n == 2, within=20)
        finally:
            relay.bus.send_many = original  # type: ignore[method-assign]
        created = {
            r["order_id"]: r["created_at"].timestamp()
            for r in await d.rt.handlers.pool.fetch(
                "SELECT order_id::text AS order_id, created_at FROM offers"
            )
        }
        # The newer order's offer is stamped when its part starts: after the older one's
        # offer was with the producer.
        assert handed_at[older] <= created[newer]
        assert created[older] < created[newer]


async def _handed(handed_at: dict[str, float]) -> int:
    return len(handed_at)


async def test_decisions_past_their_keep_time_are_deleted(d: Dispatch) -> None:
    created = await d.order("cust-keep")
    await d.batch()  # nobody around
    await d.batch()
    await d.online("drv-keep", *CENTRE)
    await d.batch()
    pool = d.rt.handlers.pool
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM decisions ORDER BY id")]
    assert len(ids) == 3
    await pool.execute(
        "UPDATE decisions SET decided_at = decided_at - interval '31 days' WHERE id = ANY($1)",
        ids[:2],
    )
    metrics = d.rt.handlers.metrics
    prune = DecisionRetention(pool, metrics)
    cut = cut_for(datetime.now(UTC), d.settings.decisions_keep_h)  # 30 days by default
    before = metrics.decisions_pruned._value.get()
    assert await prune(cut) == 2
    assert await prune(cut) == 0
    assert metrics.decisions_pruned._value.get() == before + 2
    r = await d.call("GET", f"/v1/orders/{created['order_id']}/decisions", "operator", "ops")
    [kept] = r.json()["decisions"]
    assert kept["decision"]["chosen_driver_id"] == "drv-keep"
    with pytest.raises(ValueError, match="identifier"):
        await delete_before(pool, "decisions; DROP TABLE orders", "decided_at", cut)


async def test_deletion_before_a_cut_goes_by_id_ranges_and_stops_at_a_recent_one(
    d: Dispatch,
) -> None:
    """``delete_before`` reads only the first row of each range: a range that starts recent
    ends the pass (what follows is kept, as in an append-only table it is recent too); a
    recent row inside a range is kept while the old ones around it go."""
    order_id = uuid.UUID((await d.order("cust-ranges"))["order_id"])
    pool = d.rt.handlers.pool
    now = datetime.now(UTC)

    async def decided(days_ago: float) -> int:
        id_: int = await pool.fetchval(
            "INSERT INTO decisions (order_id, batch_id, decided_at, decision) "
            "VALUES ($1, $2, $3, '{}') RETURNING id",
            order_id,
            uuid.uuid4(),
            now - timedelta(days=days_ago),
        )
        return id_

    ids = [await decided(age) for age in (40, 40, 40, 0, 40, 40)]
    cut = now - timedelta(days=30)

    async def left() -> list[int]:
        return [r["id"] for r in await pool.fetch("SELECT id FROM decisions ORDER BY id")]

    assert await delete_before(pool, "decisions", "decided_at", cut, chunk=1) == 3
    assert await left() == ids[3:]  # stopped at the recent row
    await pool.execute("UPDATE decisions SET decided_at = $2 WHERE id = $1", ids[3], cut)
    assert await delete_before(pool, "decisions", "decided_at", cut, chunk=1) == 0  # not before
    ids.append(await decided(40))
    await pool.execute("DELETE FROM decisions WHERE id = $1", ids[3])  # a gap in the ids
    await decided(0)
    # Ranges of 2 from ids[4]: [4, 5] old, then [6, 7]: ids[6] old, the newest recent.
    assert await delete_before(pool, "decisions", "decided_at", cut, chunk=2) == 3
    assert len(await left()) == 1


async def test_offers_are_pushed_on_the_feed(d: Dispatch) -> None:
    await d.online("drv-w", *CENTRE)
    token = issue_token(d.settings, "driver", "drv-w")
    url = f"{d.base.replace('http', 'ws')}/v1/drivers/drv-w/feed?token={token}"
    async with websockets.connect(url) as ws:
        await asyncio.sleep(0.1)
        created = await d.order("cust-w")
        await d.batch()
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=5))
        assert message["type"] == "offer" and message["offer"]["order_id"] == created["order_id"]
        offer_id = message["offer"]["offer_id"]
        await d.call("POST", f"/v1/orders/{created['order_id']}/cancel", "customer", "cust-w")
        closed = json.loads(await asyncio.wait_for(ws.recv(), timeout=5))
        assert closed == {"type": "offer_closed", "offer_id": offer_id, "outcome": "withdrawn"}
    other = issue_token(d.settings, "driver", "x")
    refused_url = f"{d.base.replace('http', 'ws')}/v1/drivers/drv-w/feed?token={other}"
    async with websockets.connect(refused_url) as ws:
        assert json.loads(await ws.recv())["error"]["code"] == "forbidden"


async def test_metrics_report_dispatch(d: Dispatch) -> None:
    await d.online("drv-m", *CENTRE)
    await d.order("cust-m")
    await d.batch()
    [offer] = await d.offers("drv-m")
    await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", "drv-m")
    text = (await d.client.get(f"{d.base}/metrics")).text
    for name in (
        "polder_dispatch_order_to_offer_seconds_count 1.0",
        'polder_dispatch_offers_total{outcome="made"} 1.0',
        "polder_dispatch_available_workers 1.0",
        "polder_dispatch_batch_solve_seconds_count",
        "polder_dispatch_pickup_eta_seconds_count 1.0",
        "polder_dispatch_order_to_assignment_seconds_count 1.0",
        'polder_dispatch_offers_total{outcome="accepted"} 1.0',
    ):
        assert name in text, name
    assert (await d.client.get(f"{d.base}/readyz")).status_code == 200


async def test_a_delivery_waits_until_the_courier_would_arrive_near_ready_at(d: Dispatch) -> None:
    await d.online("courier", *CENTRE)
    later = datetime.now(UTC) + timedelta(minutes=30)
    held = await d.order("cust-g", kind="delivery", ready_at=later.isoformat())
    outcome = await d.batch()
    assert outcome.offered == 0 and held["order_id"] in outcome.result.deferred
    r = await d.call("GET", f"/v1/orders/{held['order_id']}/decisions", "operator", "ops")
    [round_] = r.json()["decisions"]
    assert round_["decision"]["chosen_driver_id"] is None
    assert "defer" in round_["decision"]["reason"]
    soon = await d.order("cust-h", kind="delivery", ready_at=datetime.now(UTC).isoformat())
    await d.batch()
    [offer] = await d.offers("courier")
    assert offer["order_id"] == soon["order_id"] and offer["kind"] == "delivery"
    ride_with_ready_at = await d.call(
        "POST",
        "/v1/orders",
        "customer",
        "cust-h",
        headers={"Idempotency-Key": "x"},
        json={
            "kind": "ride",
            "pickup": {"lat": 52.1, "lng": 4.1},
            "dropoff": {"lat": 52.2, "lng": 4.2},
            "ready_at": later.isoformat(),
        },
    )
    assert ride_with_ready_at.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {
            "kind": "ride",
            "pickup": {"lat": "52.3", "lng": 4.9},
            "dropoff": {"lat": 52.4, "lng": 4.9},
        },
        {"kind": "ride", "pickup": {"lat": 95, "lng": 4.9}, "dropoff": {"lat": 52.4, "lng": 4.9}},
        {"kind": "boat", "pickup": {"lat": 52.3, "lng": 4.9}, "dropoff": {"lat": 52.4, "lng": 4.9}},
        {"kind": "ride", "pickup": {"lat": 52.3, "lng": 4.9}},
        {
            "kind": "ride",
            "pickup": {"lat": 52.3, "lng": 4.9},
            "dropoff": {"lat": 52.4, "lng": 4.9},
            "tip": 5,
        },
        {
            "kind": "delivery",
            "pickup": {"lat": 52.3, "lng": 4.9},
            "dropoff": {"lat": 52.4, "lng": 4.9},
            "ready_at": "2026-11-29T12:00:00",
        },
    ],
)
async def test_bad_order_bodies_are_422_and_create_nothing(
    d: Dispatch, body: dict[str, Any]
) -> None:
    r = await d.call(
        "POST", "/v1/orders", "customer", "c", json=body, headers={"Idempotency-Key": "k"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert await d.rt.handlers.pool.fetchval("SELECT count(*) FROM orders") == 0


async def _idle_in_postgres(d: Dispatch) -> dict[str, float | None]:
    rows = await d.rt.handlers.pool.fetch(
        "SELECT driver_id, waiting_since FROM workers WHERE status = 'idle'"
    )
    return {
        r["driver_id"]: r["waiting_since"].timestamp() if r["waiting_since"] else None for r in rows
    }


async def _rebuilt_idle(d: Dispatch) -> dict[str, float | None]:
    """What a restarted matcher would start from: a fresh view loaded from Postgres."""
    fresh = Availability()
    rows = await d.rt.handlers.pool.fetch(
        "SELECT driver_id, seq, status, waiting_since FROM workers"
    )
    fresh.load(
        (
            r["driver_id"],
            r["seq"],
            r["status"],
            r["waiting_since"].timestamp() if r["waiting_since"] else None,
        )
        for r in rows
    )
    return dict(fresh.idle)


async def test_the_matchers_available_workers_follow_postgres(settings: Settings) -> None:
    """Every transition (status, offer, decline, expiry, accept, trip, cancel) keeps the
    in-memory idle set and each worker's waiting_since equal to the workers table."""
    async with running(settings.model_copy(update={"offer_ttl_s": 0.3})) as d:

        async def same() -> None:
            live = dict(d.rt.matcher.availability.idle)
            assert live == await _idle_in_postgres(d)
            assert live == await _rebuilt_idle(d)

        for i, driver in enumerate(["av-1", "av-2", "av-3"]):
            await d.online(driver, CENTRE[0] + 0.001 * (i + 1), CENTRE[1])
        await same()
        assert set(d.rt.matcher.availability.idle) == {"av-1", "av-2", "av-3"}
        r = await d.call(
            "POST", "/v1/drivers/av-3/status", "driver", "av-3", json={"status": "break"}
        )
        assert r.status_code == 200
        await same()

        async def offered() -> tuple[str, dict[str, Any]]:
            found = [(drv, o) for drv in ("av-1", "av-2") for o in await d.offers(drv)]
            assert len(found) == 1, found
            return found[0]

        first = await d.order("cust-av")
        await d.batch()
        declining, offer = await offered()
        await same()
        assert declining not in d.rt.matcher.availability.idle
        r = await d.call("POST", f"/v1/offers/{offer['offer_id']}/decline", "driver", declining)
        assert r.status_code == 200
        await same()  # back to idle, still waiting since going online

        await d.batch()
        ignoring, offer = await offered()
        assert ignoring != declining
        await asyncio.sleep(0.4)
        assert await d.rt.handlers.expire_offers(datetime.now(UTC)) == 1
        await same()

        # Both have been excluded from this order now: av-3 comes back from its break for it.
        r = await d.call(
            "POST", "/v1/drivers/av-3/status", "driver", "av-3", json={"status": "online"}
        )
        assert r.status_code == 200
        await same()
        await d.batch()
        [offer] = await d.offers("av-3")
        r = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", "av-3")
        assert r.status_code == 200
        trip_id = r.json()["trip_id"]
        await same()
        for step in ("arrived_pickup", "picked_up", "arrived_dropoff", "completed"):
            r = await d.call(
                "POST", f"/v1/trips/{trip_id}/events", "driver", "av-3", json={"type": step}
            )
            assert r.status_code == 200, r.text
            await same()
        assert (await d.get_order(first["order_id"]))["status"] == "completed"

        second = await d.order("cust-av")
        await d.batch()
        cancel = await d.call(
            "POST", f"/v1/orders/{second['order_id']}/cancel", "customer", "cust-av"
        )
        assert cancel.status_code == 200
        await same()  # the withdrawn offer's worker is idle again
        r = await d.call(
            "POST", "/v1/drivers/av-1/status", "driver", "av-1", json={"status": "offline"}
        )
        assert r.status_code == 200
        await same()
        assert "av-1" not in d.rt.matcher.availability.idle


async def test_changes_of_a_worker_and_an_order_keep_their_order_in_time(d: Dispatch) -> None:
    """A request is stamped when it arrives, then may wait for the worker's lock behind a change
    stamped later (the matcher's offer, whose batch took its clock after the request's). Its
    change takes effect no earlier than that one, so whoever orders a worker's or an order's
    changes by server time (billing does) sees them in the order they happened."""
    await d.online("drv-m", *CENTRE)
    created = await d.order("cust-m")
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert (await d.rt.matcher.run_once(later)).offered == 1
    off = await d.call(
        "POST", "/v1/drivers/drv-m/status", "driver", "drv-m", json={"status": "offline"}
    )
    assert off.json()["status"] == "offline"  # declining the offer on the way
    rows = await d.rt.handlers.pool.fetch("SELECT event FROM outbox ORDER BY id")
    events = [r["event"] for r in rows]
    worker = [
        (e["data"]["seq"], parse_time(e["time"]))
        for e in events
        if e["type"] == "polder.driver.state_changed.v1" and e["data"]["driver_id"] == "drv-m"
    ]
    assert [seq for seq, _ in worker] == [1, 2, 3, 4]  # online, offered, declined, offline
    times = [t for _, t in worker]
    assert times == sorted(times)
    assert times[-1] >= later.replace(microsecond=later.microsecond // 1000 * 1000)
    order = [
        parse_time(e["time"])
        for e in events
        if e["type"] in ("polder.order.placed.v1", "polder.order.status_changed.v1")
        and e["data"]["order_id"] == created["order_id"]
    ]
    assert len(order) == 3 and order == sorted(order)  # placed, offered, searching again
