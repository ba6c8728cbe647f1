"""Dispatch as deployed: the API process starts the matcher as a process of its own.

Batches run on the matcher's own clock here (a short window); the test only waits for their
results. Killing the matcher process must lose nothing: the API starts a new one, which
rebuilds its view of the workers from Postgres and the positions from the location stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import websockets

from polder.common.auth import issue_token
from polder.common.bus import Bus
from polder.common.children import ChildProcess
from polder.common.envelope import format_time
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DRIVER_LOCATIONS
from polder.dispatch.main import build_app
from tests.conftest import eventually
from tests.support import serve

pytestmark = pytest.mark.integration

CENTRE = (52.3676, 4.9041)


class Api:
    def __init__(self, base: str, client: httpx.AsyncClient, bus: Bus, settings: Settings):
        self.base, self.client, self.bus, self.settings = base, client, bus, settings

    async def call(self, method: str, path: str, role: str, sub: str, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {issue_token(self.settings, role, sub)}"}
        headers.update(kw.pop("headers", {}))
        return await self.client.request(method, f"{self.base}{path}", headers=headers, **kw)

    async def online(self, driver: str, lat: float, lng: float) -> None:
        r = await self.call(
            "POST", f"/v1/drivers/{driver}/status", "driver", driver, json={"status": "online"}
        )
        assert r.status_code == 200, r.text
        now = datetime.now(UTC)
        ping = {"lat": lat, "lng": lng, "recorded_at_ms": int(now.timestamp() * 1000)}
        data = {"driver_id": driver, "received_at": format_time(now), "pings": [ping]}
        event = self.bus.event("polder.location.pings_recorded.v1", driver, data, now)
        await self.bus.publish(DRIVER_LOCATIONS, driver, event)

    async def order(self, customer: str) -> str:
        body = {
            "kind": "ride",
            "pickup": {"lat": CENTRE[0] + 0.002, "lng": CENTRE[1]},
            "dropoff": {"lat": CENTRE[0] + 0.03, "lng": CENTRE[1] + 0.02},
        }
        r = await self.call(
            "POST",
            "/v1/orders",
            "customer",
            customer,
            json=body,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert r.status_code == 201, r.text
        order_id: str = r.json()["order_id"]
        return order_id

    async def offers(self, driver: str) -> list[dict[str, Any]]:
        r = await self.call("GET", f"/v1/drivers/{driver}/offers", "driver", driver)
        assert r.status_code == 200, r.text
        offers: list[dict[str, Any]] = r.json()["offers"]
        return offers


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[tuple[Api, ChildProcess]]:
    app = build_app(settings.model_copy(update={"batch_window_s": 0.2}), matcher="process")
    bus = Bus(settings, SchemaRegistry.load(), source="test")
    await bus.start()
    try:
        async with serve(app) as base, httpx.AsyncClient(timeout=15) as client:
            process = app.state.matcher_process
            yield Api(base, client, bus, settings), process
        assert not process.running  # stopped with the API
    finally:
        await bus.stop()


async def test_the_matcher_process_offers_pushes_and_survives_a_kill(
    api: tuple[Api, ChildProcess],
) -> None:
    d, process = api
    await eventually(lambda: _ready(d), until=lambda status: status == 200, within=30)
    await d.online("p-1", *CENTRE)
    token = issue_token(d.settings, "driver", "p-1")
    url = f"{d.base.replace('http', 'ws')}/v1/drivers/p-1/feed?token={token}"
    async with websockets.connect(url) as ws:
        await asyncio.sleep(0.2)
        first = await d.order("cust-p")
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=20))
    assert message["type"] == "offer" and message["offer"]["order_id"] == first
    [offer] = await d.offers("p-1")
    r = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", "p-1")
    assert r.status_code == 200, r.text

    async def metrics() -> str:
        return (await d.client.get(f"{d.base}/metrics")).text

    # The matcher's metrics and the API's, in one answer; offers counted by both processes.
    text = await eventually(
        metrics, until=lambda t: 'polder_dispatch_offers_total{outcome="made"} 1.0' in t
    )
    assert 'polder_dispatch_offers_total{outcome="accepted"} 1.0' in text
    assert "polder_dispatch_order_to_offer_seconds_count 1.0" in text
    assert "polder_dispatch_batch_solve_seconds_count" in text

    # Killed: a new matcher process takes over, with p-2 (online while it was down) available.
    assert process.process is not None and process.starts == 1
    os.kill(process.process.pid, signal.SIGKILL)
    await d.online("p-2", CENTRE[0] + 0.001, CENTRE[1])
    second = await d.order("cust-p")
    [offer] = await eventually(lambda: d.offers("p-2"), until=lambda o: len(o) == 1, within=30)
    assert offer["order_id"] == second and process.starts == 2
    assert await d.offers("p-1") == []  # on its trip: not available


async def _ready(d: Api) -> int:
    return (await d.client.get(f"{d.base}/readyz")).status_code
