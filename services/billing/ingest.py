"""The billing consumer: store each fact once, then settle the trips that just became complete.

One transaction per batch: the processed-event marks, the stored facts, the ledger postings and
their outbox rows commit together, and only then are the offsets committed. A redelivered or
replayed event finds its mark and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from polder.billing.domain.ledger import trip_settlement
from polder.billing.domain.timeline import StateChange
from polder.billing.domain.trips import OrderFacts, trip_from_changes
from polder.billing.ledger import post
from polder.billing.metrics import BillingMetrics
from polder.common.bus import Bus, Received
from polder.common.db import Connection, Pool
from polder.common.outbox import OutboxRelay, Outgoing, add_to_outbox
from polder.fares.tariff import TariffBook

CONSUMER = "billing"
STATE_CHANGED = "polder.driver.state_changed.v1"
ORDER_PLACED = "polder.order.placed.v1"
ORDER_CHANGED = "polder.order.status_changed.v1"
TRIP_ENDS = ("completed", "cancelled_by_customer", "cancelled_by_driver")


class BillingIngest:
    def __init__(
        self,
        pool: Pool,
        bus: Bus,
        relay: OutboxRelay,
        tariffs: TariffBook,
        driver_share: Decimal,
        metrics: BillingMetrics,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.relay = relay
        self.tariffs = tariffs
        self.driver_share = driver_share
        self.metrics = metrics

    async def __call__(self, records: Sequence[Received]) -> None:
        outgoing: list[Outgoing] = []
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await self._mark(conn, records)
            ended_trips: set[str] = set()
            placed_orders: set[str] = set()
            for r in records:
                if r.event.id not in fresh:
                    continue
                fresh.discard(r.event.id)  # a batch may carry the same event twice
                await self._store(conn, r)
                data = r.event.data
                if (
                    r.event.type == STATE_CHANGED
                    and data["cause"] in TRIP_ENDS
                    and data.get("trip_id")
                ):
                    ended_trips.add(data["trip_id"])
                elif r.event.type == ORDER_PLACED or (
                    r.event.type == ORDER_CHANGED and data["to"] == "cancelled"
                ):
                    # the order, or why it was cancelled (a no-show), may come after the trip's end
                    placed_orders.add(data["order_id"])
            outgoing = await self._settle(conn, ended_trips, placed_orders)
            await add_to_outbox(conn, self.bus, outgoing)
        if outgoing:
            self.relay.notify()

    async def _mark(self, conn: Connection, records: Sequence[Received]) -> set[str]:
        rows = await conn.fetch(
            "INSERT INTO processed_events (consumer, event_id) SELECT $1, unnest($2::text[]) "
            "ON CONFLICT DO NOTHING RETURNING event_id",
            CONSUMER,
            list({r.event.id for r in records}),
        )
        fresh = {row["event_id"] for row in rows}
        self.metrics.duplicates.inc(len(records) - len(fresh))
        return fresh

    async def _store(self, conn: Connection, r: Received) -> None:
        e, data = r.event, r.event.data
        if e.type == STATE_CHANGED:
            await conn.execute(
                "INSERT INTO driver_events (event_id, driver_id, seq, at, data) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                e.id,
                data["driver_id"],
                data["seq"],
                e.time,
                dict(data),
            )
        elif e.type == ORDER_PLACED:
            await conn.execute(
                "INSERT INTO orders (order_id, customer_id, kind, city, ready_at, quote, "
                "placed_at) VALUES ($1::uuid, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                data["order_id"],
                data["customer_id"],
                data["kind"],
                data["city"],
                _time(data.get("ready_at")),
                dict(data["quote"]),
                e.time,
            )
        elif e.type == ORDER_CHANGED:
            await conn.execute(
                "INSERT INTO order_changes (event_id, order_id, at, data) "
                "VALUES ($1, $2::uuid, $3, $4) ON CONFLICT DO NOTHING",
                e.id,
                data["order_id"],
                e.time,
                dict(data),
            )
        else:
            return
        self.metrics.events_stored.labels(e.type).inc()

    async def _settle(self, conn: Connection, trips: set[str], orders: set[str]) -> list[Outgoing]:
        """Post the fare of every ended trip whose order is known and that is not yet posted
        (the order and the trip's end travel on different topics: either may come first)."""
        if not trips and not orders:
            return []
        ends = await conn.fetch(
            "SELECT e.event_id, e.data ->> 'trip_id' AS trip_id, o.* FROM driver_events e "
            "JOIN orders o ON o.order_id = (e.data ->> 'order_id')::uuid "
            "WHERE e.data ->> 'cause' = ANY($3::text[]) "
            "AND (e.data ->> 'trip_id' = ANY($1::text[]) OR o.order_id = ANY($2::uuid[])) "
            "AND e.data ->> 'trip_id' IS NOT NULL",
            list(trips),
            list(orders),
            list(TRIP_ENDS),
        )
        out: list[Outgoing] = []
        for end in ends:
            event = await self._settle_trip(conn, end)
            if event is not None:
                out.append(event)
        return out

    async def _settle_trip(self, conn: Connection, end: Any) -> Outgoing | None:
        changes = [
            change_from_row(row)
            for row in await conn.fetch(
                "SELECT event_id, at, data FROM driver_events WHERE data ->> 'trip_id' = $1",
                end["trip_id"],
            )
        ]
        order = OrderFacts.from_row(end)
        no_show = await conn.fetchval(
            "SELECT 1 FROM order_changes WHERE order_id = $1 AND data ->> 'reason' = 'no_show'",
            end["order_id"],
        )
        placed = end["placed_at"]
        tariff = self.tariffs.get(end["city"], order.product, placed)
        trip = trip_from_changes(end["trip_id"], changes, order, tariff, no_show=bool(no_show))
        if trip is None or trip.fare.total_minor == 0:
            return None
        posting = trip_settlement(
            fare=trip.fare,
            driver_share=self.driver_share,
            customer_id=order.customer_id,
            driver_id=trip.driver_id,
            trip_id=trip.trip_id,
            occurred_at=datetime.fromtimestamp((trip.record.completed_ms or 0) / 1000, UTC),
            caused_by=end["event_id"],
        )
        event = await post(conn, self.bus, posting)
        if event is not None:
            self.metrics.postings.labels(posting.kind).inc()
        return event


def change_from_row(row: Any) -> StateChange:
    return StateChange.from_event(row["event_id"], int(row["at"].timestamp() * 1000), row["data"])


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
