"""A customer's identity and live position are never shown to a worker (issue 7, Privacy).

A ride through dispatch and billing for real; every answer the worker gets — the offer on the
feed and in the offer list, the accept, each trip step, the order as its assigned driver sees
it, the trip's fare, the statement and the data export — is collected and searched: no
customer id, no key naming a customer, and no position but the job's own pickup and drop-off
(the customer's chosen points: the job) and the worker's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import websockets

from polder.common.auth import issue_token
from polder.common.settings import Settings
from tests.conftest import eventually
from tests.integration.test_billing import billing_service
from tests.integration.test_dispatch import CENTRE, running

pytestmark = pytest.mark.integration

CUSTOMER = "cust-7f3a9e-private"
DRIVER = "drv-privacy"


def walk(doc: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key path, value) in a JSON document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield f"{path}.{k}", v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from walk(v, f"{path}[{i}]")


def positions(doc: Any) -> set[tuple[float, float]]:
    return {
        (round(v["lat"], 6), round(v["lng"], 6))
        for _, v in walk({"": doc})
        if isinstance(v, dict) and "lat" in v and "lng" in v
    }


async def test_nothing_a_worker_sees_names_or_locates_the_customer(settings: Settings) -> None:
    seen: dict[str, Any] = {}
    async with running(settings) as d, billing_service(settings) as b:
        await d.online(DRIVER, *CENTRE)
        token = issue_token(settings, "driver", DRIVER)
        url = f"{d.base.replace('http', 'ws')}/v1/drivers/{DRIVER}/feed?token={token}"
        async with websockets.connect(url) as ws:
            await asyncio.sleep(0.1)
            created = await d.order(CUSTOMER)
            await d.batch()
            seen["feed"] = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        order_id = created["order_id"]
        seen["offers"] = (
            await d.call("GET", f"/v1/drivers/{DRIVER}/offers", "driver", DRIVER)
        ).json()
        [offer] = seen["offers"]["offers"]
        r = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", DRIVER)
        assert r.status_code == 200, r.text
        seen["accept"] = r.json()
        trip_id = seen["accept"]["trip_id"]
        for step in ("arrived_pickup", "picked_up", "arrived_dropoff", "completed"):
            r = await d.call(
                "POST", f"/v1/trips/{trip_id}/events", "driver", DRIVER, json={"type": step}
            )
            assert r.status_code == 200, r.text
            seen[step] = r.json()
        r = await d.call("GET", f"/v1/orders/{order_id}", "driver", DRIVER)
        assert r.status_code == 200, r.text
        seen["order"] = r.json()

        async def fare() -> Any:
            return await b.get(f"/v1/trips/{trip_id}/fare", "driver", DRIVER)

        seen["fare"] = (await eventually(fare, until=lambda r: r.status_code == 200)).json()
        now = datetime.now(UTC)
        window = {"from": (now - timedelta(hours=1)).isoformat(), "to": now.isoformat()}
        for name, path in (
            ("statement", f"/v1/drivers/{DRIVER}/statement"),
            ("export", f"/v1/drivers/{DRIVER}/export"),
        ):
            r = await b.get(path, "driver", DRIVER, params=window)
            assert r.status_code == 200, r.text
            seen[name] = r.json()

        # the customer is known to the system (their own view names them) ...
        mine = await d.call("GET", f"/v1/orders/{order_id}", "customer", CUSTOMER)
        assert mine.status_code == 200
        assert seen["fare"]["trip_id"] == trip_id and seen["export"]["postings"]
        # ... and in nothing the worker got
        text = json.dumps(seen)
        assert CUSTOMER not in text
        assert not [p for p, _ in walk(seen) if "customer" in p.lower()]
        pickup = (round(CENTRE[0] + 0.002, 6), round(CENTRE[1], 6))
        dropoff = (round(CENTRE[0] + 0.03, 6), round(CENTRE[1] + 0.02, 6))
        own = {(round(CENTRE[0], 6), round(CENTRE[1], 6))}
        for name, doc in seen.items():
            assert positions(doc) <= {pickup, dropoff, *own}, name
        assert {pickup, dropoff} <= positions(seen["offers"]) and positions(seen["feed"])
