"""What billing knows about trips, read from its tables in four queries for any number of trips:
the consumer settles trips from it, statements and the fare endpoint show them from it, so the
two can never price a trip from different facts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from polder.billing.domain.settlement import OfferMade, promised_eta_s
from polder.billing.domain.timeline import StateChange, epoch_ms
from polder.billing.domain.trips import OrderFacts
from polder.common.db import Connection, Pool
from polder.fares.tariff import Tariff, TariffBook


@dataclass(frozen=True, slots=True)
class TripInputs:
    """Everything a trip's fare is computed from."""

    changes: list[StateChange]
    order: OrderFacts
    tariff: Tariff
    no_show: bool
    promised_eta_s: float | None


@dataclass(frozen=True, slots=True)
class TripFacts:
    changes: Mapping[str, list[StateChange]]  # by trip id
    orders: Mapping[str, Any]  # order rows, by order id as text
    no_shows: set[str]
    offers: Mapping[str, list[OfferMade]]  # by order id as text

    def inputs(self, trip_id: str, tariffs: TariffBook) -> TripInputs | None:
        """The trip's inputs, or None while its order is not known yet."""
        changes = self.changes.get(trip_id, [])
        order_id = next((c.order_id for c in changes if c.order_id), None)
        row = self.orders.get(order_id.lower()) if order_id else None
        if row is None:
            return None
        order = OrderFacts.from_row(row)
        driver = next((c.driver_id for c in changes), "")
        return TripInputs(
            changes=changes,
            order=order,
            tariff=tariffs.get(row["city"], order.product, row["placed_at"]),
            no_show=order.order_id in self.no_shows,
            promised_eta_s=promised_eta_s(
                self.offers.get(order.order_id, []), driver, changes, trip_id
            ),
        )


async def load_trip_facts(conn: Connection | Pool, trip_ids: Sequence[str]) -> TripFacts:
    changes: dict[str, list[StateChange]] = defaultdict(list)
    for row in await conn.fetch(
        "SELECT event_id, at, data FROM driver_events WHERE data ->> 'trip_id' = ANY($1)",
        list(trip_ids),
    ):
        changes[row["data"]["trip_id"]].append(change_from_row(row))
    order_ids = sorted({c.order_id.lower() for cs in changes.values() for c in cs if c.order_id})
    orders = {
        str(row["order_id"]): row
        for row in await conn.fetch(
            "SELECT * FROM orders WHERE order_id = ANY($1::uuid[])", order_ids
        )
    }
    known = sorted(orders)
    return TripFacts(
        dict(changes), orders, await no_show_orders(conn, known), await offers_of(conn, known)
    )


def change_from_row(row: Any) -> StateChange:
    return StateChange.from_event(row["event_id"], int(row["at"].timestamp() * 1000), row["data"])


async def no_show_orders(conn: Connection | Pool, order_ids: list[Any]) -> set[str]:
    """Those of the orders cancelled because the customer did not come."""
    rows = await conn.fetch(
        "SELECT DISTINCT order_id::text FROM order_changes WHERE order_id = ANY($1::uuid[]) "
        "AND data ->> 'reason' = 'no_show'",
        [str(o) for o in order_ids],
    )
    return {r["order_id"] for r in rows}


async def offers_of(conn: Connection | Pool, order_ids: list[Any]) -> dict[str, list[OfferMade]]:
    """The offers made for each of the orders (by order id as text)."""
    out: dict[str, list[OfferMade]] = defaultdict(list)
    for r in await conn.fetch(
        "SELECT order_id::text, driver_id, made_at, pickup_eta_s FROM offers "
        "WHERE order_id = ANY($1::uuid[])",
        [str(o) for o in order_ids],
    ):
        out[r["order_id"]].append(
            OfferMade(r["order_id"], r["driver_id"], epoch_ms(r["made_at"]), r["pickup_eta_s"])
        )
    return out
