"""The vocabulary of a worker's timeline: segments, their kinds and the P-phases.

Every online second of a worker lies in exactly one segment; segments of one worker never
overlap and leave no gap between going online and going offline (DESIGN.md §4). Times are
server times in epoch milliseconds (integers: no float drift when seconds are summed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class SegmentKind(StrEnum):
    IDLE = "idle"
    OFFERED = "offered"
    BREAK = "break"
    EN_ROUTE_PICKUP = "en_route_pickup"
    AT_PICKUP_WITHIN_GRACE = "at_pickup_within_grace"
    AT_PICKUP_BEYOND_GRACE = "at_pickup_beyond_grace"
    ON_TRIP = "on_trip"
    AT_DROPOFF = "at_dropoff"


K = SegmentKind

# Online time for pay excludes breaks (the worker's choice).
ONLINE: frozenset[SegmentKind] = frozenset(k for k in K if k is not K.BREAK)
WAITING: frozenset[SegmentKind] = frozenset(
    {K.IDLE, K.OFFERED, K.AT_PICKUP_WITHIN_GRACE, K.AT_PICKUP_BEYOND_GRACE, K.AT_DROPOFF}
)
P1: frozenset[SegmentKind] = frozenset({K.IDLE, K.OFFERED})
P2: frozenset[SegmentKind] = frozenset(
    {K.EN_ROUTE_PICKUP, K.AT_PICKUP_WITHIN_GRACE, K.AT_PICKUP_BEYOND_GRACE}
)
P3: frozenset[SegmentKind] = frozenset({K.ON_TRIP, K.AT_DROPOFF})
# Engaged time (Prop 22, PayUp): from acceptance of an offer to completion of the trip.
ENGAGED: frozenset[SegmentKind] = P2 | P3

Product = Literal["ride", "delivery"]


@dataclass(frozen=True, slots=True)
class Segment:
    driver_id: str
    kind: SegmentKind
    start_ms: int
    end_ms: int
    trip_id: str | None = None
    order_id: str | None = None
    offer_id: str | None = None
    product: Product | None = None
    # Closed by inference (the worker went silent), not by an event the worker caused.
    inferred: bool = False
    # Metres driven during the segment, from the worker's accepted pings (jitter filtered).
    distance_m: float = 0.0

    def __post_init__(self) -> None:
        if self.end_ms < self.start_ms:
            raise ValueError(f"segment ends before it starts: {self}")

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms
