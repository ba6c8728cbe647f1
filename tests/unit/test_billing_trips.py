"""A trip's fare from its state changes: lateness and cancellations, hand-computed.

Tariff: tariffs.json, amsterdam ride 2025: cancellation fee EUR 5.00 (500) when the customer
cancels more than 120 s after assignment (cancellation_free_s), unless the driver is late:
not arrived by accepted + promised pickup ETA + 300 s (driver_late_after_s). Uber and Lyft
waive the fee when the driver is 5 min or more late (reference/pay-rules.md, "Cancellation and
no-show fees"). The ETA is the one dispatch promised with the accepted offer (offer_made).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from polder.billing.domain.settlement import OfferMade, promised_eta_s, settle_trip
from polder.billing.domain.timeline import StateChange
from polder.billing.domain.trips import OrderFacts, trip_from_changes
from polder.fares.fare import LineCode
from polder.fares.tariff import load_tariffs

T0 = 1_750_000_000_000
TARIFF = load_tariffs().get("amsterdam", "ride", datetime.fromtimestamp(T0 / 1000, UTC))
ORDER = OrderFacts("o", "cust", "ride", Decimal("1.0"), 4_000.0)


def change(seq: int, s: float, from_: str, to: str, cause: str) -> StateChange:
    return StateChange(
        event_id=f"e{seq}",
        driver_id="d",
        seq=seq,
        at_ms=T0 + int(s * 1000),
        from_=from_,
        to=to,
        cause=cause,
        order_id="o",
        trip_id="t",
        product="ride",
    )


def cancelled_by_customer(after_s: float, arrived_s: float | None = None) -> list[StateChange]:
    out = [change(1, 0, "offered", "en_route_pickup", "offer_accepted")]
    if arrived_s is not None:
        out.append(change(2, arrived_s, "en_route_pickup", "at_pickup", "arrived_pickup"))
    state = "at_pickup" if arrived_s is not None else "en_route_pickup"
    out.append(change(len(out) + 1, after_s, state, "idle", "cancelled_by_customer"))
    return out


@pytest.mark.parametrize(
    ("eta_s", "cancel_s", "arrived_s", "fee"),
    [
        # not arrived: judged at the cancellation, 600 s > 240 + 300 → late, no fee
        (240.0, 600.0, None, 0),
        # not arrived, 600 s <= 400 + 300 → on time, fee
        (400.0, 600.0, None, 500),
        # arrived at 540 s = 240 + 300 exactly → on time; cancelled at 900 s → fee
        (240.0, 900.0, 540.0, 500),
        # arrived at 541 s > 540 → late, no fee even though the customer cancelled later
        (240.0, 900.0, 541.0, 0),
        # cancelled 120 s after assignment: inside the free period, on time or not
        (0.0, 120.0, None, 0),
        # no ETA known: counted as on time (settle_trip waits for it instead, below)
        (None, 600.0, None, 500),
    ],
)
def test_the_cancellation_fee_is_waived_when_the_driver_is_late(
    eta_s: float | None, cancel_s: float, arrived_s: float | None, fee: int
) -> None:
    trip = trip_from_changes(
        "t", cancelled_by_customer(cancel_s, arrived_s), ORDER, TARIFF, promised_eta_s=eta_s
    )
    assert trip is not None
    assert trip.fare.amount(LineCode.CANCELLATION_FEE) == fee
    assert trip.fare.total_minor == fee


def settle(changes: list[StateChange], eta_s: float | None) -> int | None:
    posting = settle_trip(
        trip_id="t",
        end_event_id=changes[-1].event_id,
        changes=changes,
        order=ORDER,
        tariff=TARIFF,
        no_show=False,
        driver_share=Decimal("0.75"),
        promised_eta_s=eta_s,
    )
    return None if posting is None else posting.entries[0].amount_minor


def test_a_fee_waits_for_the_promised_eta_and_a_free_cancellation_does_not() -> None:
    late_cancel = cancelled_by_customer(600.0)
    assert settle(late_cancel, None) is None  # a fee unless late: the ETA decides, wait
    assert settle(late_cancel, 400.0) == 500  # on time: the customer pays
    assert settle(late_cancel, 240.0) is None  # late: nothing to charge, nothing posted
    assert settle(cancelled_by_customer(100.0), None) is None  # free period: nothing due


def test_a_driver_cancelling_without_a_no_show_costs_the_customer_nothing() -> None:
    changes = [
        change(1, 0, "offered", "en_route_pickup", "offer_accepted"),
        change(2, 300, "en_route_pickup", "at_pickup", "arrived_pickup"),
        change(3, 700, "at_pickup", "idle", "cancelled_by_driver"),
    ]
    plain = trip_from_changes("t", changes, ORDER, TARIFF)
    assert plain is not None and plain.fare.total_minor == 0 and plain.fare.lines == ()
    # a no-show after 400 s >= 300 s of waiting (no_show_wait_s): the no-show fee, 500
    no_show = trip_from_changes("t", changes, ORDER, TARIFF, no_show=True)
    assert no_show is not None and no_show.fare.amount(LineCode.NO_SHOW_FEE) == 500


def test_the_promised_eta_is_the_accepted_offers() -> None:
    changes = cancelled_by_customer(600.0)
    offers = [
        OfferMade("o", "d", T0 - 90_000, 100.0),  # an earlier offer to the same driver
        OfferMade("o", "d", T0 - 10_000, 200.0),  # the one accepted at T0
        OfferMade("o", "other", T0 - 5_000, 300.0),  # to someone else
        OfferMade("o", "d", T0 + 1_000, 400.0),  # after the acceptance: not this trip's
    ]
    assert promised_eta_s(offers, "d", changes, "t") == 200.0
    assert promised_eta_s(offers[2:], "d", changes, "t") is None
    assert promised_eta_s(offers, "d", changes[1:], "t") is None  # acceptance unknown yet
