"""The five pay rules: which seconds each pays, and the floor each sets.

A second is *paid* under a rule when the rule's own definition of paid time includes it, so
that more such seconds raise the floor; waiting seconds it does not pay are unpaid waiting.

- ``nl_hourly`` (the UK/NL model, Uber v Aslam; Deliveroo riders are employees, HR 2023:443):
  every online second except break is paid. Floor = hourly minimum wage x online hours + a
  mileage allowance x engaged km (acceptance -> completion).
- ``prop22`` (Cal. B&P 7453): engaged time only, acceptance -> completion or cancellation
  (P2 + P3, waiting at pickup and drop-off included); P1 unpaid. Floor per earnings period =
  120 % x local minimum wage x engaged hours + per engaged mile x engaged miles.
- ``nyc_tlc``: per trip, P3 miles x rate + P3 minutes x rate. The rates are the expense and
  earnings rates divided by the fleet's utilization (the share of on-duty time with a
  passenger; 2019: $0.631/mi / 0.58 = $1.088/mi), so every paid P3 minute carries, on average,
  the P1 and P2 time around it: waiting is paid *implicitly*, at the fleet's average and not at
  this worker's. A worker who waits longer than the fleet gets nothing more, and a worker's pay
  does not grow with a single P1 or P2 second. So only P3 seconds (on trip, at drop-off) are
  classified paid; P1 and P2 waiting is unpaid waiting. (The 2024 rates' utilization divisor is
  not published with them, so it is not in the rates file and no "implicitly paid" seconds are
  invented from it.)
- ``seattle_payup`` (SMC 8.37): per offer, the greater of engaged minutes x rate + engaged
  miles x rate, or the per-offer minimum. Engaged time ends at completion, at a cancellation by
  the customer or the company, or when the worker cancels with cause (a no-show); an offer the
  worker cancels without cause earns no minimum. Engaged seconds are paid, P1 is not.
- ``platform_share``: no floor at all, only what the fare pays: on-trip seconds (the fare's
  per-minute line) and beyond-grace pickup waiting (the wait fee, passed through).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from polder.billing.domain.policies_base import (
    Floor,
    PayClass,
    PayCode,
    PayLine,
    TripOutcome,
    TripRecord,
    counted,
    hours,
    km,
    miles,
    minutes,
    money_text,
    percent_text,
    shown,
    whole_metres,
)
from polder.billing.domain.policies_rates import PolicyName, RateSchedule, RateVersion
from polder.billing.domain.segments import (
    ENGAGED,
    ONLINE,
    P3,
    Segment,
    SegmentKind,
)
from polder.fares.money import round_minor

K = SegmentKind


@dataclass(frozen=True, slots=True)
class _Usage:
    """Time and distance of some segments under one rate version."""

    version: RateVersion
    ms: int
    metres: int


def usage_by_version(
    segments: Iterable[Segment], kinds: frozenset[SegmentKind], rates: RateSchedule
) -> list[_Usage]:
    """The ms and metres of the segments of ``kinds``, cut where the rates change.

    A segment that straddles a change is split by time, its distance in proportion.
    """
    ms: dict[str, int] = {}
    metres: dict[str, float] = {}
    versions: dict[str, RateVersion] = {}
    for segment in segments:
        if segment.kind not in kinds:
            continue
        for version, start, end in rates.spans(segment.start_ms, segment.end_ms):
            part = (end - start) / segment.duration_ms if segment.duration_ms else 1.0
            versions[version.version] = version
            ms[version.version] = ms.get(version.version, 0) + end - start
            metres[version.version] = metres.get(version.version, 0.0) + segment.distance_m * part
    ordered = sorted(versions.values(), key=lambda v: v.effective_from_ms)
    return [_Usage(v, ms[v.version], whole_metres(metres[v.version])) for v in ordered]


class _ByKind:
    """Classifies a segment by its kind alone."""

    paid: frozenset[SegmentKind] = frozenset()

    def classify(self, segment: Segment) -> PayClass:
        return PayClass.PAID if segment.kind in self.paid else PayClass.UNPAID


class NlHourly(_ByKind):
    name = PolicyName.NL_HOURLY
    paid = ONLINE

    def floor(
        self,
        segments: tuple[Segment, ...],
        trips: tuple[TripRecord, ...],
        rates: RateSchedule,
        currency: str,
    ) -> Floor:
        lines: list[PayLine] = []
        for use in usage_by_version(segments, ONLINE, rates):
            wage = use.version.rate("hourly_minor")
            h = hours(use.ms)
            lines.append(
                PayLine(
                    PayCode.MINIMUM_WAGE,
                    f"Minimum wage {money_text(wage, currency)}/h x {shown(h, 4)} online h"
                    f" ({use.version.version})",
                    round_minor(wage * h),
                    shown(h, 4),
                    "h",
                )
            )
        for use in usage_by_version(segments, ENGAGED, rates):
            per_km = use.version.rate("per_km_minor")
            distance = shown(km(use.metres), 3)
            lines.append(
                PayLine(
                    PayCode.KM_ALLOWANCE,
                    f"Allowance {money_text(per_km, currency)}/km x {distance} engaged km"
                    f" ({use.version.version})",
                    round_minor(per_km * distance),
                    distance,
                    "km",
                )
            )
        return Floor(_charged(lines))


class Prop22(_ByKind):
    name = PolicyName.PROP22
    paid = ENGAGED

    def floor(
        self,
        segments: tuple[Segment, ...],
        trips: tuple[TripRecord, ...],
        rates: RateSchedule,
        currency: str,
    ) -> Floor:
        lines: list[PayLine] = []
        for use in usage_by_version(segments, ENGAGED, rates):
            wage = use.version.rate("minimum_wage_minor")
            multiplier = use.version.rate("wage_multiplier")
            per_mile = use.version.rate("per_mile_minor")
            h = hours(use.ms)
            distance = miles(use.metres)
            lines.append(
                PayLine(
                    PayCode.ENGAGED_TIME,
                    f"{percent_text(multiplier)} of minimum wage {money_text(wage, currency)}/h"
                    f" x {shown(h, 4)} engaged h ({use.version.version})",
                    round_minor(multiplier * wage * h),
                    shown(h, 4),
                    "h",
                )
            )
            lines.append(
                PayLine(
                    PayCode.ENGAGED_MILES,
                    f"{money_text(per_mile, currency)}/mi x {shown(distance, 3)} engaged mi"
                    f" ({use.version.version})",
                    round_minor(per_mile * distance),
                    shown(distance, 3),
                    "mi",
                )
            )
        return Floor(_charged(lines))


class NycTlc(_ByKind):
    name = PolicyName.NYC_TLC
    paid = P3

    def floor(
        self,
        segments: tuple[Segment, ...],
        trips: tuple[TripRecord, ...],
        rates: RateSchedule,
        currency: str,
    ) -> Floor:
        per_trip: list[tuple[str, int]] = []
        lines: list[PayLine] = []
        for version, group in _by_acceptance_version(trips, rates):
            per_mile = version.rate("per_mile_minor")
            per_minute = version.rate("per_minute_minor")
            total_miles = total_minutes = Decimal(0)
            miles_minor = minutes_minor = 0
            for trip in group:
                trip_miles = miles(whole_metres(trip.p3_distance_m))
                trip_minutes = minutes(trip.p3_duration_ms)
                by_miles = round_minor(per_mile * trip_miles)
                by_minutes = round_minor(per_minute * trip_minutes)
                per_trip.append((trip.trip_id, by_miles + by_minutes))
                total_miles += trip_miles
                total_minutes += trip_minutes
                miles_minor += by_miles
                minutes_minor += by_minutes
            tag = f"{counted(len(group), 'trip')}, {version.version}; grossed up for utilization"
            lines.append(
                PayLine(
                    PayCode.TRIP_MILES,
                    f"{money_text(per_mile, currency)}/mi x {shown(total_miles, 3)} trip mi"
                    f" ({tag})",
                    miles_minor,
                    shown(total_miles, 3),
                    "mi",
                )
            )
            lines.append(
                PayLine(
                    PayCode.TRIP_MINUTES,
                    f"{money_text(per_minute, currency)}/min x {shown(total_minutes, 2)} trip min"
                    f" ({tag})",
                    minutes_minor,
                    shown(total_minutes, 2),
                    "min",
                )
            )
        return Floor(_charged(lines), tuple(per_trip))


# An offer the worker cancels without cause earns no PayUp minimum (SMC 8.37, engaged time).
_PAYUP_UNPAID = frozenset({TripOutcome.CANCELLED_BY_DRIVER})


class SeattlePayUp(_ByKind):
    name = PolicyName.SEATTLE_PAYUP
    paid = ENGAGED

    def floor(
        self,
        segments: tuple[Segment, ...],
        trips: tuple[TripRecord, ...],
        rates: RateSchedule,
        currency: str,
    ) -> Floor:
        offers = tuple(t for t in trips if t.outcome not in _PAYUP_UNPAID)
        per_trip: list[tuple[str, int]] = []
        lines: list[PayLine] = []
        for version, group in _by_acceptance_version(offers, rates):
            per_minute = version.rate("per_minute_minor")
            per_mile = version.rate("per_mile_minor")
            per_offer = round_minor(version.rate("per_offer_minor"))
            total_minutes = total_miles = Decimal(0)
            minutes_minor = miles_minor = lift_minor = lifted = 0
            for trip in group:
                offer_minutes = minutes(trip.engaged_duration_ms)
                offer_miles = miles(whole_metres(trip.engaged_distance_m))
                by_minutes = round_minor(per_minute * offer_minutes)
                by_miles = round_minor(per_mile * offer_miles)
                lift = max(0, per_offer - by_minutes - by_miles)
                per_trip.append((trip.trip_id, by_minutes + by_miles + lift))
                total_minutes += offer_minutes
                total_miles += offer_miles
                minutes_minor += by_minutes
                miles_minor += by_miles
                lift_minor += lift
                lifted += 1 if lift else 0
            tag = f"{counted(len(group), 'offer')}, {version.version}"
            lines += [
                PayLine(
                    PayCode.OFFER_MINUTES,
                    f"{money_text(per_minute, currency)}/min x {shown(total_minutes, 2)}"
                    f" engaged min ({tag})",
                    minutes_minor,
                    shown(total_minutes, 2),
                    "min",
                ),
                PayLine(
                    PayCode.OFFER_MILES,
                    f"{money_text(per_mile, currency)}/mi x {shown(total_miles, 3)}"
                    f" engaged mi ({tag})",
                    miles_minor,
                    shown(total_miles, 3),
                    "mi",
                ),
                PayLine(
                    PayCode.OFFER_MINIMUM,
                    f"{counted(lifted, 'offer')} lifted to the {money_text(per_offer, currency)}"
                    f" per-offer minimum ({version.version})",
                    lift_minor,
                    Decimal(lifted),
                    "offers",
                ),
            ]
        return Floor(_charged(lines), tuple(per_trip))


class PlatformShare(_ByKind):
    """The platforms' baseline: no floor; the fare's time and wait fee are what is paid."""

    name = PolicyName.PLATFORM_SHARE
    paid = frozenset({K.ON_TRIP, K.AT_PICKUP_BEYOND_GRACE})

    def floor(
        self,
        segments: tuple[Segment, ...],
        trips: tuple[TripRecord, ...],
        rates: RateSchedule,
        currency: str,
    ) -> Floor:
        return Floor(())


def _by_acceptance_version(
    trips: tuple[TripRecord, ...], rates: RateSchedule
) -> list[tuple[RateVersion, list[TripRecord]]]:
    """Trips grouped by the rates in force when each was accepted (the terms of the offer)."""
    groups: dict[str, tuple[RateVersion, list[TripRecord]]] = {}
    for trip in trips:
        version = rates.at(trip.accepted_ms)
        groups.setdefault(version.version, (version, []))[1].append(trip)
    return sorted(groups.values(), key=lambda group: group[0].effective_from_ms)


def _charged(lines: Iterable[PayLine]) -> tuple[PayLine, ...]:
    return tuple(line for line in lines if line.amount_minor != 0)
