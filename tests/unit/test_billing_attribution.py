"""Wait attribution at pickup: merchant, customer or platform (issue 4 "Time").

The rule (``polder.billing.domain.attribution``): a ride's wait is the customer's; a delivery's
wait before ``ready_at`` is the platform's (dispatched too early, DESIGN.md §6), from
``ready_at`` on the merchant's; a delivery without ``ready_at`` was ready when placed, so its
wait is the merchant's. Grace (ride 120 s, delivery 300 s) splits the same total independently.
Times are seconds after T0.
"""

from __future__ import annotations

import pytest

from polder.billing.domain.attribution import PickupWait, attribute_pickup_wait
from polder.billing.domain.segments import Product, Segment, SegmentKind

K = SegmentKind
T0 = 1_750_000_000_000
S = 1000


def at(seconds: float) -> int:
    return T0 + int(seconds * S)


def pickup(product: Product, start_s: float, grace_end_s: float, end_s: float) -> list[Segment]:
    """The at-pickup segments of trip t, split at ``grace_end_s`` as the timeline does."""

    def one(kind: SegmentKind, a: float, b: float) -> Segment:
        return Segment("d", kind, at(a), at(b), trip_id="t", product=product)

    segs = []
    if start_s < grace_end_s:
        segs.append(one(K.AT_PICKUP_WITHIN_GRACE, start_s, min(end_s, grace_end_s)))
    if end_s > grace_end_s:
        segs.append(one(K.AT_PICKUP_BEYOND_GRACE, max(start_s, grace_end_s), end_s))
    return segs


def test_a_riders_lateness_is_the_customers_and_grace_splits_who_pays() -> None:
    # Ride: driver arrives at 0, rider boards at 200. All 200 s are the customer's; 120 s of it
    # free (grace), 80 s billable (DESIGN.md §4, pay-rules.md §3).
    wait = attribute_pickup_wait(pickup("ride", 0, 120, 200), "ride", None)
    assert wait == PickupWait(
        total_ms=200 * S,
        merchant_ms=0,
        customer_ms=200 * S,
        platform_ms=0,
        within_grace_ms=120 * S,
        beyond_grace_ms=80 * S,
    )


def test_a_courier_sent_too_early_waits_on_the_platform_then_on_the_merchant() -> None:
    # Delivery: arrives at 0, food promised for 240, handed over at 420. [0, 240) the platform
    # (it sent the courier before ready_at), [240, 420) the merchant (food due, not handed over).
    wait = attribute_pickup_wait(pickup("delivery", 0, 300, 420), "delivery", at(240))
    assert (wait.platform_ms, wait.merchant_ms, wait.customer_ms) == (240 * S, 180 * S, 0)
    assert (wait.within_grace_ms, wait.beyond_grace_ms) == (300 * S, 120 * S)


def test_a_courier_arriving_after_ready_at_waits_on_the_merchant() -> None:
    wait = attribute_pickup_wait(pickup("delivery", 0, 300, 90), "delivery", at(-60))
    assert (wait.total_ms, wait.merchant_ms, wait.platform_ms) == (90 * S, 90 * S, 0)


def test_food_handed_over_before_ready_at_leaves_it_all_to_the_platform() -> None:
    # Picked up at 120 though promised for 600: every second waited was before ready_at.
    wait = attribute_pickup_wait(pickup("delivery", 0, 300, 120), "delivery", at(600))
    assert (wait.platform_ms, wait.merchant_ms) == (120 * S, 0)


def test_without_ready_at_the_order_was_ready_when_placed() -> None:
    wait = attribute_pickup_wait(pickup("delivery", 0, 300, 500), "delivery", None)
    assert (wait.merchant_ms, wait.platform_ms) == (500 * S, 0)


def test_only_the_milliseconds_held_are_attributed() -> None:
    # A wait interrupted by a silence (timeline rule 3), and the trip's other segments: only the
    # at-pickup pieces count, each against ready_at (300).
    segs = [
        Segment("d", K.EN_ROUTE_PICKUP, at(-100), at(0), trip_id="t"),
        Segment("d", K.AT_PICKUP_WITHIN_GRACE, at(0), at(200), trip_id="t", inferred=True),
        Segment("d", K.AT_PICKUP_BEYOND_GRACE, at(400), at(500), trip_id="t"),
        Segment("d", K.ON_TRIP, at(500), at(900), trip_id="t"),
    ]
    wait = attribute_pickup_wait(segs, "delivery", at(300))
    assert (wait.total_ms, wait.platform_ms, wait.merchant_ms) == (300 * S, 200 * S, 100 * S)


def test_nothing_at_pickup_is_a_zero_wait() -> None:
    assert attribute_pickup_wait([], "ride", None) == PickupWait(0, 0, 0, 0, 0, 0)


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="deliveries only"):
        attribute_pickup_wait(pickup("ride", 0, 120, 200), "ride", at(100))
    mixed = pickup("ride", 0, 120, 200) + [
        Segment("d", K.AT_PICKUP_WITHIN_GRACE, at(900), at(950), trip_id="other")
    ]
    with pytest.raises(ValueError, match="more than one trip"):
        attribute_pickup_wait(mixed, "ride", None)
