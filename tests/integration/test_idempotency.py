"""Idempotency-Key on every state-changing POST of dispatch (Stripe's semantics): the same key
and request replay the stored answer, refusals (404, 409) included; the same key with another
request is a 422; of concurrent requests with one key, one takes effect and all get its answer.
Keys are each caller's own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from polder.common.deferred import Tx
from polder.common.errors import ApiError
from polder.common.idempotency import run_once
from polder.common.settings import Settings
from tests.integration.test_dispatch import CENTRE, Dispatch, running

pytestmark = pytest.mark.integration


@pytest.fixture
async def d(settings: Settings) -> AsyncIterator[Dispatch]:
    async with running(settings) as dispatch:
        yield dispatch


async def post(
    d: Dispatch, path: str, role: str, sub: str, key: str | None, json: Any = None
) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return await d.call("POST", path, role, sub, json=json, headers=headers)


async def offered(d: Dispatch, driver: str, customer: str) -> dict[str, Any]:
    await d.online(driver, *CENTRE)
    await d.order(customer)
    await d.batch()
    [offer] = await d.offers(driver)
    return offer


async def accepted(d: Dispatch, driver: str, customer: str) -> str:
    offer = await offered(d, driver, customer)
    r = await post(d, f"/v1/offers/{offer['offer_id']}/accept", "driver", driver, None)
    assert r.status_code == 200, r.text
    trip_id: str = r.json()["trip_id"]
    return trip_id


async def driver_events(d: Dispatch, driver: str) -> list[str]:
    """The state changes of a driver that went to the outbox, in order."""
    rows = await d.rt.handlers.pool.fetch(
        "SELECT event FROM outbox WHERE key = $1 ORDER BY id", driver
    )
    return [
        r["event"]["data"]["to"]
        for r in rows
        if r["event"]["type"] == "polder.driver.state_changed.v1"
    ]


def same(a: httpx.Response, b: httpx.Response) -> bool:
    return (a.status_code, a.json()) == (b.status_code, b.json())


async def test_a_retried_accept_replays_the_trip_and_takes_effect_once(d: Dispatch) -> None:
    offer = await offered(d, "drv-1", "cust-1")
    path = f"/v1/offers/{offer['offer_id']}/accept"
    first = await post(d, path, "driver", "drv-1", "acc-1")
    assert first.status_code == 200, first.text
    again = await post(d, path, "driver", "drv-1", "acc-1")
    assert same(first, again)
    # without the key the same request is a new one, and too late
    assert (await post(d, path, "driver", "drv-1", None)).status_code == 409
    # the key on another request (another route) is refused, and changes nothing
    other = await post(d, f"/v1/offers/{offer['offer_id']}/decline", "driver", "drv-1", "acc-1")
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert await d.rt.handlers.pool.fetchval("SELECT count(*) FROM trips") == 1
    assert await driver_events(d, "drv-1") == ["idle", "offered", "en_route_pickup"]


async def test_a_stored_409_is_replayed_even_once_the_step_would_pass(d: Dispatch) -> None:
    trip_id = await accepted(d, "drv-2", "cust-2")
    path = f"/v1/trips/{trip_id}/events"
    early = await post(d, path, "driver", "drv-2", "step-1", {"type": "picked_up"})
    assert early.status_code == 409 and early.json()["error"]["current_state"] == "en_route_pickup"
    arrived = await post(d, path, "driver", "drv-2", "step-2", {"type": "arrived_pickup"})
    assert arrived.status_code == 200, arrived.text
    # the key's answer was the refusal: a retry gets it, and does not pick the rider up
    assert same(early, await post(d, path, "driver", "drv-2", "step-1", {"type": "picked_up"}))
    assert await d.worker_status("drv-2") == "at_pickup"
    # the step retried with its own key is replayed too; another key takes the next step
    assert same(
        arrived, await post(d, path, "driver", "drv-2", "step-2", {"type": "arrived_pickup"})
    )
    picked = await post(d, path, "driver", "drv-2", "step-3", {"type": "picked_up"})
    assert picked.status_code == 200 and picked.json()["driver_status"] == "on_trip"
    reused = await post(d, path, "driver", "drv-2", "step-3", {"type": "arrived_dropoff"})
    assert reused.status_code == 422
    assert await driver_events(d, "drv-2") == [
        "idle",
        "offered",
        "en_route_pickup",
        "at_pickup",
        "on_trip",
    ]


async def test_status_decline_and_cancel_replay_their_answers(d: Dispatch) -> None:
    status = "/v1/drivers/drv-3/status"
    online = await post(d, status, "driver", "drv-3", "st-1", {"status": "online"})
    assert online.status_code == 200 and online.json()["status"] == "idle"
    reused = await post(d, status, "driver", "drv-3", "st-1", {"status": "offline"})
    assert reused.status_code == 422 and await d.worker_status("drv-3") == "idle"
    assert same(online, await post(d, status, "driver", "drv-3", "st-1", {"status": "online"}))

    await d.position("drv-3", *CENTRE)
    created = await d.order("cust-3")
    await d.batch()
    [offer] = await d.offers("drv-3")
    decline = f"/v1/offers/{offer['offer_id']}/decline"
    declined = await post(d, decline, "driver", "drv-3", "dec-1")
    assert declined.status_code == 200, declined.text
    assert same(declined, await post(d, decline, "driver", "drv-3", "dec-1"))
    assert (await post(d, decline, "driver", "drv-3", None)).status_code == 409

    cancel = f"/v1/orders/{created['order_id']}/cancel"
    cancelled = await post(d, cancel, "customer", "cust-3", "can-1")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert same(cancelled, await post(d, cancel, "customer", "cust-3", "can-1"))
    assert (await post(d, cancel, "customer", "cust-3", None)).status_code == 409
    # a stored 404: someone else's order stays unknown to this key
    stranger = await post(d, cancel, "customer", "cust-x", "can-1")
    assert stranger.status_code == 404
    assert same(stranger, await post(d, cancel, "customer", "cust-x", "can-1"))
    assert await driver_events(d, "drv-3") == ["idle", "offered", "idle"]


async def test_keys_are_each_callers_own_and_checked(d: Dispatch) -> None:
    for driver in ("drv-4", "drv-5"):
        path = f"/v1/drivers/{driver}/status"
        r = await post(d, path, "driver", driver, "shared", {"status": "online"})
        assert r.status_code == 200 and r.json()["driver_id"] == driver
        assert await d.worker_status(driver) == "idle"
    too_long = await post(
        d, "/v1/drivers/drv-4/status", "driver", "drv-4", "k" * 256, {"status": "break"}
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "invalid_idempotency_key"
    assert await d.worker_status("drv-4") == "idle"
    # a request refused before it ran (a body the schema refuses) stores nothing: the key is
    # still free for the corrected request
    bad = await post(d, "/v1/drivers/drv-4/status", "driver", "drv-4", "fix", {"status": "nap"})
    assert bad.status_code == 422
    fixed = await post(d, "/v1/drivers/drv-4/status", "driver", "drv-4", "fix", {"status": "break"})
    assert fixed.status_code == 200 and await d.worker_status("drv-4") == "break"


async def test_a_concurrent_double_submit_takes_effect_once(d: Dispatch) -> None:
    offer = await offered(d, "drv-6", "cust-6")
    path = f"/v1/offers/{offer['offer_id']}/accept"
    answers = await asyncio.gather(*(post(d, path, "driver", "drv-6", "twin") for _ in range(5)))
    assert {r.status_code for r in answers} == {200}
    assert len({r.json()["trip_id"] for r in answers}) == 1
    assert await d.rt.handlers.pool.fetchval("SELECT count(*) FROM trips") == 1

    trip = f"/v1/trips/{answers[0].json()['trip_id']}/events"
    steps = await asyncio.gather(
        *(post(d, trip, "driver", "drv-6", "arrive", {"type": "arrived_pickup"}) for _ in range(5))
    )
    assert [r.status_code for r in steps] == [200] * 5
    assert all(same(steps[0], r) for r in steps)
    assert await driver_events(d, "drv-6") == ["idle", "offered", "en_route_pickup", "at_pickup"]
    stored = await d.rt.handlers.pool.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE key = ANY($1::text[])", ["twin", "arrive"]
    )
    assert stored == 2


async def test_a_stranger_cannot_read_anothers_stored_answer(d: Dispatch) -> None:
    trip_id = await accepted(d, "drv-7", "cust-7")
    path = f"/v1/trips/{trip_id}/events"
    mine = await post(d, path, "driver", "drv-7", "k7", {"type": "arrived_pickup"})
    assert mine.status_code == 200
    theirs = await post(d, path, "driver", "drv-8", "k7", {"type": "arrived_pickup"})
    assert theirs.status_code == 404  # their own key: the trip is not theirs
    assert uuid.UUID(mine.json()["trip_id"]) == uuid.UUID(trip_id)


@pytest.mark.parametrize("optimistic", [False, True])
@pytest.mark.parametrize("written", [False, True])
async def test_a_refusal_is_stored_and_the_effects_writes_undone(
    d: Dispatch, written: bool, optimistic: bool
) -> None:
    """A step that refuses (404/409) leaves no write behind and its refusal is the key's answer:
    in its own transaction when it refused before any write was sent (held writes dropped),
    after a rollback when one was. Optimistic: the refusal alone is the one statement; an
    effect that sends a write mid-step runs again in a transaction."""
    pool = d.rt.handlers.pool
    principal, key = f"driver:refuser-{written}-{optimistic}", f"k-{written}-{optimistic}"

    async def effect(tx: Tx) -> tuple[int, dict[str, Any]]:
        tx.defer(
            "INSERT INTO workers (driver_id, status, status_since) VALUES ($1, 'offline', now())",
            f"ghost-{written}",
        )
        if written:
            await tx.flush()
        raise ApiError(409, "offer_closed", "offer has expired")

    first = await run_once(pool, principal, key, "digest", effect, optimistic=optimistic)
    again = await run_once(pool, principal, key, "digest", effect, optimistic=optimistic)
    assert (first.status, first.replayed) == (409, False)
    assert (again.status, again.body, again.replayed) == (409, first.body, True)
    ghost = await pool.fetchval(
        "SELECT count(*) FROM workers WHERE driver_id = $1", f"ghost-{written}"
    )
    assert ghost == 0
