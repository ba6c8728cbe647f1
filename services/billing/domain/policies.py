"""Pay policies: what a worker earns over a period, and the top-up a policy's floor requires.

``pay`` takes one period: the worker's segments clipped to it, the trips whose pay falls in it
(those that ended in it: ``TripRecord.ended_ms``), the rates and the currency. It computes

- the platform pay, the *base*: for each trip, ``fare_share`` of its fare without the booking
  fee (kept by the platform) and without the fees, plus ``fee_share`` of its wait,
  cancellation and no-show fees (passed through). The share in force when the trip was
  accepted applies. Each trip's amounts are rounded on their own, as the ledger posts them;
- the policy's floor, and the top-up that lifts the base to it: ``max(0, floor - base)`` over
  the period, or the sum of each trip's shortfall for rules that bind every trip (TLC, PayUp);
- tips, passed through and never counted toward a floor;
- the online seconds the policy pays and does not pay, waiting among them.

``pay_periods`` cuts a range at local midnights (day) or Monday midnights (week); a statement
calls ``pay`` once per period, so a top-up is checked per day (or week), not over the range.
The rules themselves are in ``policies_rules``, the rates in ``policies_rates``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta, tzinfo
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType

from polder.billing.domain.policies_base import (
    Floor,
    PayClass,
    PayCode,
    PayLine,
    PayPolicy,
    TripOutcome,
    TripRecord,
    counted,
    money_text,
    percent_text,
)
from polder.billing.domain.policies_rates import (
    ANY_JURISDICTION,
    DEFAULT_POLICY,
    POLICY_PARAMS,
    RATES_FILE,
    Jurisdiction,
    PolicyName,
    RateBook,
    Rates,
    RateSchedule,
    RateVersion,
    UnknownPolicy,
    UnknownRates,
    load_rates,
    parse_rates,
    policy_name,
    to_ms,
)
from polder.billing.domain.policies_rules import (
    NlHourly,
    NycTlc,
    PlatformShare,
    Prop22,
    SeattlePayUp,
)
from polder.billing.domain.segments import ONLINE, WAITING, Segment
from polder.fares.fare import LineCode
from polder.fares.money import CurrencyMismatch, check_currency, round_minor

__all__ = [
    "ANY_JURISDICTION",
    "DEFAULT_POLICY",
    "POLICIES",
    "POLICY_PARAMS",
    "RATES_FILE",
    "BasePay",
    "CurrencyMismatch",
    "Floor",
    "Jurisdiction",
    "NlHourly",
    "NycTlc",
    "PayClass",
    "PayCode",
    "PayLine",
    "PayPeriod",
    "PayPolicy",
    "PayResult",
    "PlatformShare",
    "PolicyName",
    "Prop22",
    "RateBook",
    "RateSchedule",
    "RateVersion",
    "Rates",
    "SeattlePayUp",
    "TripOutcome",
    "TripRecord",
    "UnknownPolicy",
    "UnknownRates",
    "clip",
    "from_ms",
    "get_policy",
    "load_rates",
    "parse_rates",
    "pay",
    "pay_periods",
    "platform_pay",
    "policy_name",
    "to_ms",
]

POLICIES: Mapping[PolicyName, PayPolicy] = MappingProxyType(
    {
        PolicyName.NL_HOURLY: NlHourly(),
        PolicyName.PROP22: Prop22(),
        PolicyName.NYC_TLC: NycTlc(),
        PolicyName.SEATTLE_PAYUP: SeattlePayUp(),
        PolicyName.PLATFORM_SHARE: PlatformShare(),
    }
)

# Fare lines passed through to the worker at fee_share; the booking fee stays with the platform.
_FEES = (
    (LineCode.WAIT_FEE, PayCode.WAIT_FEE, "Wait fees"),
    (LineCode.CANCELLATION_FEE, PayCode.CANCELLATION_FEE, "Cancellation fees"),
    (LineCode.NO_SHOW_FEE, PayCode.NO_SHOW_FEE, "No-show fees"),
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def get_policy(name: str) -> PayPolicy:
    return POLICIES[policy_name(name)]


class PayPeriod(StrEnum):
    DAY = "day"
    WEEK = "week"  # Monday 00:00 local to the next Monday


def from_ms(ms: int, tz: tzinfo = UTC) -> datetime:
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz)


def pay_periods(
    start_ms: int, end_ms: int, tz: tzinfo, period: PayPeriod = PayPeriod.DAY
) -> tuple[tuple[int, int], ...]:
    """``[from, to)`` cut at the local midnights (day) or Monday midnights (week) of ``tz``.

    The first and last periods are partial when the range does not start or end on a boundary.
    A day is 23 or 25 hours long across a DST change: the boundaries are local midnights.
    """
    if end_ms <= start_ms:
        raise ValueError("a pay period must end after it starts")
    period = PayPeriod(period)  # "week" from a setting works as well as PayPeriod.WEEK
    day = from_ms(start_ms, tz).date()
    if period is PayPeriod.WEEK:
        day -= timedelta(days=day.weekday())
    step = timedelta(days=7 if period is PayPeriod.WEEK else 1)
    bounds = [start_ms]
    while True:
        day += step
        boundary = to_ms(datetime.combine(day, time(0), tzinfo=tz))
        if boundary >= end_ms:
            break
        bounds.append(boundary)
    bounds.append(end_ms)
    return tuple(zip(bounds, bounds[1:], strict=False))


def clip(segments: Iterable[Segment], start_ms: int, end_ms: int) -> tuple[Segment, ...]:
    """The parts of ``segments`` inside ``[start_ms, end_ms)``; distance split by time."""
    clipped: list[Segment] = []
    for segment in segments:
        start, end = max(segment.start_ms, start_ms), min(segment.end_ms, end_ms)
        if end < start or (end == start and not start_ms <= segment.start_ms < end_ms):
            continue
        if (start, end) == (segment.start_ms, segment.end_ms):
            clipped.append(segment)
            continue
        part = (end - start) / segment.duration_ms
        clipped.append(
            replace(segment, start_ms=start, end_ms=end, distance_m=segment.distance_m * part)
        )
    return tuple(clipped)


@dataclass(frozen=True, slots=True)
class BasePay:
    """The platform's pay for some trips: the lines, and each trip's amount."""

    lines: tuple[PayLine, ...]
    per_trip: Mapping[str, int]

    @property
    def amount_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)


def platform_pay(trips: Iterable[TripRecord], share: RateSchedule, currency: str) -> BasePay:
    """``fare_share`` of each fare without booking fee and fees, plus ``fee_share`` of the fees."""
    per_trip: dict[str, int] = {}
    amounts: dict[tuple[str, PayCode], int] = {}
    fared: dict[tuple[str, PayCode], Decimal] = {}
    counts: dict[tuple[str, PayCode], int] = {}
    versions: dict[str, RateVersion] = {}
    for trip in trips:
        fare = trip.fare
        if fare is None:
            per_trip.setdefault(trip.trip_id, 0)
            continue
        if fare.currency != currency:
            raise CurrencyMismatch(f"trip {trip.trip_id}: fare in {fare.currency}, not {currency}")
        version = share.at(trip.accepted_ms)
        versions[version.version] = version
        parts = [(PayCode.FARE_SHARE, version.rate("fare_share"), _shareable(trip))]
        parts += [(code, version.rate("fee_share"), fare.amount(line)) for line, code, _ in _FEES]
        earned = 0
        for code, ratio, base in parts:
            if base == 0:
                continue
            key = (version.version, code)
            amount = round_minor(ratio * base)
            earned += amount
            amounts[key] = amounts.get(key, 0) + amount
            fared[key] = fared.get(key, Decimal(0)) + base
            counts[key] = counts.get(key, 0) + 1
        per_trip[trip.trip_id] = per_trip.get(trip.trip_id, 0) + earned
    lines: list[PayLine] = []
    for version in sorted(versions.values(), key=lambda v: v.effective_from_ms):
        for code, what, ratio_name in _BASE_LINES:
            key = (version.version, code)
            if amounts.get(key, 0) == 0:
                continue
            share_text = percent_text(version.rate(ratio_name))
            lines.append(
                PayLine(
                    code,
                    f"{what}: {share_text} of {money_text(fared[key], currency)}"
                    f" ({counted(counts[key], 'trip')}, {version.version})",
                    amounts[key],
                    Decimal(counts[key]),
                    "trips",
                )
            )
    return BasePay(tuple(lines), MappingProxyType(per_trip))


_BASE_LINES = (
    (PayCode.FARE_SHARE, "Share of fares excl. booking fee and fees", "fare_share"),
    *((code, what, "fee_share") for _, code, what in _FEES),
)


def _shareable(trip: TripRecord) -> int:
    fare = trip.fare
    if fare is None:
        return 0
    kept = fare.amount(LineCode.BOOKING_FEE) + sum(fare.amount(line) for line, _, _ in _FEES)
    return fare.total_minor - kept


@dataclass(frozen=True, slots=True)
class PayResult:
    """A worker's pay over one period under one policy.

    ``lines`` are what the worker is paid (platform pay, top-up, tips) and add up to
    ``total_minor``; ``floor_lines`` show how the floor was computed and add up to
    ``floor_minor``. Time is the period's online time (break excluded), in ms.
    """

    policy: PolicyName
    currency: str
    lines: tuple[PayLine, ...]
    floor_lines: tuple[PayLine, ...]
    base_minor: int
    floor_minor: int
    topup_minor: int
    tips_minor: int
    total_minor: int
    paid_waiting_ms: int
    unpaid_waiting_ms: int
    paid_ms: int
    unpaid_ms: int

    def __post_init__(self) -> None:
        check_currency(self.currency)
        if self.total_minor != sum(line.amount_minor for line in self.lines):
            raise ValueError("pay lines must add up to the total")
        if self.total_minor != self.base_minor + self.topup_minor + self.tips_minor:
            raise ValueError("total = platform pay + top-up + tips")
        if self.floor_minor != sum(line.amount_minor for line in self.floor_lines):
            raise ValueError("floor lines must add up to the floor")

    @property
    def online_ms(self) -> int:
        return self.paid_ms + self.unpaid_ms

    @property
    def waiting_ms(self) -> int:
        return self.paid_waiting_ms + self.unpaid_waiting_ms


def pay(
    policy: PayPolicy | str,
    segments: Iterable[Segment],
    trips: Iterable[TripRecord],
    rates: Rates,
    currency: str,
) -> PayResult:
    """One period's pay under ``policy`` (see the module docstring)."""
    rule = get_policy(policy) if isinstance(policy, str) else policy
    check_currency(currency)
    rates.floor.check_currency(currency)
    rates.share.check_currency(currency)
    segments, trips = tuple(segments), tuple(trips)
    base = platform_pay(trips, rates.share, currency)
    floor = rule.floor(segments, trips, rates.floor, currency)
    topup, topup_line = _topup(rule.name, floor, base, currency)
    tips = sum(t.tips_minor for t in trips)
    tip_line = PayLine(
        PayCode.TIPS,
        "Tips, passed through in full; never counted toward a floor",
        tips,
        Decimal(sum(1 for t in trips if t.tips_minor)),
        "trips",
    )
    lines = base.lines + tuple(line for line in (topup_line, tip_line) if line.amount_minor)
    paid = unpaid = paid_waiting = unpaid_waiting = 0
    for segment in segments:
        if segment.kind not in ONLINE:
            continue
        is_paid = rule.classify(segment) is PayClass.PAID
        waiting = segment.kind in WAITING
        if is_paid:
            paid += segment.duration_ms
            paid_waiting += segment.duration_ms if waiting else 0
        else:
            unpaid += segment.duration_ms
            unpaid_waiting += segment.duration_ms if waiting else 0
    return PayResult(
        policy=rule.name,
        currency=currency,
        lines=lines,
        floor_lines=floor.lines,
        base_minor=base.amount_minor,
        floor_minor=floor.amount_minor,
        topup_minor=topup,
        tips_minor=tips,
        total_minor=base.amount_minor + topup + tips,
        paid_waiting_ms=paid_waiting,
        unpaid_waiting_ms=unpaid_waiting,
        paid_ms=paid,
        unpaid_ms=unpaid,
    )


def _topup(name: PolicyName, floor: Floor, base: BasePay, currency: str) -> tuple[int, PayLine]:
    if floor.per_trip is None:
        amount = max(0, floor.amount_minor - base.amount_minor)
        description = (
            f"Top-up to the {name} floor of {money_text(floor.amount_minor, currency)}"
            f" (platform pay {money_text(base.amount_minor, currency)})"
        )
        return amount, PayLine(PayCode.TOPUP, description, amount)
    shortfalls = [max(0, f - base.per_trip.get(trip_id, 0)) for trip_id, f in floor.per_trip]
    short = sum(1 for s in shortfalls if s)
    description = (
        f"Top-up: {short} of {counted(len(shortfalls), 'trip')} paid below the {name}"
        " per-trip minimum"
    )
    line = PayLine(PayCode.TOPUP, description, sum(shortfalls), Decimal(short), "trips")
    return sum(shortfalls), line
