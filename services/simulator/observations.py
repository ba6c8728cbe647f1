"""What the simulator saw, and the figures it draws from that: pure, no I/O.

Times are seconds on the simulator's monotonic clock (``t``) unless a name says otherwise. The
services stamp events with their own clock, so an instant the simulator knows only from a
request is an interval: after the request was sent and before its answer came.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class OrderObs:
    key: str  # the Idempotency-Key
    customer_id: str
    kind: str
    placed_sent_t: float
    ready_in_t: float | None = None  # deliveries: when the merchant promised it (sim clock)
    order_id: str | None = None
    placed_t: float | None = None  # the 201 arrived
    place_error: str | None = None
    first_offer_t: float | None = None
    offers: int = 0
    accepted_t: float | None = None
    driver_id: str | None = None
    trip_id: str | None = None
    quoted_eta_s: float | None = None  # from the offer the worker accepted
    arrived_pickup_t: float | None = None
    completed_t: float | None = None
    cancel_requested: bool = False
    cancelled_by_customer: bool = False  # the cancel answered "cancelled"
    cancelled_by_driver: bool = False  # no-show: the worker cancelled the trip
    cancelled_at_end: bool = False  # still open when the run ended: the customer gave up
    fare_seen_t: float | None = None
    fare: Any = None  # billing's answer
    final_status: str | None = None  # from dispatch at the end
    assigned_latency_s: float | None = None  # from dispatch: assigned_at - created_at
    dispatch_eta_s: float | None = None


@dataclass(slots=True)
class WorkerObs:
    driver_id: str
    # (sent, answered) of each online / offline request that changed the state
    online: list[tuple[float, float]] = field(default_factory=list)
    offline: list[tuple[float, float]] = field(default_factory=list)
    offers: int = 0
    accepted: int = 0
    declined: int = 0
    lost: int = 0  # accepted too late: expired or taken back
    trips_completed: int = 0
    pings_sent: int = 0
    ping_errors: int = 0
    # batches sent again because the location service had not yet heard the worker go online
    ping_offline_retries: int = 0
    step_errors: int = 0
    statement_waited_s: float | None = None  # the check waited this long for billing

    def online_bounds_s(self) -> tuple[float, float]:
        """The least and most time this worker can have been online, given when each online
        and offline request was sent and answered (an unfinished shift counts as not ended)."""
        lo = hi = 0.0
        for (on_sent, on_ans), (off_sent, off_ans) in zip(self.online, self.offline, strict=False):
            lo += max(0.0, off_sent - on_ans)
            hi += off_ans - on_sent
        return lo, hi

    def is_online(self) -> bool:
        return len(self.online) > len(self.offline)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p90": r(percentile(values, 90)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values)) if values else None,
    }


@dataclass(frozen=True, slots=True)
class Progress:
    """The live figures shown while the simulation runs."""

    workers_online: int
    orders_placed: int
    orders_per_min: float  # over the last minute
    matched: int
    match_rate: float | None  # accepted / placed (of orders old enough to have been offered)
    median_pickup_eta_s: float | None
    trips_completed: int


def progress(
    workers: Iterable[WorkerObs], orders: Sequence[OrderObs], now_t: float, grace_s: float = 5.0
) -> Progress:
    recent = [o for o in orders if o.placed_t is not None and now_t - o.placed_t <= 60.0]
    placed = [o for o in orders if o.order_id is not None]
    old = [o for o in placed if o.placed_t is not None and now_t - o.placed_t >= grace_s]
    matched_old = [o for o in old if o.accepted_t is not None]
    etas = [o.quoted_eta_s for o in placed if o.quoted_eta_s is not None]
    return Progress(
        workers_online=sum(1 for w in workers if w.is_online()),
        orders_placed=len(placed),
        orders_per_min=float(len(recent)),
        matched=sum(1 for o in placed if o.accepted_t is not None),
        match_rate=(len(matched_old) / len(old)) if old else None,
        median_pickup_eta_s=percentile(etas, 50),
        trips_completed=sum(1 for o in placed if o.completed_t is not None),
    )


def latencies(orders: Iterable[OrderObs]) -> dict[str, list[float]]:
    """Order→offer (seen on a worker's feed), order→assignment (dispatch's own stamps), pickup
    ETA (dispatch's estimate) and the actual drive to pickup, billing's lag for fares."""
    out: dict[str, list[float]] = {
        "order_to_offer_s": [],
        "ride_to_offer_s": [],  # deliveries may be held back on purpose to meet ready_at
        "order_to_assignment_s": [],
        "pickup_eta_s": [],
        "pickup_drive_s": [],
        "fare_lag_s": [],
    }
    for o in orders:
        if o.first_offer_t is not None and o.placed_t is not None:
            # the offer can reach the feed before the 201 reaches the customer: count from send
            out["order_to_offer_s"].append(o.first_offer_t - o.placed_sent_t)
            if o.kind == "ride":
                out["ride_to_offer_s"].append(o.first_offer_t - o.placed_sent_t)
        if o.assigned_latency_s is not None:
            out["order_to_assignment_s"].append(o.assigned_latency_s)
        if o.dispatch_eta_s is not None:
            out["pickup_eta_s"].append(o.dispatch_eta_s)
        if o.arrived_pickup_t is not None and o.accepted_t is not None:
            out["pickup_drive_s"].append(o.arrived_pickup_t - o.accepted_t)
        if o.fare_seen_t is not None and o.completed_t is not None:
            out["fare_lag_s"].append(max(0.0, o.fare_seen_t - o.completed_t))
    return out
