"""A worker's statement: time per segment, paid and unpaid waiting, and pay under one policy.

``build_statement`` applies a policy to one worker's segments and trips over ``[from, to)``.
The range is cut into pay periods (local days by default, or weeks; see ``pay_periods``) and
each period is paid on its own, so a top-up is posted per day: a good day never hides a bad
one. ``Statement.to_dict`` is the JSON body of ``GET /v1/drivers/{id}/statement`` (issue 4):

- ``from``/``to`` and each line's ``period_from``/``period_to`` are RFC 3339 UTC timestamps to
  the millisecond (``2025-06-30T22:00:00.000Z``);
- seconds (``*_s``) are numbers with millisecond precision (``12.345``), each the exact integer
  milliseconds / 1000; the ms add up exactly (``online = idle + offered + en route + at pickup
  + on trip + at drop-off``; break is not online), the floats up to float rounding;
- ``waiting.total_s`` = idle + offered + at pickup + at drop-off; ``paid_s`` + ``unpaid_s`` =
  ``total_s``, split by the policy's ``classify``;
- ``engaged_km``: metres driven in engaged segments (acceptance -> completion), to the metre;
- ``earnings.lines``: per period, what the worker is paid (``kind`` "pay": platform pay,
  top-up, tips; they add up to ``total_minor``) and how the floor was computed (``kind``
  "floor": shown, never added);
- ``effective_hourly_minor``: pay *excluding tips* (platform pay + top-up, the amount a floor
  is checked against) per online hour and per engaged hour, rounded half-up; null without
  such hours;
- ``unpaid_share`` = unpaid waiting / online time (0 without online time), to 6 decimals.

``Statement.to_csv`` renders the same content (columns in ``CSV_COLUMNS``): one row per pay and
floor line, then summary rows with the figures of ``to_dict``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, tzinfo
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from polder.billing.domain.fx import Conversion
from polder.billing.domain.policies import (
    ANY_JURISDICTION,
    PayLine,
    PayPeriod,
    PayResult,
    PolicyName,
    RateBook,
    TripRecord,
    clip,
    from_ms,
    get_policy,
    pay,
    pay_periods,
)
from polder.billing.domain.policies_base import MS_PER_HOUR, whole_metres
from polder.billing.domain.segments import ENGAGED, Segment, SegmentKind
from polder.fares.money import check_currency, round_minor

K = SegmentKind

CSV_COLUMNS = (
    "section",  # pay | floor | summary
    "period_from",  # RFC 3339 UTC; a summary row spans the whole statement
    "period_to",
    "code",  # a PayCode, or the summary figure's name (online_s, total_minor, ...)
    "description",
    "quantity",  # hours, km, trips ... of a line; the value of a non-money summary figure
    "unit",
    "amount_minor",  # money, in minor units of currency
    "currency",
)


class LineKind(StrEnum):
    PAY = "pay"
    FLOOR = "floor"


@dataclass(frozen=True, slots=True)
class StatementLine:
    period_from_ms: int
    period_to_ms: int
    kind: LineKind
    line: PayLine

    def to_dict(self) -> dict[str, str | int | None]:
        return {
            "period_from": iso(self.period_from_ms),
            "period_to": iso(self.period_to_ms),
            "kind": self.kind.value,
            **self.line.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class PeriodPay:
    from_ms: int
    to_ms: int
    result: PayResult


@dataclass(frozen=True, slots=True)
class TimeBreakdown:
    """Milliseconds per segment kind; at pickup is within plus beyond the grace period."""

    idle_ms: int = 0
    offered_ms: int = 0
    break_ms: int = 0
    en_route_pickup_ms: int = 0
    at_pickup_ms: int = 0
    on_trip_ms: int = 0
    at_dropoff_ms: int = 0

    @classmethod
    def of(cls, segments: Iterable[Segment]) -> TimeBreakdown:
        ms = dict.fromkeys(K, 0)
        for segment in segments:
            ms[segment.kind] += segment.duration_ms
        return cls(
            idle_ms=ms[K.IDLE],
            offered_ms=ms[K.OFFERED],
            break_ms=ms[K.BREAK],
            en_route_pickup_ms=ms[K.EN_ROUTE_PICKUP],
            at_pickup_ms=ms[K.AT_PICKUP_WITHIN_GRACE] + ms[K.AT_PICKUP_BEYOND_GRACE],
            on_trip_ms=ms[K.ON_TRIP],
            at_dropoff_ms=ms[K.AT_DROPOFF],
        )

    @property
    def online_ms(self) -> int:
        return self.waiting_ms + self.en_route_pickup_ms + self.on_trip_ms

    @property
    def waiting_ms(self) -> int:
        return self.idle_ms + self.offered_ms + self.at_pickup_ms + self.at_dropoff_ms

    @property
    def engaged_ms(self) -> int:
        return self.en_route_pickup_ms + self.at_pickup_ms + self.on_trip_ms + self.at_dropoff_ms

    def seconds(self) -> dict[str, float]:
        return {
            "online_s": seconds(self.online_ms),
            "idle_s": seconds(self.idle_ms),
            "offered_s": seconds(self.offered_ms),
            "break_s": seconds(self.break_ms),
            "en_route_pickup_s": seconds(self.en_route_pickup_ms),
            "at_pickup_s": seconds(self.at_pickup_ms),
            "on_trip_s": seconds(self.on_trip_ms),
            "at_dropoff_s": seconds(self.at_dropoff_ms),
        }


@dataclass(frozen=True, slots=True)
class Statement:
    driver_id: str
    from_ms: int
    to_ms: int
    policy: PolicyName
    currency: str
    time: TimeBreakdown
    engaged_m: int
    periods: tuple[PeriodPay, ...]
    conversion: Conversion | None = None  # the policy's rates converted into ``currency``

    def __post_init__(self) -> None:
        check_currency(self.currency)
        if sum(p.result.online_ms for p in self.periods) != self.time.online_ms:
            raise ValueError("the periods' online time must add up to the statement's")

    @property
    def paid_waiting_ms(self) -> int:
        return sum(p.result.paid_waiting_ms for p in self.periods)

    @property
    def unpaid_waiting_ms(self) -> int:
        return sum(p.result.unpaid_waiting_ms for p in self.periods)

    @property
    def base_minor(self) -> int:
        return sum(p.result.base_minor for p in self.periods)

    @property
    def floor_minor(self) -> int:
        return sum(p.result.floor_minor for p in self.periods)

    @property
    def topup_minor(self) -> int:
        return sum(p.result.topup_minor for p in self.periods)

    @property
    def tips_minor(self) -> int:
        return sum(p.result.tips_minor for p in self.periods)

    @property
    def total_minor(self) -> int:
        return sum(p.result.total_minor for p in self.periods)

    @property
    def lines(self) -> tuple[StatementLine, ...]:
        lines: list[StatementLine] = []
        for p in self.periods:
            lines += (StatementLine(p.from_ms, p.to_ms, LineKind.PAY, x) for x in p.result.lines)
            lines += (
                StatementLine(p.from_ms, p.to_ms, LineKind.FLOOR, x) for x in p.result.floor_lines
            )
        return tuple(lines)

    @property
    def per_online_hour_minor(self) -> int | None:
        return per_hour(self.total_minor - self.tips_minor, self.time.online_ms)

    @property
    def per_engaged_hour_minor(self) -> int | None:
        return per_hour(self.total_minor - self.tips_minor, self.time.engaged_ms)

    @property
    def unpaid_share(self) -> float:
        if self.time.online_ms == 0:
            return 0.0
        return round(self.unpaid_waiting_ms / self.time.online_ms, 6)

    def to_dict(self) -> dict[str, object]:
        return {
            "driver_id": self.driver_id,
            "from": iso(self.from_ms),
            "to": iso(self.to_ms),
            "policy": self.policy.value,
            "time": self.time.seconds(),
            "waiting": {
                "total_s": seconds(self.time.waiting_ms),
                "paid_s": seconds(self.paid_waiting_ms),
                "unpaid_s": seconds(self.unpaid_waiting_ms),
            },
            "engaged_km": self.engaged_m / 1000,
            "earnings": {
                "currency": self.currency,
                "lines": [line.to_dict() for line in self.lines],
                "topup_minor": self.topup_minor,
                "total_minor": self.total_minor,
            },
            "effective_hourly_minor": {
                "per_online_hour": self.per_online_hour_minor,
                "per_engaged_hour": self.per_engaged_hour_minor,
            },
            "unpaid_share": self.unpaid_share,
        } | ({"rates_conversion": self.conversion.to_dict()} if self.conversion else {})

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)  # RFC 4180: comma, double quotes, CRLF
        writer.writerow(CSV_COLUMNS)
        for item in self.lines:
            line = item.line
            writer.writerow(
                (
                    item.kind.value,
                    iso(item.period_from_ms),
                    iso(item.period_to_ms),
                    line.code.value,
                    line.description,
                    "" if line.quantity is None else str(line.quantity),
                    line.unit or "",
                    line.amount_minor,
                    self.currency,
                )
            )
        span = (iso(self.from_ms), iso(self.to_ms))
        for code, description, value, unit in self._summary_figures():
            writer.writerow(("summary", *span, code, description, value, unit, "", ""))
        for code, description, amount in self._summary_amounts():
            shown = "" if amount is None else amount
            writer.writerow(("summary", *span, code, description, "", "", shown, self.currency))
        return out.getvalue()

    def _summary_figures(self) -> list[tuple[str, str, object, str]]:
        names = {
            "online_s": "Online time, break excluded",
            "idle_s": "Idle (P1, waiting for work)",
            "offered_s": "Offer shown, not yet answered (P1)",
            "break_s": "Break (not online time)",
            "en_route_pickup_s": "Driving to pickup (P2)",
            "at_pickup_s": "Waiting at pickup (P2)",
            "on_trip_s": "On trip (P3)",
            "at_dropoff_s": "Waiting at drop-off (P3)",
        }
        rows: list[tuple[str, str, object, str]] = [
            (code, names[code], value, "s") for code, value in self.time.seconds().items()
        ]
        rows += [
            (
                "waiting_total_s",
                "Waiting: idle, offered, at pickup, at drop-off",
                seconds(self.time.waiting_ms),
                "s",
            ),
            (
                "waiting_paid_s",
                f"Waiting paid under {self.policy}",
                seconds(self.paid_waiting_ms),
                "s",
            ),
            (
                "waiting_unpaid_s",
                f"Waiting unpaid under {self.policy}",
                seconds(self.unpaid_waiting_ms),
                "s",
            ),
            ("engaged_km", "Distance driven while engaged", self.engaged_m / 1000, "km"),
            ("unpaid_share", "Unpaid waiting / online time", self.unpaid_share, "ratio"),
        ]
        return rows

    def _summary_amounts(self) -> list[tuple[str, str, int | None]]:
        return [
            ("base_minor", "Platform pay (share of fares and fees)", self.base_minor),
            ("floor_minor", f"Floor under {self.policy}", self.floor_minor),
            ("topup_minor", "Top-ups, per period", self.topup_minor),
            ("tips_minor", "Tips (never counted toward a floor)", self.tips_minor),
            ("total_minor", "Total pay", self.total_minor),
            ("per_online_hour_minor", "Pay excl. tips per online hour", self.per_online_hour_minor),
            (
                "per_engaged_hour_minor",
                "Pay excl. tips per engaged hour",
                self.per_engaged_hour_minor,
            ),
        ]


def build_statement(
    driver_id: str,
    period_from_ms: int,
    period_to_ms: int,
    policy_name: str,
    segments: Iterable[Segment],
    trips: Iterable[TripRecord],
    rates: RateBook,
    currency: str,
    *,
    jurisdiction: str | None = None,
    period: PayPeriod = PayPeriod.DAY,
    tz: tzinfo | None = None,
) -> Statement:
    """One worker's statement over ``[period_from_ms, period_to_ms)`` under ``policy_name``.

    ``segments`` are the worker's (clipped here to the range); a trip counts in the period in
    which it ended (``TripRecord.ended_ms``). ``jurisdiction`` is the worker's (see
    ``RateBook.resolve`` for the rates chosen); ``tz`` bounds the pay periods and defaults to
    the time zone of the worker's jurisdiction, else of the rates' one, else UTC.
    """
    if period_to_ms <= period_from_ms:
        raise ValueError("a statement must end after it starts")
    policy = get_policy(policy_name)
    chosen = rates.rates_for(policy.name, currency, jurisdiction)
    zone = tz if tz is not None else _zone(rates, jurisdiction or chosen.floor.jurisdiction)
    mine = clip(_checked(driver_id, segments), period_from_ms, period_to_ms)
    trips = tuple(trips)
    periods = tuple(
        PeriodPay(
            start,
            end,
            pay(
                policy,
                clip(mine, start, end),
                (t for t in trips if start <= t.ended_ms < end),
                chosen,
                currency,
            ),
        )
        for start, end in pay_periods(period_from_ms, period_to_ms, zone, period)
    )
    engaged = whole_metres(sum(s.distance_m for s in mine if s.kind in ENGAGED))
    return Statement(
        driver_id=driver_id,
        from_ms=period_from_ms,
        to_ms=period_to_ms,
        policy=policy.name,
        currency=currency,
        time=TimeBreakdown.of(mine),
        engaged_m=engaged,
        periods=periods,
        conversion=chosen.floor.conversion,
    )


def _zone(rates: RateBook, jurisdiction: str) -> tzinfo:
    if jurisdiction == ANY_JURISDICTION:
        return UTC
    return ZoneInfo(rates.jurisdiction(jurisdiction).timezone)


def _checked(driver_id: str, segments: Iterable[Segment]) -> tuple[Segment, ...]:
    """The worker's segments in time order; another worker's, or an overlap, is a bug."""
    ordered = sorted(segments, key=lambda s: (s.start_ms, s.end_ms))
    for segment in ordered:
        if segment.driver_id != driver_id:
            raise ValueError(f"segment of {segment.driver_id!r} in {driver_id!r}'s statement")
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        if later.start_ms < earlier.end_ms:
            raise ValueError(f"overlapping segments: {earlier} and {later}")
    return tuple(ordered)


def seconds(ms: int) -> float:
    return ms / 1000


def iso(ms: int) -> str:
    return from_ms(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def per_hour(amount_minor: int, ms: int) -> int | None:
    if ms <= 0:
        return None
    return round_minor(Decimal(amount_minor) * MS_PER_HOUR / ms)


# --- operator report helpers ---------------------------------------------------------------


def gini(values: Iterable[float]) -> float:
    """The Gini coefficient of non-negative ``values``: 0 when all are equal, towards 1 when
    one worker carries it all. 0.0 for no values or an all-zero vector.

    G = sum_i (2i - n - 1) x_(i) / (n sum x), with x sorted ascending and i = 1..n (the mean
    absolute difference over twice the mean).
    """
    ordered = sorted(float(v) for v in values)
    if any(v < 0 for v in ordered):
        raise ValueError("gini needs non-negative values")
    total, n = sum(ordered), len(ordered)
    if n == 0 or total == 0:
        return 0.0
    weighted = sum((2 * i - n - 1) * v for i, v in enumerate(ordered, start=1))
    return weighted / (n * total)


@dataclass(frozen=True, slots=True)
class FloorGap:
    """A worker's platform pay against a policy's floor, per online hour.

    ``below`` is whether a top-up was due in any period: exact even for per-trip rules, where
    comparing the hourly figures alone could miss a short trip hidden by a generous one.
    """

    policy: PolicyName
    online_ms: int
    pay_per_online_hour_minor: int | None  # platform pay: no tips, before any top-up
    floor_per_online_hour_minor: int | None
    topup_minor: int

    @property
    def below(self) -> bool:
        return self.topup_minor > 0


def floor_gap(statement: Statement) -> FloorGap:
    online = statement.time.online_ms
    return FloorGap(
        policy=statement.policy,
        online_ms=online,
        pay_per_online_hour_minor=per_hour(statement.base_minor, online),
        floor_per_online_hour_minor=per_hour(statement.floor_minor, online),
        topup_minor=statement.topup_minor,
    )


def share_below_floor(statements: Iterable[Statement]) -> Mapping[PolicyName, float]:
    """Per policy, the share of workers (with online time) whose platform pay fell below it."""
    below: dict[PolicyName, list[bool]] = {}
    for statement in statements:
        gap = floor_gap(statement)
        if gap.online_ms > 0:
            below.setdefault(gap.policy, []).append(gap.below)
    return {policy: sum(flags) / len(flags) for policy, flags in below.items()}


def unpaid_waiting_gini(statements: Sequence[Statement]) -> float:
    """Inequality of unpaid waiting hours across the workers of these statements."""
    return gini(s.unpaid_waiting_ms / MS_PER_HOUR for s in statements)
