"""A worker's shift through the real APIs of all three services (issue 4 "Tests"): status and
trip steps through dispatch's API, positions through the location service's HTTP API (which
publishes them on polder.driver.locations for dispatch and billing alike), and the statement
from billing's API, for the worker and for an operator. Its seconds must match the timeline
the worker's published state changes describe, walked here independently of billing."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from polder.common.settings import Settings
from polder.common.topics import DRIVER_EVENTS
from tests.conftest import eventually
from tests.integration.test_billing import billing_service
from tests.integration.test_dispatch import CENTRE, running
from tests.integration.test_location_api import start as location_service
from tests.support import on_shift, read_topic

pytestmark = pytest.mark.integration

STATES = ("idle", "offered", "break", "en_route_pickup", "at_pickup", "on_trip", "at_dropoff")


def walk(changes: list[tuple[datetime, dict[str, Any]]], until: datetime) -> dict[str, float]:
    """Seconds in each state by the plainest walk over the worker's changes (server times)."""
    spent: dict[str, float] = defaultdict(float)
    ordered = sorted(changes, key=lambda c: c[1]["seq"])
    for (at, data), nxt in zip(ordered, [*ordered[1:], None], strict=True):
        end = until if nxt is None else nxt[0]
        spent[data["to"]] += (end - at).total_seconds()
    return spent


async def test_a_shift_through_the_real_apis_ends_in_a_statement_matching_its_timeline(
    settings: Settings,
) -> None:
    driver, customer = "drv-shift", "cust-shift"
    async with (
        running(settings) as d,
        billing_service(settings) as b,
        location_service(settings) as loc,
    ):
        where = list(CENTRE)

        async def move(metres: float = 12.0) -> None:
            """The phone reports a position a little further on (well below any speed limit)."""
            await asyncio.sleep(0.3)
            where[0] += metres / 111_000
            now = datetime.now(UTC).isoformat()
            r = await loc.post_pings(  # online through dispatch, not the test helper
                driver, [{"lat": where[0], "lng": where[1], "recorded_at": now}], online=False
            )
            assert r.status_code == 202 and r.json()["accepted"] == 1, r.text

        r = await d.call(
            "POST", f"/v1/drivers/{driver}/status", "driver", driver, json={"status": "online"}
        )
        assert r.status_code == 200, r.text
        await on_shift(loc.app, driver)  # dispatch's status change reached the location service
        await move()

        async def position() -> Any:
            return d.rt.matcher.positions.get(driver)

        await eventually(position, until=lambda p: p is not None)  # dispatch heard the phone
        await d.order(customer)
        await d.batch()
        [offer] = await d.offers(driver)
        r = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", driver)
        assert r.status_code == 200, r.text
        trip_id = r.json()["trip_id"]
        for step in ("arrived_pickup", "picked_up", "arrived_dropoff", "completed"):
            for _ in range(3):
                await move()
            r = await d.call(
                "POST", f"/v1/trips/{trip_id}/events", "driver", driver, json={"type": step}
            )
            assert r.status_code == 200, r.text
        await move()
        r = await d.call(
            "POST", f"/v1/drivers/{driver}/status", "driver", driver, json={"status": "offline"}
        )
        assert r.status_code == 200, r.text

        # what dispatch published: the worker's timeline, from online to offline
        records = await read_topic(
            settings,
            DRIVER_EVENTS,
            until=lambda rs: any(x.event.data["to"] == "offline" for x in rs),
        )
        changes = [(x.event.time, dict(x.event.data)) for x in records if x.key == driver]

        async def settled() -> tuple[int, int, int]:
            return (
                await b.pool.fetchval("SELECT count(*) FROM driver_events"),
                await b.pool.fetchval("SELECT count(*) FROM ledger_transactions"),
                await b.pool.fetchval("SELECT count(*) FROM pings WHERE driver_id = $1", driver),
            )

        # every change stored, the trip posted, and the phone's positions kept
        await eventually(settled, until=lambda s: s[0] == len(changes) and s[1] == 1 and s[2] > 0)

        now = datetime.now(UTC)
        window = {"from": (now - timedelta(hours=1)).isoformat(), "to": now.isoformat()}
        path = f"/v1/drivers/{driver}/statement"
        mine = await b.get(path, "driver", driver, params=window)
        ops = await b.get(path, "operator", "ops", params=window)
        assert mine.status_code == ops.status_code == 200, (mine.text, ops.text)
        assert mine.json() == ops.json()
        t = mine.json()["time"]
        expected = walk(changes, now)
        for state in STATES:
            assert t[f"{state}_s"] == pytest.approx(expected[state], abs=0.001), state
        online = sum(expected[s] for s in STATES if s != "break")
        assert t["online_s"] == pytest.approx(online, abs=0.001)
        assert t["on_trip_s"] > 0 and t["at_pickup_s"] > 0 and t["idle_s"] > 0
        waiting = mine.json()["waiting"]
        assert waiting["paid_s"] + waiting["unpaid_s"] == pytest.approx(
            waiting["total_s"], abs=0.01
        )
