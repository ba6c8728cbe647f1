"""Fan-out of offer news to the drivers' WebSocket feeds, from the ``polder.dispatch`` topic.

Offers are made by the matcher (in its own process) and answered, expired or withdrawn by
whichever process handled that; every API process reads the topic and pushes to the feeds
connected to it. Each connected feed has a bounded queue; a slow client loses the oldest news
rather than holding memory (it can always GET its offers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from polder.common.bus import Received
from polder.common.db import Pool
from polder.dispatch.handlers import offer_view

OFFER_VIEW_SQL = (
    "SELECT f.*, o.kind, o.pickup_lat, o.pickup_lng, o.dropoff_lat, o.dropoff_lng "
    "FROM offers f JOIN orders o USING (order_id) WHERE f.offer_id = ANY($1::uuid[])"
)


class Feed:
    def __init__(self, queue_size: int = 100) -> None:
        self.queue_size = queue_size
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}

    @contextlib.contextmanager
    def subscribe(self, driver_id: str) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.queue_size)
        self._subscribers.setdefault(driver_id, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(driver_id, set())
            subscribers.discard(queue)
            if not subscribers:
                self._subscribers.pop(driver_id, None)

    def publish(self, driver_id: str, message: dict[str, Any]) -> None:
        for queue in self._subscribers.get(driver_id, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)

    def connected(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def fan_out(self, pool: Pool, records: Sequence[Received]) -> None:
        """Push the offer events of connected drivers: a new offer with what the app shows
        (read from Postgres, one query per batch of records), a closed one as it closed."""
        subscribed = self._subscribers
        made = [
            r.event.data["offer_id"]
            for r in records
            if r.event.type == "polder.dispatch.offer_made.v1"
            and r.event.data["driver_id"] in subscribed
        ]
        views = {}
        if made:
            views = {str(row["offer_id"]): row for row in await pool.fetch(OFFER_VIEW_SQL, made)}
        for r in records:
            data = r.event.data
            if data["driver_id"] not in subscribed:
                continue
            if r.event.type == "polder.dispatch.offer_made.v1":
                row = views.get(data["offer_id"])
                if row is not None:
                    self.publish(data["driver_id"], {"type": "offer", "offer": offer_view(row)})
            elif r.event.type == "polder.dispatch.offer_resolved.v1":
                message = {
                    "type": "offer_closed",
                    "offer_id": data["offer_id"],
                    "outcome": data["outcome"],
                }
                self.publish(data["driver_id"], message)
