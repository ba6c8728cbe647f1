"""Whose wait is it: each millisecond at pickup attributed to the merchant, customer or platform.

Issue 4 ("Time"): every second at pickup belongs to the merchant (food not ready), the
customer (rider late after the driver arrived) or the platform (courier dispatched too early).
The rule, precisely:

- **Ride** — all of it is the **customer**'s. The driver is at the pickup and the rider is not
  in the car yet; rides have no ``ready_at`` (dispatch refuses one). The grace period does not
  change *whose* wait it is, only who pays for it: within grace the rider waits for free, beyond
  it the wait fee runs (DESIGN.md §4 "wait fee per minute beyond the free grace period";
  pay-rules.md §3, Uber/Lyft/Free Now: 2 min free after the driver's arrival).
- **Delivery** with ``ready_at`` — a millisecond before ``ready_at`` is the **platform**'s: the
  merchant promised the food for ``ready_at``, so a courier who is there earlier was sent too
  early (dispatch times offers to arrive near ``ready_at``, DESIGN.md §6, and counts an early
  second as a cost in ``dispatch.domain.delivery_timing``). A millisecond from ``ready_at`` on is
  the **merchant**'s: the food was due and the courier is still waiting for it.
- **Delivery** without ``ready_at`` — the order was ready when placed (dispatch treats it so: it
  costs only its pickup ETA), so all of the wait is the **merchant**'s.

Attribution and grace are two independent splits of the same total:
``merchant + customer + platform == within_grace + beyond_grace == total``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from polder.billing.domain.segments import Product, Segment, SegmentKind

K = SegmentKind
AT_PICKUP_KINDS: frozenset[SegmentKind] = frozenset(
    {K.AT_PICKUP_WITHIN_GRACE, K.AT_PICKUP_BEYOND_GRACE}
)


@dataclass(frozen=True, slots=True)
class PickupWait:
    """A trip's time at pickup in milliseconds, split by who caused it and by grace."""

    total_ms: int
    merchant_ms: int
    customer_ms: int
    platform_ms: int
    within_grace_ms: int
    beyond_grace_ms: int

    def __post_init__(self) -> None:
        parties = self.merchant_ms + self.customer_ms + self.platform_ms
        if parties != self.total_ms or self.within_grace_ms + self.beyond_grace_ms != self.total_ms:
            raise ValueError(f"pickup wait parts do not add up: {self}")


def attribute_pickup_wait(
    segments_of_trip: Iterable[Segment], product: Product, ready_at_ms: int | None
) -> PickupWait:
    """Attribute the at-pickup segments among ``segments_of_trip`` (others are ignored).

    ``ready_at_ms`` is the order's ``ready_at`` (``polder.order.placed.v1``) in epoch ms. The
    segments may be interrupted (a silence) or clipped to a period: only the milliseconds they
    hold are attributed.
    """
    if product == "ride" and ready_at_ms is not None:
        raise ValueError("ready_at is for deliveries only")
    at_pickup = [s for s in segments_of_trip if s.kind in AT_PICKUP_KINDS]
    if len({s.trip_id for s in at_pickup}) > 1:
        raise ValueError("segments of more than one trip")
    total = sum(s.duration_ms for s in at_pickup)
    within = sum(s.duration_ms for s in at_pickup if s.kind is K.AT_PICKUP_WITHIN_GRACE)
    merchant = customer = platform = 0
    if product == "ride":
        customer = total
    elif ready_at_ms is None:
        merchant = total
    else:
        platform = sum(max(0, min(s.end_ms, ready_at_ms) - s.start_ms) for s in at_pickup)
        merchant = total - platform
    return PickupWait(
        total_ms=total,
        merchant_ms=merchant,
        customer_ms=customer,
        platform_ms=platform,
        within_grace_ms=within,
        beyond_grace_ms=total - within,
    )
