"""When an ended trip is posted to the ledger, and what is posted: pure.

The consumer calls ``settle_trip`` for every trip a batch touched (any of its steps, its end,
its order or the order's cancellation arriving), with everything stored about the trip so far.
A trip is posted only once its facts are **complete**: the worker's accept and end are known
and no state change between them is missing (the worker's ``seq`` has no gap there; every
change in between belongs to the trip). Posting earlier would price a trip from partial facts
(a missing ``arrived_pickup`` drops the wait fee) under an id that makes the posting final.
Since every step re-checks its trip, the trip is posted when its last missing fact arrives,
whatever the delivery order, and the posting is the same as with an in-order delivery.

A customer's cancellation after the free period is charged only if the driver was not late,
which only the pickup ETA of the accepted offer tells (dispatch's ``offer_made`` on
polder.dispatch, another topic): such a trip also waits for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from polder.billing.domain.ledger import Posting, trip_settlement
from polder.billing.domain.policies_base import TripOutcome
from polder.billing.domain.timeline import StateChange
from polder.billing.domain.trips import OrderFacts, trip_from_changes
from polder.fares.tariff import Tariff

TRIP_ENDS = ("completed", "cancelled_by_customer", "cancelled_by_driver")


def trip_facts_complete(trip_id: str, changes: Iterable[StateChange]) -> bool:
    """The trip's accept and end are both known, with every seq between them."""
    mine = [c for c in changes if c.trip_id == trip_id]
    accepted = [c.seq for c in mine if c.cause == "offer_accepted"]
    ends = [c.seq for c in mine if c.cause in TRIP_ENDS]
    if not accepted or not ends:
        return False
    first, last = min(accepted), min(ends)
    return set(range(first, last + 1)) <= {c.seq for c in mine}


def settle_trip(
    *,
    trip_id: str,
    end_event_id: str,
    changes: Iterable[StateChange],
    order: OrderFacts,
    tariff: Tariff,
    no_show: bool,
    driver_share: Decimal,
    promised_eta_s: float | None,
) -> Posting | None:
    """The trip's settlement posting, or None: facts incomplete, or nothing to charge."""
    changes = list(changes)
    if not trip_facts_complete(trip_id, changes):
        return None
    trip = trip_from_changes(
        trip_id, changes, order, tariff, no_show=no_show, promised_eta_s=promised_eta_s
    )
    if trip is None:
        return None
    if (
        promised_eta_s is None
        and trip.record.outcome is TripOutcome.CANCELLED_BY_CUSTOMER
        and trip.fare.total_minor > 0
    ):
        return None  # a fee is due unless the driver was late: wait for the promised ETA
    if trip.fare.total_minor == 0:
        return None
    return trip_settlement(
        fare=trip.fare,
        driver_share=driver_share,
        customer_id=order.customer_id,
        driver_id=trip.driver_id,
        trip_id=trip.trip_id,
        occurred_at=datetime.fromtimestamp((trip.record.completed_ms or 0) / 1000, UTC),
        caused_by=end_event_id,
    )


@dataclass(frozen=True, slots=True)
class OfferMade:
    """What billing keeps of dispatch's ``offer_made``: who was offered the order, when, and
    the pickup ETA promised with it."""

    order_id: str
    driver_id: str
    made_ms: int
    pickup_eta_s: float


def promised_eta_s(
    offers: Iterable[OfferMade], driver_id: str, changes: Iterable[StateChange], trip_id: str
) -> float | None:
    """The ETA of the offer the worker accepted: the latest made to them for the trip's order
    at or before the acceptance; None while that offer is not known."""
    accepted = min(
        (c.at_ms for c in changes if c.trip_id == trip_id and c.cause == "offer_accepted"),
        default=None,
    )
    if accepted is None:
        return None
    mine = [o for o in offers if o.driver_id == driver_id and o.made_ms <= accepted]
    return max(mine, key=lambda o: o.made_ms).pickup_eta_s if mine else None
