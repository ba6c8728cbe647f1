"""The vocabulary of pay: trips as billing sees them, pay lines, floors and the policy protocol.

Amounts are integer minor units. Each line is rounded half-up to the minor unit on its own
(``polder.fares.money.round_minor``, as fares round), and every total is the sum of its rounded
lines, so the lines shown always add up. Durations are integer milliseconds (segment times);
distances are metres, taken to the whole metre (half-up) before a rate applies, as fares do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Protocol

from polder.billing.domain.policies_rates import PolicyName, RateSchedule
from polder.billing.domain.segments import Product, Segment
from polder.fares.fare import Fare

MS_PER_HOUR = 3_600_000
MS_PER_MINUTE = 60_000
METRES_PER_MILE = Decimal("1609.344")  # the international mile, exactly


class PayClass(StrEnum):
    PAID = "paid"
    UNPAID = "unpaid"


class PayCode(StrEnum):
    # What the worker is paid (these add up to the total).
    FARE_SHARE = "fare_share"
    WAIT_FEE = "wait_fee"
    CANCELLATION_FEE = "cancellation_fee"
    NO_SHOW_FEE = "no_show_fee"
    TOPUP = "topup"
    TIPS = "tips"
    # How a floor is computed (shown next to the pay, never added to it).
    MINIMUM_WAGE = "minimum_wage"
    KM_ALLOWANCE = "km_allowance"
    ENGAGED_TIME = "engaged_time"
    ENGAGED_MILES = "engaged_miles"
    TRIP_MINUTES = "trip_minutes"
    TRIP_MILES = "trip_miles"
    OFFER_MINUTES = "offer_minutes"
    OFFER_MILES = "offer_miles"
    OFFER_MINIMUM = "offer_minimum"


class TripOutcome(StrEnum):
    COMPLETED = "completed"
    CANCELLED_BY_CUSTOMER = "cancelled_by_customer"
    CANCELLED_BY_DRIVER = "cancelled_by_driver"  # without cause
    NO_SHOW = "no_show"  # the driver cancelled because the customer never came (with cause)
    CANCELLED_BY_PLATFORM = "cancelled_by_platform"


@dataclass(frozen=True, slots=True)
class TripRecord:
    """One accepted trip (one offer) of the worker, with its measures and the customer's fare.

    ``completed_ms`` is the completion time; a cancelled trip may leave it ``None``, and then
    ends ``engaged_duration_ms`` after acceptance. P3 is pick-up -> completion; engaged is
    acceptance -> completion or cancellation (P2 + P3).
    """

    trip_id: str
    order_id: str
    product: Product
    accepted_ms: int
    completed_ms: int | None
    outcome: TripOutcome
    p3_distance_m: float
    p3_duration_ms: int
    engaged_distance_m: float
    engaged_duration_ms: int
    fare: Fare | None  # the customer's final fare; None when nothing was charged
    tips_minor: int = 0

    def __post_init__(self) -> None:
        if self.outcome is TripOutcome.COMPLETED and self.completed_ms is None:
            raise ValueError(f"trip {self.trip_id}: a completed trip needs completed_ms")
        if self.completed_ms is not None and self.completed_ms < self.accepted_ms:
            raise ValueError(f"trip {self.trip_id}: completed before it was accepted")
        for name in ("p3_duration_ms", "engaged_duration_ms", "tips_minor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"trip {self.trip_id}: {name} must be a non-negative int")
        for name in ("p3_distance_m", "engaged_distance_m"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"trip {self.trip_id}: {name} must be a non-negative number")
        if self.p3_duration_ms > self.engaged_duration_ms:
            raise ValueError(f"trip {self.trip_id}: P3 is part of engaged time, not longer")

    @property
    def ended_ms(self) -> int:
        """When the trip's pay is earned: completion, or the end of its engaged time."""
        if self.completed_ms is not None:
            return self.completed_ms
        return self.accepted_ms + self.engaged_duration_ms


@dataclass(frozen=True, slots=True)
class PayLine:
    code: PayCode
    description: str
    amount_minor: int
    quantity: Decimal | None = None  # hours, km, miles, minutes, trips: for display
    unit: str | None = None

    def to_dict(self) -> dict[str, str | int | None]:
        return {
            "code": self.code.value,
            "description": self.description,
            "amount_minor": self.amount_minor,
            "quantity": None if self.quantity is None else str(self.quantity),
            "unit": self.unit,
        }


@dataclass(frozen=True, slots=True)
class Floor:
    """A policy's minimum pay over a period, and the lines that compute it.

    ``per_trip`` is set by rules that bind each trip or offer on its own (NYC TLC, Seattle):
    a trip paid above its minimum cannot make up for one paid below it, so the top-up is the
    sum of the trips' shortfalls rather than the shortfall of the period's total.
    """

    lines: tuple[PayLine, ...]
    per_trip: tuple[tuple[str, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.per_trip is not None and sum(a for _, a in self.per_trip) != self.amount_minor:
            raise ValueError("the per-trip floors must add up to the floor")

    @property
    def amount_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)


class PayPolicy(Protocol):
    """A pay rule: which online seconds it pays, and the least a worker must earn."""

    @property
    def name(self) -> PolicyName: ...

    def classify(self, segment: Segment) -> PayClass:
        """Whether the rule pays this segment's seconds (by its kind)."""
        ...

    def floor(
        self,
        segments: tuple[Segment, ...],
        trips: tuple[TripRecord, ...],
        rates: RateSchedule,
        currency: str,
    ) -> Floor:
        """The minimum over one period: ``segments`` clipped to it, ``trips`` that ended in it."""
        ...


def whole_metres(distance_m: float) -> int:
    if not (math.isfinite(distance_m) and distance_m >= 0):
        raise ValueError(f"distance must be a non-negative number, got {distance_m}")
    return int(Decimal(distance_m).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def hours(ms: int) -> Decimal:
    return Decimal(ms) / MS_PER_HOUR


def minutes(ms: int) -> Decimal:
    return Decimal(ms) / MS_PER_MINUTE


def km(metres: int) -> Decimal:
    return Decimal(metres) / 1000


def miles(metres: int) -> Decimal:
    return Decimal(metres) / METRES_PER_MILE


def shown(value: Decimal, places: int) -> Decimal:
    """A quantity rounded for display; the amount next to it uses the exact value."""
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def money_text(minor: Decimal | int, currency: str) -> str:
    """Minor units as a major amount (two decimals, more when the rate has them): '0.583 USD'."""
    major = Decimal(minor) / 100
    cents = major.quantize(Decimal("0.01"))
    text = str(cents) if cents == major else format(major.normalize(), "f")
    return f"{text} {currency}"


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def percent_text(ratio: Decimal) -> str:
    return f"{format((ratio * 100).normalize(), 'f')}%"
