"""Placing and reading orders: the quote comes from the same fare code billing uses."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import h3.api.basic_int as h3

from polder.common.bus import Bus
from polder.common.envelope import format_time
from polder.common.errors import ApiError
from polder.common.geoindex import haversine_m
from polder.common.settings import Settings
from polder.common.topics import ORDERS
from polder.dispatch.domain.surge import SurgeModel
from polder.dispatch.models import OrderIn
from polder.dispatch.transitions import Conn, Row
from polder.fares.fare import Fare, quote
from polder.fares.tariff import TariffBook, UnknownTariff

SURGE_RESOLUTION = 7


class OrderDesk:
    def __init__(
        self, bus: Bus, tariffs: TariffBook, surge: SurgeModel, settings: Settings
    ) -> None:
        self.bus = bus
        self.tariffs = tariffs
        self.surge = surge
        self.settings = settings

    def estimate(self, body: OrderIn, now: datetime) -> tuple[Fare, float, float]:
        """The fare for the straight-line trip, road-corrected, at the pickup cell's surge."""
        straight = haversine_m(body.pickup.lat, body.pickup.lng, body.dropoff.lat, body.dropoff.lng)
        distance_m = straight * self.settings.road_factor
        duration_s = distance_m / self.settings.city_speed_mps
        cell = h3.latlng_to_cell(body.pickup.lat, body.pickup.lng, SURGE_RESOLUTION)
        multiplier = self.surge.multiplier(cell, now.timestamp())
        try:
            tariff = self.tariffs.get(self.settings.city, body.kind, now)
        except UnknownTariff as exc:
            raise ApiError(422, "no_tariff", str(exc)) from exc
        return quote(tariff, distance_m, duration_s, multiplier), distance_m, duration_s

    async def place(
        self, conn: Conn, customer_id: str, body: OrderIn, now: datetime
    ) -> tuple[int, dict[str, Any], list[Any]]:
        self._check(body, now)
        fare, distance_m, duration_s = self.estimate(body, now)
        order_id = uuid.uuid4()
        quote_doc = {
            "currency": fare.currency,
            "amount_minor": fare.total_minor,
            "surge": str(fare.surge),  # as applied, after the tariff's cap: locked for billing
            "distance_m": round(distance_m, 1),
            "duration_s": round(duration_s, 1),
            "lines": fare.to_dict()["lines"],
        }
        conn.defer(
            "INSERT INTO orders (order_id, customer_id, kind, city, pickup_lat, pickup_lng, "
            "dropoff_lat, dropoff_lng, ready_at, scheduled_for, status, created_at, updated_at, "
            "search_deadline, quote) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
            "'searching', $11, $11, $12, $13)",
            order_id,
            customer_id,
            body.kind,
            self.settings.city,
            body.pickup.lat,
            body.pickup.lng,
            body.dropoff.lat,
            body.dropoff.lng,
            body.ready_at,
            body.scheduled_for,
            now,
            (body.scheduled_for or now) + timedelta(seconds=self.settings.search_timeout_s),
            quote_doc,
        )
        event = self.bus.event(
            "polder.order.placed.v1",
            str(order_id),
            {
                "order_id": str(order_id),
                "customer_id": customer_id,
                "kind": body.kind,
                "city": self.settings.city,
                "pickup": body.pickup.model_dump(),
                "dropoff": body.dropoff.model_dump(),
                "ready_at": format_time(body.ready_at) if body.ready_at else None,
                "scheduled_for": format_time(body.scheduled_for) if body.scheduled_for else None,
                "quote": quote_doc,
            },
            now,
        )
        response = {
            "order_id": str(order_id),
            "status": "searching",
            "quote": {k: quote_doc[k] for k in ("currency", "amount_minor", "surge")},
        }
        return 201, response, [(ORDERS, str(order_id), event)]

    def record_demand(self, body: OrderIn, now: datetime) -> None:
        """Count a placed order in its cell's demand (after it committed: a retry of a stored
        order, or an attempt rolled back, is not demand)."""
        self.surge.record_demand(
            h3.latlng_to_cell(body.pickup.lat, body.pickup.lng, SURGE_RESOLUTION), now.timestamp()
        )

    def _check(self, body: OrderIn, now: datetime) -> None:
        if body.kind == "ride" and body.ready_at is not None:
            raise ApiError(422, "invalid_request", "ready_at is for deliveries only")
        for name in ("ready_at", "scheduled_for"):
            value = getattr(body, name)
            if value is not None and value > now + timedelta(days=7):
                raise ApiError(422, "invalid_request", f"{name} is more than 7 days ahead")


def order_view(r: Row) -> dict[str, Any]:
    q = r["quote"]
    return {
        "order_id": str(r["order_id"]),
        "status": r["status"],
        "kind": r["kind"],
        "pickup": {"lat": r["pickup_lat"], "lng": r["pickup_lng"]},
        "dropoff": {"lat": r["dropoff_lat"], "lng": r["dropoff_lng"]},
        "quote": {
            "currency": q["currency"],
            "amount_minor": q["amount_minor"],
            "surge": q["surge"],
        },
        "created_at": r["created_at"],
        "ready_at": r["ready_at"],
        "scheduled_for": r["scheduled_for"],
        "driver_id": r["driver_id"],
        "trip_id": str(r["trip_id"]) if r["trip_id"] else None,
        "pickup_eta_s": r["pickup_eta_s"],
        "assigned_at": r["assigned_at"],
    }
