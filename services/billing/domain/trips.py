"""A trip's facts and final fare, from the worker's state changes and the order as placed.

Server times only: the wait at pickup is arrived_pickup → picked_up as dispatch stamped them,
so the worker and the customer see the same minutes (DESIGN.md §4).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from polder.billing.domain.policies_base import TripOutcome, TripRecord
from polder.billing.domain.segments import Product
from polder.billing.domain.timeline import StateChange
from polder.fares.fare import (
    CancelledByCustomer,
    Completed,
    Fare,
    NoShow,
    TripFacts,
    applied_surge,
    driver_was_late,
    final_fare,
)
from polder.fares.tariff import Tariff


@dataclass(frozen=True, slots=True)
class OrderFacts:
    order_id: str
    customer_id: str
    product: Product
    surge: Decimal
    distance_m: float  # the quote's road-corrected estimate, until traces measure the trip
    ready_at_ms: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> OrderFacts:
        quote = row["quote"]
        ready = row.get("ready_at")
        return cls(
            order_id=str(row["order_id"]),
            customer_id=row["customer_id"],
            product=row["kind"],
            surge=Decimal(str(quote["surge"])),
            distance_m=float(quote.get("distance_m", 0.0)),
            ready_at_ms=int(ready.timestamp() * 1000) if ready is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Trip:
    trip_id: str
    driver_id: str
    order: OrderFacts
    record: TripRecord
    facts: TripFacts
    fare: Fare
    pickup_wait_ms: int


_ENDS = {
    "completed": TripOutcome.COMPLETED,
    "cancelled_by_customer": TripOutcome.CANCELLED_BY_CUSTOMER,
    "cancelled_by_driver": TripOutcome.CANCELLED_BY_DRIVER,
}


def trip_from_changes(
    trip_id: str,
    changes: Iterable[StateChange],
    order: OrderFacts,
    tariff: Tariff,
    *,
    no_show: bool = False,
    promised_eta_s: float | None = None,
) -> Trip | None:
    """The trip as its state changes tell it, or None while it has not ended.

    ``promised_eta_s`` is the pickup ETA of the offer the worker accepted (dispatch's
    ``offer_made``): a customer who cancels is not charged when the driver was late, i.e. had
    not arrived by accepted + ETA + the tariff's ``driver_late_after_s`` (Uber and Lyft waive
    the fee when the driver is 5 min or more late: reference/pay-rules.md, "Cancellation and
    no-show fees"). Without it the driver counts as on time."""
    at: dict[str, int] = {}
    driver_id = ""
    for c in sorted(changes, key=lambda c: (c.at_ms, c.seq)):
        if c.trip_id == trip_id:
            at.setdefault(c.cause, c.at_ms)
            driver_id = c.driver_id
    end_cause = next((cause for cause in _ENDS if cause in at), None)
    if end_cause is None or "offer_accepted" not in at:
        return None
    accepted, ended = at["offer_accepted"], at[end_cause]
    outcome = (
        TripOutcome.NO_SHOW if no_show and end_cause == "cancelled_by_driver" else _ENDS[end_cause]
    )
    picked_up = at.get("picked_up")
    arrived = at.get("arrived_pickup")
    wait_end = picked_up if picked_up is not None else ended
    pickup_wait_ms = max(0, wait_end - arrived) if arrived is not None else 0
    p3_ms = max(0, ended - picked_up) if picked_up is not None else 0
    on_trip_ms = (
        max(0, at.get("arrived_dropoff", ended) - picked_up) if picked_up is not None else 0
    )
    p3_m = order.distance_m if outcome is TripOutcome.COMPLETED else 0.0
    facts = TripFacts(
        distance_m=p3_m,
        duration_s=on_trip_ms / 1000,
        surge=order.surge,
        pickup_wait_s=pickup_wait_ms / 1000,
        outcome=_fare_outcome(outcome, accepted, ended, arrived, tariff, promised_eta_s),
    )
    if outcome is TripOutcome.CANCELLED_BY_DRIVER:
        # the driver cancelled and it was no no-show: the customer owes nothing
        fare = Fare.of(tariff.currency, [], applied_surge(tariff, order.surge))
    else:
        fare = final_fare(tariff, facts)
    record = TripRecord(
        trip_id=trip_id,
        order_id=order.order_id,
        product=order.product,
        accepted_ms=accepted,
        completed_ms=ended,
        outcome=outcome,
        p3_distance_m=p3_m,
        p3_duration_ms=p3_ms,
        engaged_distance_m=p3_m,
        engaged_duration_ms=ended - accepted,
        fare=fare if fare.total_minor > 0 else None,
    )
    return Trip(trip_id, driver_id, order, record, facts, fare, pickup_wait_ms)


def _fare_outcome(
    outcome: TripOutcome,
    accepted: int,
    ended: int,
    arrived: int | None,
    tariff: Tariff,
    promised_eta_s: float | None,
) -> Completed | CancelledByCustomer | NoShow:
    if outcome is TripOutcome.NO_SHOW:
        return NoShow()
    if outcome is TripOutcome.CANCELLED_BY_CUSTOMER:
        since_s = (ended - accepted) / 1000
        late = promised_eta_s is not None and driver_was_late(
            tariff,
            promised_eta_s,
            since_assignment_s=since_s,
            # judged on the arrival if there was one before the cancellation
            arrived_after_s=(arrived - accepted) / 1000 if arrived is not None else None,
        )
        return CancelledByCustomer(since_assignment_s=since_s, driver_late=late)
    return Completed()
