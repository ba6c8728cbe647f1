"""Fares: the quote dispatch shows and the fare billing charges, from one code path.

A completed trip's fare, in minor units of the tariff's currency:

    base                      tariff.base_minor
    distance                  per_km x km, the distance taken to the whole metre
    time                      per_minute x minutes, the duration taken to the whole second
    surge                     (multiplier - 1) x (base + distance + time); the multiplier is the
                              one locked in the quote, capped by the tariff. Fees never surge.
    minimum_fare_adjustment   lifts base + distance + time + surge to the minimum fare
    booking_fee
    wait_fee                  per whole minute waited at pickup beyond the grace period

Each line is rounded half-up to the minor unit on its own and the total is the sum of the
rounded lines, so the lines always add up to the total. Lines of zero are left out.

A cancelled trip bills only its fee: ``cancellation_fee`` when the customer cancelled more than
``cancellation_free_s`` after assignment and the driver was not late; ``no_show_fee`` when the
driver cancelled after waiting at least ``no_show_wait_s`` at pickup; otherwise nothing.

``quote`` is ``final_fare`` of a completed trip without waiting, so equal facts give equal
prices. Time thresholds compare to the millisecond, the precision of event times, so float
noise in a difference of timestamps (179.99999999 s) cannot move a fee across a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

from polder.fares.money import Money, check_currency, round_minor
from polder.fares.tariff import Tariff

_MS_PER_MINUTE = 60_000
_MINUTES_SHOWN = Decimal("0.01")


class LineCode(StrEnum):
    BASE = "base"
    DISTANCE = "distance"
    TIME = "time"
    SURGE = "surge"
    MINIMUM_FARE_ADJUSTMENT = "minimum_fare_adjustment"
    BOOKING_FEE = "booking_fee"
    WAIT_FEE = "wait_fee"
    CANCELLATION_FEE = "cancellation_fee"
    NO_SHOW_FEE = "no_show_fee"


@dataclass(frozen=True, slots=True)
class FareLine:
    code: LineCode
    description: str
    amount_minor: int
    quantity: Decimal | None = None  # km, minutes or the surge multiplier, for display
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
class Fare:
    currency: str
    lines: tuple[FareLine, ...]
    total_minor: int
    surge: Decimal  # the multiplier applied: the locked one, after the tariff's cap

    def __post_init__(self) -> None:
        check_currency(self.currency)
        if self.total_minor != sum(line.amount_minor for line in self.lines):
            raise ValueError("fare lines must add up to the total")

    @classmethod
    def of(cls, currency: str, lines: Iterable[FareLine], surge: Decimal) -> Fare:
        charged = tuple(line for line in lines if line.amount_minor != 0)
        return cls(currency, charged, sum(line.amount_minor for line in charged), surge)

    @property
    def total(self) -> Money:
        return Money(self.total_minor, self.currency)

    def amount(self, code: LineCode) -> int:
        """The amount of the line with ``code``; 0 when the fare has no such line."""
        return sum(line.amount_minor for line in self.lines if line.code == code)

    def to_dict(self) -> dict[str, object]:
        return {
            "currency": self.currency,
            "total_minor": self.total_minor,
            "surge": str(self.surge),
            "lines": [line.to_dict() for line in self.lines],
        }


@dataclass(frozen=True, slots=True)
class Completed:
    """The trip ran to drop-off."""


@dataclass(frozen=True, slots=True)
class CancelledByCustomer:
    since_assignment_s: float | None  # None: cancelled before any driver was assigned
    driver_late: bool = False  # see driver_was_late


@dataclass(frozen=True, slots=True)
class NoShow:
    """The driver cancelled because the customer did not come (wait in TripFacts)."""


Outcome = Completed | CancelledByCustomer | NoShow


@dataclass(frozen=True, slots=True)
class TripFacts:
    distance_m: float
    duration_s: float  # on trip: picked up -> arrived at drop-off
    surge: Decimal  # the multiplier locked in the quote
    pickup_wait_s: float = 0.0  # driver arrived -> picked up (or -> driver cancelled)
    outcome: Outcome = field(default_factory=Completed)


def quote(tariff: Tariff, distance_m: float, duration_s: float, surge: Decimal) -> Fare:
    """The estimate shown when ordering. Lock ``surge`` with the order for ``final_fare``."""
    return final_fare(tariff, TripFacts(distance_m, duration_s, surge))


def final_fare(tariff: Tariff, trip: TripFacts) -> Fare:
    surge = applied_surge(tariff, trip.surge)
    return Fare.of(tariff.currency, _lines(tariff, trip, surge), surge)


def applied_surge(tariff: Tariff, surge: Decimal) -> Decimal:
    """The multiplier a fare uses: at least 1 (a surge is never a discount), at most the cap."""
    if not (surge.is_finite() and surge >= 1):
        raise ValueError(f"surge multiplier must be at least 1, got {surge}")
    return min(surge, tariff.surge_cap)


def billable_wait_minutes(pickup_wait_s: float, grace_s: float) -> int:
    """Whole minutes waited at pickup beyond the grace period.

    The customer's wait fee and the number shown to the driver both come from here, so the two
    parties always see the same minutes. Rounded down: a customer pays only for minutes waited
    in full, so a per-minute rate taken from an hourly maximum (the Dutch waiting rate) can
    never exceed it. The worker's exact beyond-grace seconds are still kept by billing's
    timeline, which pays them under the pay policies.
    """
    beyond_ms = _milliseconds(pickup_wait_s, "pickup_wait_s") - _milliseconds(grace_s, "grace_s")
    return max(0, beyond_ms) // _MS_PER_MINUTE


def cancellation_fee_due(tariff: Tariff, cancelled: CancelledByCustomer) -> bool:
    """A customer pays for cancelling only after the free period, never if the driver is late."""
    if cancelled.since_assignment_s is None or cancelled.driver_late:
        return False
    elapsed_ms = _milliseconds(cancelled.since_assignment_s, "since_assignment_s")
    return elapsed_ms > tariff.cancellation_free_s * 1000


def no_show_fee_due(tariff: Tariff, pickup_wait_s: float) -> bool:
    """A driver who cancels earns the customer a no-show fee only after the full wait."""
    return _milliseconds(pickup_wait_s, "pickup_wait_s") >= tariff.no_show_wait_s * 1000


def driver_was_late(
    tariff: Tariff,
    promised_eta_s: float,
    since_assignment_s: float,
    arrived_after_s: float | None = None,
) -> bool:
    """Whether the driver missed the ETA promised at assignment by more than the tolerance.

    All times count from assignment. A driver who has arrived is judged on the arrival; one
    who has not is judged at ``since_assignment_s`` (when the customer cancelled), since by then
    they were at least that late.
    """
    promised_ms = _milliseconds(promised_eta_s, "promised_eta_s")
    deadline_ms = promised_ms + tariff.driver_late_after_s * 1000
    judged_at = since_assignment_s if arrived_after_s is None else arrived_after_s
    return _milliseconds(judged_at, "arrival") > deadline_ms


def _lines(tariff: Tariff, trip: TripFacts, surge: Decimal) -> list[FareLine]:
    outcome = trip.outcome
    if isinstance(outcome, CancelledByCustomer):
        return [_cancellation_line(tariff)] if cancellation_fee_due(tariff, outcome) else []
    if isinstance(outcome, NoShow):
        return [_no_show_line(tariff)] if no_show_fee_due(tariff, trip.pickup_wait_s) else []
    return [
        *_trip_lines(tariff, trip.distance_m, trip.duration_s, surge),
        FareLine(LineCode.BOOKING_FEE, "Booking fee", tariff.booking_fee_minor),
        _wait_line(tariff, trip.pickup_wait_s),
    ]


def _trip_lines(
    tariff: Tariff, distance_m: float, duration_s: float, surge: Decimal
) -> list[FareLine]:
    km = Decimal(_whole(distance_m, "distance_m")) / 1000
    minutes = Decimal(_whole(duration_s, "duration_s")) / 60
    base = tariff.base_minor
    distance = round_minor(tariff.per_km_minor * km)
    time = round_minor(tariff.per_minute_minor * minutes)
    metered = base + distance + time
    # Surge multiplies the rounded lines the customer sees, so it can be checked from them.
    surged = round_minor((surge - 1) * metered)
    lift = max(0, tariff.minimum_fare_minor - metered - surged)
    shown_minutes = minutes.quantize(_MINUTES_SHOWN, rounding=ROUND_HALF_UP)
    return [
        FareLine(LineCode.BASE, "Base fare", base),
        FareLine(LineCode.DISTANCE, f"Distance, {km} km", distance, km, "km"),
        FareLine(LineCode.TIME, f"Time, {shown_minutes} min", time, shown_minutes, "min"),
        FareLine(LineCode.SURGE, f"Surge x{surge} on base, distance and time", surged, surge, "x"),
        FareLine(LineCode.MINIMUM_FARE_ADJUSTMENT, "Up to the minimum fare", lift),
    ]


def _wait_line(tariff: Tariff, pickup_wait_s: float) -> FareLine:
    minutes = billable_wait_minutes(pickup_wait_s, tariff.wait_grace_s)
    description = f"Waiting at pickup beyond {tariff.wait_grace_s} s free, per whole minute"
    amount = minutes * tariff.wait_per_minute_minor
    return FareLine(LineCode.WAIT_FEE, description, amount, Decimal(minutes), "min")


def _cancellation_line(tariff: Tariff) -> FareLine:
    description = f"Cancelled more than {tariff.cancellation_free_s} s after assignment"
    return FareLine(LineCode.CANCELLATION_FEE, description, tariff.cancellation_fee_minor)


def _no_show_line(tariff: Tariff) -> FareLine:
    description = f"No-show: driver waited at least {tariff.no_show_wait_s} s at pickup"
    return FareLine(LineCode.NO_SHOW_FEE, description, tariff.no_show_fee_minor)


def _whole(value: float, name: str) -> int:
    """A non-negative measure rounded half-up to a whole unit (metre, second)."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative number, got {value}")
    return int(Decimal(value).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _milliseconds(seconds: float, name: str) -> int:
    return _whole(seconds * 1000, name)
