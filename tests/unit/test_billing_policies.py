"""Pay policies: rates, classification, floors, top-ups, with hand-computed cases.

Rules checked (DESIGN.md s4, issue 4 "Money", reference/pay-rules.md s1): nl_hourly pays all
online time except break at the statutory minimum wage (EUR 14.06/h from 2025-01-01, 14.40/h
from 2025-07-01) plus EUR 0.23 per engaged km; Prop 22 pays 120 % x minimum wage x engaged
hours + $0.36 per engaged mile, P1 unpaid; NYC TLC pays per trip $1.360 per P3 mile + $0.583
per P3 minute (from 2024-03-01); Seattle PayUp pays per offer the greater of $0.45/engaged min
+ $0.77/engaged mi and $5.20 (2024: 0.44, 0.74, 5.00); platform_share pays 75 % of the fare
without booking fee and fees, plus the fees. A floor above platform pay posts a top-up; tips
never count toward a floor.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from polder.billing.domain.policies import (
    POLICIES,
    POLICY_PARAMS,
    RATES_FILE,
    CurrencyMismatch,
    PayClass,
    PayCode,
    PayPeriod,
    PayResult,
    PolicyName,
    Rates,
    TripOutcome,
    TripRecord,
    UnknownPolicy,
    UnknownRates,
    clip,
    get_policy,
    load_rates,
    parse_rates,
    pay,
    pay_periods,
    platform_pay,
    to_ms,
)
from polder.billing.domain.segments import ONLINE, WAITING, Segment, SegmentKind
from polder.fares.fare import Fare, FareLine, LineCode

K = SegmentKind
BOOK = load_rates()
CEST = timezone(timedelta(hours=2))
PST = timezone(timedelta(hours=-8))
EDT = timezone(timedelta(hours=-4))
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
MIN = 60_000
HOUR = 3_600_000
MILE = 1609.344  # metres


def at(year: int, month: int, day: int, hour: int, tz: timezone, minute: int = 0) -> int:
    return to_ms(datetime(year, month, day, hour, minute, tzinfo=tz))


class Shift:
    """Consecutive segments of one driver, laid end to end from ``start`` (minutes)."""

    def __init__(self, start_ms: int, driver_id: str = "d1") -> None:
        self.cursor = start_ms
        self.driver_id = driver_id
        self.segments: list[Segment] = []

    def add(
        self, kind: SegmentKind, mins: float, metres: float = 0.0, trip: str | None = None
    ) -> Shift:
        end = self.cursor + round(mins * MIN)
        self.segments.append(
            Segment(self.driver_id, kind, self.cursor, end, trip_id=trip, distance_m=metres)
        )
        self.cursor = end
        return self


def fare(
    currency: str,
    metered: int = 0,
    booking: int = 0,
    wait: int = 0,
    cancellation: int = 0,
    no_show: int = 0,
) -> Fare:
    lines = [
        FareLine(LineCode.BASE, "metered", metered),
        FareLine(LineCode.BOOKING_FEE, "booking", booking),
        FareLine(LineCode.WAIT_FEE, "wait", wait),
        FareLine(LineCode.CANCELLATION_FEE, "cancel", cancellation),
        FareLine(LineCode.NO_SHOW_FEE, "no-show", no_show),
    ]
    return Fare.of(currency, lines, Decimal(1))


def trip(
    trip_id: str,
    accepted_ms: int,
    *,
    engaged_min: float,
    p3_min: float = 0,
    engaged_m: float = 0,
    p3_m: float = 0,
    fare: Fare | None = None,
    tips: int = 0,
    outcome: TripOutcome = TripOutcome.COMPLETED,
) -> TripRecord:
    engaged_ms = round(engaged_min * MIN)
    completed = accepted_ms + engaged_ms if outcome is TripOutcome.COMPLETED else None
    return TripRecord(
        trip_id=trip_id,
        order_id=f"o-{trip_id}",
        product="ride",
        accepted_ms=accepted_ms,
        completed_ms=completed,
        outcome=outcome,
        p3_distance_m=p3_m,
        p3_duration_ms=round(p3_min * MIN),
        engaged_distance_m=engaged_m,
        engaged_duration_ms=engaged_ms,
        fare=fare,
        tips_minor=tips,
    )


def codes(result: PayResult) -> dict[str, int]:
    return {line.code.value: line.amount_minor for line in result.lines}


def floor_codes(result: PayResult) -> dict[str, int]:
    return {line.code.value: line.amount_minor for line in result.floor_lines}


# --- the rates file ------------------------------------------------------------------------


def test_packaged_rates_cover_every_policy_with_a_source() -> None:
    assert RATES_FILE.name == "policies.json"
    assert {v.policy for v in BOOK.versions} == set(PolicyName)
    for version in BOOK.versions:
        assert len(version.source) > 40, version.version
        assert version.params.keys() == POLICY_PARAMS[version.policy]


def test_packaged_rates_are_the_published_figures() -> None:
    def rates(policy: str, jurisdiction: str, when: int) -> dict[str, Decimal]:
        return dict(BOOK.schedule(policy, jurisdiction).at(when).params)

    jan, jul = at(2025, 1, 2, 12, CEST), at(2025, 7, 2, 12, CEST)
    # NL statutory hourly minimum wage, and the EUR 0.23/km tax-free allowance.
    assert rates("nl_hourly", "nl", jan) == {"hourly_minor": 1406, "per_km_minor": 23}
    assert rates("nl_hourly", "nl", jul) == {"hourly_minor": 1440, "per_km_minor": 23}
    # Prop 22: 120 % of CA's $16.50 + $0.36/mi (2025).
    assert rates("prop22", "us-ca", jul) == {
        "minimum_wage_minor": 1650,
        "wage_multiplier": Decimal("1.2"),
        "per_mile_minor": 36,
    }
    # NYC TLC from 2024-03-01: $1.360/mi, $0.583/min.
    assert rates("nyc_tlc", "us-ny-nyc", jul) == {
        "per_mile_minor": Decimal("136.0"),
        "per_minute_minor": Decimal("58.3"),
    }
    # Seattle PayUp 2024 and 2025.
    june_2024 = at(2024, 6, 1, 12, PST)
    assert rates("seattle_payup", "us-wa-seattle", june_2024) == {
        "per_minute_minor": 44,
        "per_mile_minor": 74,
        "per_offer_minor": 500,
    }
    assert rates("seattle_payup", "us-wa-seattle", jul) == {
        "per_minute_minor": 45,
        "per_mile_minor": 77,
        "per_offer_minor": 520,
    }
    assert rates("platform_share", "*", jul) == {
        "fare_share": Decimal("0.75"),
        "fee_share": 1,
    }


def test_rates_change_at_the_instant_they_take_effect() -> None:
    # NL minimum wage rises at 2025-07-01 00:00 Amsterdam time (22:00 UTC the day before).
    schedule = BOOK.schedule("nl_hourly", "nl")
    change = at(2025, 7, 1, 0, CEST)
    assert change == to_ms(datetime(2025, 6, 30, 22, tzinfo=UTC))
    assert schedule.at(change - 1).rate("hourly_minor") == 1406
    assert schedule.at(change).rate("hourly_minor") == 1440
    spans = schedule.spans(change - HOUR, change + HOUR)
    assert [(v.rate("hourly_minor"), s, e) for v, s, e in spans] == [
        (1406, change - HOUR, change),
        (1440, change, change + HOUR),
    ]
    with pytest.raises(UnknownRates):
        schedule.at(at(2024, 12, 31, 12, CEST))


def test_resolve_uses_own_jurisdiction_then_any_then_the_policys_home_in_that_currency() -> None:
    assert BOOK.resolve("nl_hourly", "EUR", "nl").jurisdiction == "nl"
    assert BOOK.resolve("platform_share", "EUR", "nl").jurisdiction == "*"
    # An NYC worker's record under Prop 22: California's figures (same currency).
    assert BOOK.resolve("prop22", "USD", "us-ny-nyc").jurisdiction == "us-ca"
    assert BOOK.resolve("seattle_payup", "USD").jurisdiction == "us-wa-seattle"
    # Another currency (issue 4: any policy can be asked for, to compare rules on the same
    # record): the home's money rates converted at the reference rate of fx_rates.json, ECB
    # 2025-02-21, 1 EUR = 1.0465 USD; ratios as they are.
    converted = BOOK.resolve("prop22", "EUR", "nl")
    home = BOOK.schedule("prop22", "us-ca")
    assert (converted.jurisdiction, converted.currency) == ("us-ca", "EUR")
    assert converted.conversion is not None and converted.conversion.rate == Decimal("1.0465")
    for usd, eur in zip(home.versions, converted.versions, strict=True):
        assert eur.params["per_mile_minor"] == usd.params["per_mile_minor"] / Decimal("1.0465")
        assert eur.params["minimum_wage_minor"] == (
            usd.params["minimum_wage_minor"] / Decimal("1.0465")
        )
        assert eur.params["wage_multiplier"] == usd.params["wage_multiplier"]
        assert "converted from USD" in eur.source
    # Without a reference rate for the pair, currencies are never converted.
    bare = parse_rates(_document())
    with pytest.raises(UnknownRates, match="prop22 rates in EUR"):
        bare.resolve("prop22", "EUR", "nl")
    with pytest.raises(CurrencyMismatch):
        BOOK.resolve("nl_hourly", "USD", "nl")
    with pytest.raises(UnknownPolicy):
        BOOK.resolve("uk_hourly", "EUR")
    assert BOOK.jurisdiction_of_city("amsterdam").default_policy is PolicyName.NL_HOURLY
    assert BOOK.jurisdiction_of_city("seattle").timezone == "America/Los_Angeles"


def _document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(RATES_FILE.read_text(encoding="utf-8"))
    return document


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["rates"][0]["rates"].update(hourly_minr="1406"), "unknown rates"),
        (lambda d: d["rates"][0]["rates"].pop("per_km_minor"), "missing rates"),
        (lambda d: d["rates"][0]["rates"].update(hourly_minor=14.06), "decimal string"),
        (lambda d: d["rates"][0]["rates"].update(hourly_minor="-1"), "non-negative"),
        (lambda d: d["rates"][-1]["rates"].update(fare_share="1.5"), "at most 1"),
        (lambda d: d["rates"][0].update(policy="uk"), "unknown pay policy"),
        (lambda d: d["rates"][0].update(jurisdiction="be"), "undeclared"),
        (lambda d: d["rates"][0].update(effective_from="2025-01-01T00:00"), "UTC offset"),
        (lambda d: d["rates"][0].pop("source"), "missing rate keys"),
        (lambda d: d["rates"].append(dict(d["rates"][0])), "share a policy"),
        (lambda d: d.update(format=2), "format"),
    ],
)
def test_a_bad_rates_file_is_refused(mutate: Any, message: str) -> None:
    document = _document()
    mutate(document)
    with pytest.raises((ValueError, KeyError), match=message):
        parse_rates(document)


# --- classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "paid"),
    [
        # UK/NL: all online time except break (Aslam; HR 2023:443).
        ("nl_hourly", set(ONLINE)),
        # Prop 22: engaged time, acceptance -> completion; P1 unpaid.
        (
            "prop22",
            {
                K.EN_ROUTE_PICKUP,
                K.AT_PICKUP_WITHIN_GRACE,
                K.AT_PICKUP_BEYOND_GRACE,
                K.ON_TRIP,
                K.AT_DROPOFF,
            },
        ),
        # TLC: P3 minutes; P1/P2 only through the utilization gross-up.
        ("nyc_tlc", {K.ON_TRIP, K.AT_DROPOFF}),
        # PayUp: engaged minutes of each offer.
        (
            "seattle_payup",
            {
                K.EN_ROUTE_PICKUP,
                K.AT_PICKUP_WITHIN_GRACE,
                K.AT_PICKUP_BEYOND_GRACE,
                K.ON_TRIP,
                K.AT_DROPOFF,
            },
        ),
        # The fare pays trip minutes and, through the wait fee, waiting beyond grace.
        ("platform_share", {K.ON_TRIP, K.AT_PICKUP_BEYOND_GRACE}),
    ],
)
def test_each_policy_pays_the_seconds_its_rule_names(policy: str, paid: set[SegmentKind]) -> None:
    rule = get_policy(policy)
    assert rule.name == policy
    for kind in K:
        expected = PayClass.PAID if kind in paid else PayClass.UNPAID
        assert rule.classify(Segment("d1", kind, 0, 1000)) is expected, kind
    # Break is never online time, so it is never paid.
    assert rule.classify(Segment("d1", K.BREAK, 0, 1000)) is PayClass.UNPAID


def test_every_policy_is_registered_under_its_name() -> None:
    assert set(POLICIES) == set(PolicyName)
    assert all(rule.name is name for name, rule in POLICIES.items())
    with pytest.raises(UnknownPolicy, match="known: nl_hourly"):
        get_policy("hourly")


# --- nl_hourly -----------------------------------------------------------------------------


def nl_shift() -> Shift:
    """09:00-17:00 in Amsterdam on 2025-06-10 with a 30 min break: 7.5 h online, 15 engaged km."""
    shift = Shift(at(2025, 6, 10, 9, CEST))
    shift.add(K.IDLE, 60).add(K.OFFERED, 1)
    shift.add(K.EN_ROUTE_PICKUP, 10, 3000, "t1").add(K.AT_PICKUP_WITHIN_GRACE, 2, 0, "t1")
    shift.add(K.AT_PICKUP_BEYOND_GRACE, 3, 0, "t1").add(K.ON_TRIP, 30, 12000, "t1")
    shift.add(K.AT_DROPOFF, 2, 0, "t1")
    shift.add(K.IDLE, 72, 5000)  # cruising: online km, not engaged km
    shift.add(K.BREAK, 30).add(K.IDLE, 270)
    return shift


def nl_trip(tips: int = 500) -> TripRecord:
    # Fare: 40.00 metered + 2.00 booking fee + 3 min x 0.95 wait fee.
    return trip(
        "t1",
        at(2025, 6, 10, 10, CEST, 1),
        engaged_min=47,
        p3_min=32,
        engaged_m=15000,
        p3_m=12000,
        fare=fare("EUR", metered=4000, booking=200, wait=285),
        tips=tips,
    )


def test_nl_shift_paid_below_minimum_wage_is_topped_up() -> None:
    result = pay(
        "nl_hourly",
        nl_shift().segments,
        [nl_trip()],
        BOOK.rates_for("nl_hourly", "EUR", "nl"),
        "EUR",
    )
    # Floor: EUR 14.06 x 7.5 online h = 105.45, + EUR 0.23 x 15 engaged km = 3.45.
    assert floor_codes(result) == {"minimum_wage": 10545, "km_allowance": 345}
    assert result.floor_minor == 10890
    # Platform pay: 75 % of 40.00 (booking fee and wait fee excluded) + the 2.85 wait fee.
    assert result.base_minor == 3000 + 285
    assert result.topup_minor == 10890 - 3285 == 7605
    assert result.tips_minor == 500
    assert codes(result) == {"fare_share": 3000, "wait_fee": 285, "topup": 7605, "tips": 500}
    assert result.total_minor == 3285 + 7605 + 500
    # All 450 online minutes paid; the 30 min break is not online time.
    assert result.paid_ms == 450 * MIN and result.unpaid_ms == 0
    # Waiting: idle 402 + offered 1 + at pickup 5 + at drop-off 2 = 410 min, all paid.
    assert result.paid_waiting_ms == 410 * MIN and result.unpaid_waiting_ms == 0


def test_nl_shift_paid_above_the_floor_gets_no_topup() -> None:
    rich = nl_trip()
    rich = TripRecord(**{**_fields(rich), "fare": fare("EUR", metered=20000)})
    result = pay(
        "nl_hourly", nl_shift().segments, [rich], BOOK.rates_for("nl_hourly", "EUR"), "EUR"
    )
    assert result.base_minor == 15000 > result.floor_minor == 10890
    assert result.topup_minor == 0
    assert "topup" not in codes(result)


def _fields(record: TripRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in TripRecord.__dataclass_fields__}


# --- prop22 --------------------------------------------------------------------------------


def test_prop22_pays_engaged_time_only_so_idle_hours_stay_unpaid() -> None:
    # 8 h online in California on 2025-03-04: 4 h idle, one 60 min engagement, ~3 h idle.
    shift = Shift(at(2025, 3, 4, 8, PST))
    shift.add(K.IDLE, 240, 20000).add(K.OFFERED, 1)
    shift.add(K.EN_ROUTE_PICKUP, 12, 3000, "t1").add(K.AT_PICKUP_WITHIN_GRACE, 2, 0, "t1")
    shift.add(K.ON_TRIP, 44, 13093, "t1").add(K.AT_DROPOFF, 2, 0, "t1")
    shift.add(K.IDLE, 179)
    ride = trip(
        "t1",
        at(2025, 3, 4, 12, PST, 1),
        engaged_min=60,
        p3_min=46,
        engaged_m=16093,
        p3_m=13093,
        fare=fare("USD", metered=2400, booking=300),
    )
    result = pay("prop22", shift.segments, [ride], BOOK.rates_for("prop22", "USD"), "USD")
    # 120 % x $16.50 x 1 engaged h = $19.80; $0.36 x 16093 m / 1609.344 = 9.99978 mi = $3.60.
    assert floor_codes(result) == {"engaged_time": 1980, "engaged_miles": 360}
    # The 20 km cruising while idle and the 7 idle hours earn nothing under Prop 22.
    assert result.floor_minor == 2340
    assert result.base_minor == 1800  # 75 % of $24.00; the booking fee stays with the platform
    assert result.topup_minor == 540
    assert result.paid_ms == 60 * MIN and result.unpaid_ms == 420 * MIN
    # Waiting 424 min: idle 419 + offered 1 unpaid; at pickup 2 + at drop-off 2 paid.
    assert result.unpaid_waiting_ms == 420 * MIN
    assert result.paid_waiting_ms == 4 * MIN
    # The same record under the NL rule would pay all 8 h: the difference is P1.
    assert result.online_ms == 480 * MIN


# --- nyc_tlc -------------------------------------------------------------------------------


def test_nyc_tlc_sets_a_minimum_per_trip_and_a_generous_trip_cannot_hide_a_short_one() -> None:
    start = at(2025, 5, 6, 9, EDT)
    shift = Shift(start)
    shift.add(K.IDLE, 60).add(K.EN_ROUTE_PICKUP, 10, 2000, "t1")
    shift.add(K.AT_PICKUP_WITHIN_GRACE, 2, 0, "t1").add(K.ON_TRIP, 20, 8047, "t1")
    shift.add(K.AT_DROPOFF, 1, 0, "t1").add(K.IDLE, 30).add(K.EN_ROUTE_PICKUP, 5, 0, "t2")
    shift.add(K.AT_PICKUP_WITHIN_GRACE, 1, 0, "t2").add(K.ON_TRIP, 10, 3219, "t2")
    shift.add(K.AT_DROPOFF, 1, 0, "t2")
    t1 = trip(
        "t1",
        start + 60 * MIN,
        engaged_min=33,
        p3_min=21,
        p3_m=8047,
        fare=fare("USD", metered=2000, booking=250),
    )
    t2 = trip(
        "t2",
        start + 124 * MIN,
        engaged_min=17,
        p3_min=11,
        p3_m=3219,
        fare=fare("USD", metered=2000),
    )
    result = pay("nyc_tlc", shift.segments, [t1, t2], BOOK.rates_for("nyc_tlc", "USD"), "USD")
    # P3 = pick-up -> completion (on trip + at drop-off).
    # t1: $1.360 x 8047 m (5.000174 mi) = $6.80, + $0.583 x 21 min = $12.24 -> $19.04.
    # t2: $1.360 x 3219 m (2.000194 mi) = $2.72, + $0.583 x 11 min = $6.41 -> $9.13.
    assert floor_codes(result) == {"trip_miles": 680 + 272, "trip_minutes": 1224 + 641}
    assert result.floor_minor == 1904 + 913
    # Platform pay: $15.00 per trip. Over the period $30.00 beats the $28.17 floor, but t1
    # alone is $4.04 short: TLC's minimum binds each trip.
    assert result.base_minor == 3000
    assert result.topup_minor == 1904 - 1500 == 404
    # P3 is paid (on trip 30 min + at drop-off 2 min); P1 and P2 waiting is not.
    assert result.paid_ms == 32 * MIN
    assert result.paid_waiting_ms == 2 * MIN
    assert result.unpaid_waiting_ms == (90 + 3) * MIN


def test_nyc_tlc_before_its_2024_rates_is_an_unknown_rate_not_a_guess() -> None:
    old = trip("t0", at(2024, 2, 1, 12, EDT), engaged_min=10, p3_min=5, p3_m=1000)
    with pytest.raises(UnknownRates, match="nyc_tlc"):
        pay("nyc_tlc", [], [old], BOOK.rates_for("nyc_tlc", "USD"), "USD")


# --- seattle_payup -------------------------------------------------------------------------


def test_seattle_payup_pays_the_greater_of_per_minute_and_mile_or_the_per_offer_minimum() -> None:
    day = at(2025, 2, 11, 10, PST)
    offers = [
        # 6 min, 1609 m: $0.45 x 6 = $2.70 + $0.77 x 0.99979 mi = $0.77 -> $3.47 < $5.20.
        trip("short", day, engaged_min=6, p3_min=3, engaged_m=1609, fare=fare("USD", 400)),
        # 30 min, 12875 m: $13.50 + $0.77 x 8.00015 mi = $6.16 -> $19.66 > $5.20.
        trip(
            "long", day + HOUR, engaged_min=30, p3_min=20, engaged_m=12875, fare=fare("USD", 3000)
        ),
        # Cancelled by the worker without cause: no PayUp minimum.
        trip("mine", day + 2 * HOUR, engaged_min=4, outcome=TripOutcome.CANCELLED_BY_DRIVER),
        # Cancelled by the customer after 3 min and 805 m: $1.35 + $0.39 -> $5.20 minimum;
        # the $5.00 cancellation fee is passed through in full.
        trip(
            "theirs",
            day + 3 * HOUR,
            engaged_min=3,
            engaged_m=805,
            outcome=TripOutcome.CANCELLED_BY_CUSTOMER,
            fare=fare("USD", cancellation=500),
        ),
    ]
    result = pay("seattle_payup", [], offers, BOOK.rates_for("seattle_payup", "USD"), "USD")
    assert floor_codes(result) == {
        "offer_minutes": 270 + 1350 + 135,
        "offer_miles": 77 + 616 + 39,
        "offer_minimum": (520 - 347) + (520 - 174),
    }
    assert result.floor_minor == 520 + 1966 + 520
    assert codes(result)["fare_share"] == 300 + 2250
    assert codes(result)["cancellation_fee"] == 500
    # Shortfalls: short $5.20 - $3.00; theirs $5.20 - $5.00; long is above its minimum.
    assert result.topup_minor == 220 + 20
    topup = next(line for line in result.lines if line.code is PayCode.TOPUP)
    assert topup.description.startswith("Top-up: 2 of 3 trips paid below")


def test_seattle_payup_2024_figures_apply_to_offers_accepted_in_2024() -> None:
    rates = BOOK.rates_for("seattle_payup", "USD")
    offer_2024 = trip("a", at(2024, 6, 1, 12, PST), engaged_min=5, engaged_m=1609)
    offer_2025 = trip("b", at(2025, 6, 1, 12, PST), engaged_min=5, engaged_m=1609)
    # 2024: $0.44 x 5 + $0.74 x 0.99979 mi = $2.94 -> lifted to $5.00; 2025: $3.02 -> $5.20.
    assert pay("seattle_payup", [], [offer_2024], rates, "USD").topup_minor == 500
    assert pay("seattle_payup", [], [offer_2025], rates, "USD").topup_minor == 520
    both = pay("seattle_payup", [], [offer_2024, offer_2025], rates, "USD")
    minimums = [line for line in both.floor_lines if line.code is PayCode.OFFER_MINIMUM]
    assert [line.description[-20:] for line in minimums] == [
        "(seattle_payup-2024)",
        "(seattle_payup-2025)",
    ]
    assert both.floor_minor == 1020


# --- platform_share ------------------------------------------------------------------------


def test_platform_share_is_the_baseline_with_no_floor() -> None:
    shift = Shift(at(2025, 6, 10, 9, CEST))
    shift.add(K.IDLE, 30).add(K.EN_ROUTE_PICKUP, 8, 2500, "a")
    shift.add(K.AT_PICKUP_WITHIN_GRACE, 2, 0, "a").add(K.AT_PICKUP_BEYOND_GRACE, 2, 0, "a")
    shift.add(K.ON_TRIP, 20, 9000, "a").add(K.AT_DROPOFF, 1, 0, "a").add(K.IDLE, 17)
    rides = [
        trip(
            "a",
            shift.segments[1].start_ms,
            engaged_min=33,
            p3_min=21,
            fare=fare("EUR", metered=2000, booking=200, wait=190),
        ),
        trip(
            "b",
            shift.cursor,
            engaged_min=4,
            outcome=TripOutcome.CANCELLED_BY_CUSTOMER,
            fare=fare("EUR", cancellation=500),
        ),
    ]
    result = pay(
        "platform_share", shift.segments, rides, BOOK.rates_for("platform_share", "EUR"), "EUR"
    )
    assert result.floor_lines == () and result.floor_minor == 0 and result.topup_minor == 0
    assert codes(result) == {"fare_share": 1500, "wait_fee": 190, "cancellation_fee": 500}
    assert result.total_minor == 2190
    # The fare pays trip minutes and waiting beyond grace; the rest is unpaid.
    assert result.paid_ms == (20 + 2) * MIN
    assert result.paid_waiting_ms == 2 * MIN
    assert result.unpaid_waiting_ms == (30 + 2 + 1 + 17) * MIN


def test_platform_pay_rounds_each_trip_half_up_and_rejects_other_currencies() -> None:
    share = BOOK.schedule("platform_share", "*")
    when = at(2025, 6, 10, 9, CEST)
    # 75 % of 0.01 and 0.03 = 0.0075 and 0.0225 -> 1 cent each (half-up), 2 in all.
    odd = [
        trip(t, when, engaged_min=1, fare=fare("EUR", metered=m)) for t, m in (("a", 1), ("b", 3))
    ]
    base = platform_pay(odd, share, "EUR")
    assert dict(base.per_trip) == {"a": 1, "b": 2}
    assert base.amount_minor == 3
    with pytest.raises(CurrencyMismatch):
        platform_pay(odd, share, "USD")


# --- tips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tips", [0, 500, 20_000])
def test_tips_never_count_toward_a_floor(tips: int) -> None:
    rates = BOOK.rates_for("nl_hourly", "EUR")
    result = pay("nl_hourly", nl_shift().segments, [nl_trip(tips=tips)], rates, "EUR")
    assert result.topup_minor == 7605  # the same top-up whatever the tips
    assert result.tips_minor == tips
    assert result.total_minor == 3285 + 7605 + tips


def test_tips_never_count_toward_a_per_offer_minimum() -> None:
    offer = trip(
        "short",
        at(2025, 2, 11, 10, PST),
        engaged_min=6,
        engaged_m=1609,
        tips=1000,
        fare=fare("USD", 400),
    )
    result = pay("seattle_payup", [], [offer], BOOK.rates_for("seattle_payup", "USD"), "USD")
    assert result.topup_minor == 520 - 300
    assert codes(result) == {"fare_share": 300, "topup": 220, "tips": 1000}


# --- periods and effective dating ----------------------------------------------------------


def test_a_shift_across_the_july_2025_rise_is_paid_at_each_rate_for_its_own_hours() -> None:
    # Idle 23:00-01:00 Amsterdam time across 2025-07-01 00:00, one pay() call (say a week).
    start = at(2025, 6, 30, 23, CEST)
    segments = [Segment("d1", K.IDLE, start, start + 2 * HOUR, distance_m=4000)]
    result = pay("nl_hourly", segments, [], BOOK.rates_for("nl_hourly", "EUR"), "EUR")
    # 1 h x EUR 14.06 + 1 h x EUR 14.40; idle km earn no engaged-km allowance.
    assert [(line.code, line.amount_minor) for line in result.floor_lines] == [
        (PayCode.MINIMUM_WAGE, 1406),
        (PayCode.MINIMUM_WAGE, 1440),
    ]
    assert [line.quantity for line in result.floor_lines] == [Decimal("1.0000")] * 2
    assert "nl_hourly-nl-2025-01" in result.floor_lines[0].description
    assert "nl_hourly-nl-2025-07" in result.floor_lines[1].description
    assert result.topup_minor == 2846


def test_engaged_km_across_a_rate_change_are_split_by_time() -> None:
    start = at(2025, 6, 30, 23, CEST, 30)
    segments = [Segment("d1", K.ON_TRIP, start, start + HOUR, distance_m=10_000)]
    result = pay("nl_hourly", segments, [], BOOK.rates_for("nl_hourly", "EUR"), "EUR")
    allowances = [line for line in result.floor_lines if line.code is PayCode.KM_ALLOWANCE]
    # Half the hour (and so half the 10 km) before the change, half after: 5 km x 0.23 each.
    assert [(line.quantity, line.amount_minor) for line in allowances] == [
        (Decimal(5), 115),
        (Decimal(5), 115),
    ]


def test_pay_periods_are_local_days_or_weeks() -> None:
    start, end = at(2025, 6, 10, 0, CEST), at(2025, 6, 12, 0, CEST)
    assert pay_periods(start, end, AMSTERDAM) == (
        (start, start + 24 * HOUR),
        (start + 24 * HOUR, end),
    )
    # A range starting mid-day: the first period is partial.
    assert pay_periods(start + 6 * HOUR, end, AMSTERDAM)[0] == (start + 6 * HOUR, start + 24 * HOUR)
    # Weeks run Monday to Monday (2025-06-10 is a Tuesday; 2025-06-16 a Monday).
    monday = at(2025, 6, 16, 0, CEST)
    assert pay_periods(start, end + 7 * 24 * HOUR, AMSTERDAM, PayPeriod.WEEK) == (
        (start, monday),
        (monday, end + 7 * 24 * HOUR),
    )
    assert pay_periods(start, end, AMSTERDAM, "week") == ((start, end),)  # type: ignore[arg-type]
    # The day the clocks go back (2025-10-26) has 25 hours in Amsterdam.
    autumn = at(2025, 10, 26, 0, CEST)
    (day,) = pay_periods(autumn, autumn + 25 * HOUR, AMSTERDAM)
    assert day[1] - day[0] == 25 * HOUR
    with pytest.raises(ValueError, match="end after"):
        pay_periods(end, start, AMSTERDAM)


def test_clip_cuts_segments_at_a_boundary_and_splits_their_distance() -> None:
    midnight = at(2025, 6, 11, 0, CEST)
    across = Segment("d1", K.ON_TRIP, midnight - 30 * MIN, midnight + 90 * MIN, distance_m=8000)
    before, after = clip([across], 0, midnight), clip([across], midnight, midnight + 24 * HOUR)
    assert [(s.start_ms, s.end_ms, s.distance_m) for s in before] == [
        (midnight - 30 * MIN, midnight, 2000)
    ]
    assert [(s.start_ms, s.end_ms, s.distance_m) for s in after] == [
        (midnight, midnight + 90 * MIN, 6000)
    ]
    assert clip([across], midnight + 2 * HOUR, midnight + 3 * HOUR) == ()


# --- records -------------------------------------------------------------------------------


def test_a_cancelled_trip_ends_when_its_engaged_time_ends() -> None:
    cancelled = trip("c", 1_000, engaged_min=3, outcome=TripOutcome.CANCELLED_BY_CUSTOMER)
    assert cancelled.completed_ms is None
    assert cancelled.ended_ms == 1_000 + 3 * MIN
    done = trip("d", 1_000, engaged_min=3)
    assert done.ended_ms == done.completed_ms == 1_000 + 3 * MIN


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"completed_ms": None}, "needs completed_ms"),
        ({"completed_ms": 0}, "before it was accepted"),
        ({"tips_minor": -1}, "tips_minor"),
        ({"p3_distance_m": float("nan")}, "p3_distance_m"),
        ({"p3_duration_ms": 10 * MIN}, "P3 is part of engaged time"),
    ],
)
def test_an_inconsistent_trip_record_is_refused(change: dict[str, Any], message: str) -> None:
    fields = _fields(trip("t", 1_000, engaged_min=3, p3_min=2))
    with pytest.raises(ValueError, match=message):
        TripRecord(**{**fields, **change})


def test_pay_refuses_rates_in_another_currency() -> None:
    usd = BOOK.rates_for("prop22", "USD")
    with pytest.raises(CurrencyMismatch):
        pay("prop22", [], [], Rates(usd.floor, usd.share), "EUR")


def test_every_online_second_is_paid_or_unpaid_under_every_policy() -> None:
    segments = nl_shift().segments
    online = sum(s.duration_ms for s in segments if s.kind in ONLINE)
    waiting = sum(s.duration_ms for s in segments if s.kind in WAITING)
    for name in ("nl_hourly", "platform_share"):
        result = pay(name, segments, [nl_trip()], BOOK.rates_for(name, "EUR"), "EUR")
        assert result.paid_ms + result.unpaid_ms == online
        assert result.paid_waiting_ms + result.unpaid_waiting_ms == waiting
