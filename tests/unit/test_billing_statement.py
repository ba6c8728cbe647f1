"""Statements: the issue-4 shape, the arithmetic of seconds and money, per-day top-ups, CSV,
and the operator report's helpers (Gini of unpaid waiting, share of workers below a floor).

Rules checked: issue 4 "API" (statement keys; waiting = idle + offered + at pickup + at
drop-off; unpaid_share = unpaid waiting / online time), DESIGN.md s4 (pay checked per period,
day or week; tips never count toward a floor), the NL minimum wage rise on 2025-07-01
(reference/pay-rules.md s1).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from polder.billing.domain.policies import (
    PayCode,
    PayPeriod,
    PolicyName,
    TripOutcome,
    TripRecord,
    load_rates,
    to_ms,
)
from polder.billing.domain.segments import Segment, SegmentKind
from polder.billing.domain.statement import (
    CSV_COLUMNS,
    LineKind,
    Statement,
    build_statement,
    floor_gap,
    gini,
    share_below_floor,
    unpaid_waiting_gini,
)
from polder.fares.fare import Fare, FareLine, LineCode

K = SegmentKind
BOOK = load_rates()
CEST = timezone(timedelta(hours=2))
PST = timezone(timedelta(hours=-8))
MIN = 60_000
HOUR = 3_600_000
DAY = 24 * HOUR


def at(year: int, month: int, day: int, hour: int, tz: timezone, minute: int = 0) -> int:
    return to_ms(datetime(year, month, day, hour, minute, tzinfo=tz))


def segments(
    start_ms: int, *parts: tuple[SegmentKind, float, float], driver: str = "d1"
) -> list[Segment]:
    """Consecutive segments from ``start_ms``: (kind, minutes, metres)."""
    out, cursor = [], start_ms
    for kind, mins, metres in parts:
        end = cursor + round(mins * MIN)
        out.append(Segment(driver, kind, cursor, end, distance_m=metres))
        cursor = end
    return out


def eur_fare(metered: int, booking: int = 0, wait: int = 0) -> Fare:
    lines = [
        FareLine(LineCode.BASE, "metered", metered),
        FareLine(LineCode.BOOKING_FEE, "booking", booking),
        FareLine(LineCode.WAIT_FEE, "wait", wait),
    ]
    return Fare.of("EUR", lines, Decimal(1))


def ride(
    trip_id: str, accepted_ms: int, engaged_min: int, fare: Fare | None, tips: int = 0
) -> TripRecord:
    return TripRecord(
        trip_id=trip_id,
        order_id=f"o-{trip_id}",
        product="ride",
        accepted_ms=accepted_ms,
        completed_ms=accepted_ms + engaged_min * MIN,
        outcome=TripOutcome.COMPLETED,
        p3_distance_m=0.0,
        p3_duration_ms=0,
        engaged_distance_m=0.0,
        engaged_duration_ms=engaged_min * MIN,
        fare=fare,
        tips_minor=tips,
    )


# The NL shift of test_billing_policies: 09:00-17:00 on 2025-06-10, 30 min break, one trip.
SHIFT_START = at(2025, 6, 10, 9, CEST)
NL_SEGMENTS = segments(
    SHIFT_START,
    (K.IDLE, 60, 0),
    (K.OFFERED, 1, 0),
    (K.EN_ROUTE_PICKUP, 10, 3000),
    (K.AT_PICKUP_WITHIN_GRACE, 2, 0),
    (K.AT_PICKUP_BEYOND_GRACE, 3, 0),
    (K.ON_TRIP, 30, 12000),
    (K.AT_DROPOFF, 2, 0),
    (K.IDLE, 72, 5000),
    (K.BREAK, 30, 0),
    (K.IDLE, 270, 0),
)
NL_TRIP = ride("t1", SHIFT_START + 61 * MIN, 47, eur_fare(4000, booking=200, wait=285), tips=500)
JUNE_10, JUNE_11 = at(2025, 6, 10, 0, CEST), at(2025, 6, 11, 0, CEST)


def nl_statement(
    policy: str = "nl_hourly", trips: tuple[TripRecord, ...] = (NL_TRIP,)
) -> Statement:
    return build_statement(
        "d1", JUNE_10, JUNE_11, policy, NL_SEGMENTS, trips, BOOK, "EUR", jurisdiction="nl"
    )


# --- shape and arithmetic ------------------------------------------------------------------


def test_statement_has_exactly_the_shape_issue_4_specifies() -> None:
    body = nl_statement().to_dict()
    assert set(body) == {
        "driver_id",
        "from",
        "to",
        "policy",
        "time",
        "waiting",
        "engaged_km",
        "earnings",
        "effective_hourly_minor",
        "unpaid_share",
    }
    assert set(body["time"]) == {
        "online_s",
        "idle_s",
        "offered_s",
        "break_s",
        "en_route_pickup_s",
        "at_pickup_s",
        "on_trip_s",
        "at_dropoff_s",
    }
    assert set(body["waiting"]) == {"total_s", "paid_s", "unpaid_s"}
    assert set(body["earnings"]) == {"currency", "lines", "topup_minor", "total_minor"}
    assert set(body["effective_hourly_minor"]) == {"per_online_hour", "per_engaged_hour"}
    json.dumps(body)  # plain JSON types only


def test_nl_statement_seconds_and_money_add_up() -> None:
    body = nl_statement().to_dict()
    assert body["driver_id"] == "d1" and body["policy"] == "nl_hourly"
    # 2025-06-10 00:00 in Amsterdam is 2025-06-09 22:00 UTC.
    assert body["from"] == "2025-06-09T22:00:00.000Z"
    assert body["to"] == "2025-06-10T22:00:00.000Z"
    assert body["time"] == {
        "online_s": 27000.0,  # 7.5 h: the break is not online time
        "idle_s": (60 + 72 + 270) * 60.0,
        "offered_s": 60.0,
        "break_s": 1800.0,
        "en_route_pickup_s": 600.0,
        "at_pickup_s": 300.0,  # within grace 2 min + beyond 3 min
        "on_trip_s": 1800.0,
        "at_dropoff_s": 120.0,
    }
    time = body["time"]
    assert time["online_s"] == sum(v for k, v in time.items() if k not in ("online_s", "break_s"))
    # Waiting = idle + offered + at pickup + at drop-off; nl_hourly pays all of it.
    assert body["waiting"] == {"total_s": 24600.0, "paid_s": 24600.0, "unpaid_s": 0.0}
    assert body["engaged_km"] == 15.0  # 3 km to pickup + 12 km on trip; cruising excluded
    earnings = body["earnings"]
    assert earnings["currency"] == "EUR"
    # Floor 108.90 (7.5 h x 14.06 + 15 km x 0.23) - platform pay 32.85 = 76.05 top-up.
    assert earnings["topup_minor"] == 7605
    assert earnings["total_minor"] == 3285 + 7605 + 500
    lines = earnings["lines"]
    pay_lines = [line for line in lines if line["kind"] == "pay"]
    assert sum(line["amount_minor"] for line in pay_lines) == earnings["total_minor"]
    assert [line["code"] for line in lines] == [
        "fare_share",
        "wait_fee",
        "topup",
        "tips",
        "minimum_wage",
        "km_allowance",
    ]
    assert lines[0]["period_from"] == body["from"] and lines[0]["period_to"] == body["to"]
    # Pay excluding tips per hour: 108.90 / 7.5 online h; / 47 engaged min = 139.02 per h.
    assert body["effective_hourly_minor"] == {"per_online_hour": 1452, "per_engaged_hour": 13902}
    assert body["unpaid_share"] == 0.0


def test_the_same_record_under_platform_share_shows_the_unpaid_waiting() -> None:
    statement = nl_statement("platform_share")
    body = statement.to_dict()
    # Only the 3 min beyond the pickup grace are paid (by the wait fee); 407 min are not.
    assert body["waiting"] == {"total_s": 24600.0, "paid_s": 180.0, "unpaid_s": 24420.0}
    assert body["unpaid_share"] == round(24420 / 27000, 6) == 0.904444
    assert body["earnings"]["topup_minor"] == 0
    assert body["earnings"]["total_minor"] == 3285 + 500
    # 32.85 / 7.5 h = 4.38; 32.85 / (47/60) h = 41.936 -> 41.94.
    assert body["effective_hourly_minor"] == {"per_online_hour": 438, "per_engaged_hour": 4194}


def test_seconds_keep_millisecond_precision() -> None:
    start = SHIFT_START
    parts = [
        Segment("d1", K.IDLE, start, start + 1_001),
        Segment("d1", K.OFFERED, start + 1_001, start + 13_346),
    ]
    body = build_statement("d1", JUNE_10, JUNE_11, "nl_hourly", parts, (), BOOK, "EUR").to_dict()
    assert body["time"]["offered_s"] == 12.345
    assert body["time"]["online_s"] == 13.346


def test_a_statement_without_online_time_has_no_hourly_figures() -> None:
    body = build_statement("d1", JUNE_10, JUNE_11, "nl_hourly", [], [], BOOK, "EUR").to_dict()
    assert body["unpaid_share"] == 0.0
    assert body["effective_hourly_minor"] == {"per_online_hour": None, "per_engaged_hour": None}
    assert body["earnings"] == {"currency": "EUR", "lines": [], "topup_minor": 0, "total_minor": 0}


# --- periods -------------------------------------------------------------------------------


def two_day_record() -> tuple[list[Segment], list[TripRecord]]:
    """Day 1 (10 June): 4 h idle, no trip. Day 2: 1 h idle (after midnight), 1 h trip, fare 200."""
    parts = segments(
        at(2025, 6, 10, 20, CEST),
        (K.IDLE, 180, 0),
        (K.IDLE, 120, 0),  # 23:00-01:00: split at midnight
        (K.EN_ROUTE_PICKUP, 10, 0),
        (K.ON_TRIP, 50, 0),
    )
    return parts, [ride("t", at(2025, 6, 11, 1, CEST), 60, eur_fare(20000))]


def test_topups_are_checked_per_day_so_a_good_day_never_hides_a_bad_one() -> None:
    parts, trips = two_day_record()
    end = JUNE_11 + DAY
    statement = build_statement(
        "d1", JUNE_10, end, "nl_hourly", parts, trips, BOOK, "EUR", jurisdiction="nl"
    )
    day1, day2 = statement.periods
    assert (day1.from_ms, day1.to_ms, day2.to_ms) == (JUNE_10, JUNE_11, end)
    # Day 1: 4 h x 14.06 = 56.24 floor, nothing earned: 56.24 top-up.
    assert day1.result.online_ms == 4 * HOUR
    assert (day1.result.floor_minor, day1.result.base_minor, day1.result.topup_minor) == (
        5624,
        0,
        5624,
    )
    # Day 2: 2 h x 14.06 = 28.12 floor; 75 % of 200.00 = 150.00 earned: no top-up.
    assert day2.result.online_ms == 2 * HOUR
    assert (day2.result.floor_minor, day2.result.base_minor, day2.result.topup_minor) == (
        2812,
        15000,
        0,
    )
    assert statement.topup_minor == 5624
    assert statement.total_minor == 15000 + 5624
    topups = [line for line in statement.lines if line.line.code is PayCode.TOPUP]
    assert [(t.period_from_ms, t.line.amount_minor) for t in topups] == [(JUNE_10, 5624)]
    # Checked over the week instead, 150.00 covers the 6 h x 14.06 = 84.36 floor.
    weekly = build_statement(
        "d1",
        JUNE_10,
        end,
        "nl_hourly",
        parts,
        trips,
        BOOK,
        "EUR",
        jurisdiction="nl",
        period=PayPeriod.WEEK,
    )
    assert len(weekly.periods) == 1
    assert weekly.topup_minor == 0 and weekly.floor_minor == 8436


def test_statement_days_before_and_after_1_july_2025_use_their_own_minimum_wage() -> None:
    parts = segments(at(2025, 6, 30, 22, CEST), (K.IDLE, 240, 0))  # 22:00-02:00
    start, end = at(2025, 6, 30, 0, CEST), at(2025, 7, 2, 0, CEST)
    statement = build_statement(
        "d1", start, end, "nl_hourly", parts, [], BOOK, "EUR", jurisdiction="nl"
    )
    # 2 h x 14.06 on 30 June, 2 h x 14.40 on 1 July.
    assert [p.result.topup_minor for p in statement.periods] == [2812, 2880]
    floors = [line for line in statement.lines if line.kind is LineKind.FLOOR]
    assert ["14.06 EUR/h" in f.line.description for f in floors] == [True, False]
    assert ["14.40 EUR/h" in f.line.description for f in floors] == [False, True]


def test_a_trip_counts_in_the_period_it_ended_and_only_inside_the_range() -> None:
    parts = segments(at(2025, 6, 10, 23, CEST), (K.ON_TRIP, 120, 0))
    across = ride("across", at(2025, 6, 10, 23, CEST), 120, eur_fare(1000))  # ends 11 June 01:00
    later = ride("later", at(2025, 6, 12, 9, CEST), 10, eur_fare(1000))  # after the range
    statement = build_statement(
        "d1",
        JUNE_10,
        JUNE_11 + DAY,
        "nl_hourly",
        parts,
        [across, later],
        BOOK,
        "EUR",
        jurisdiction="nl",
    )
    assert [p.result.base_minor for p in statement.periods] == [0, 750]


def test_segments_are_clipped_to_the_range() -> None:
    parts = segments(at(2025, 6, 9, 23, CEST), (K.IDLE, 120, 0))  # 23:00 on the 9th to 01:00
    statement = build_statement("d1", JUNE_10, JUNE_11, "nl_hourly", parts, [], BOOK, "EUR")
    assert statement.time.online_ms == HOUR
    assert statement.topup_minor == 1406


def test_a_record_mixing_workers_or_overlapping_is_refused() -> None:
    theirs = segments(SHIFT_START, (K.IDLE, 10, 0), driver="d2")
    with pytest.raises(ValueError, match="'d2'"):
        build_statement("d1", JUNE_10, JUNE_11, "nl_hourly", theirs, [], BOOK, "EUR")
    overlapping = [*segments(SHIFT_START, (K.IDLE, 10, 0)), *segments(SHIFT_START, (K.BREAK, 5, 0))]
    with pytest.raises(ValueError, match="overlapping"):
        build_statement("d1", JUNE_10, JUNE_11, "nl_hourly", overlapping, [], BOOK, "EUR")
    with pytest.raises(ValueError, match="end after"):
        build_statement("d1", JUNE_11, JUNE_10, "nl_hourly", [], [], BOOK, "EUR")


def test_any_policy_in_the_workers_currency_can_be_compared_on_the_same_record() -> None:
    # A Seattle worker's day, read under Prop 22: California's rates, Seattle's midnights.
    start = at(2025, 3, 4, 0, PST)
    parts = segments(
        start + 8 * HOUR,
        (K.IDLE, 240, 0),
        (K.EN_ROUTE_PICKUP, 15, 0),
        (K.ON_TRIP, 45, 0),
    )
    statement = build_statement(
        "d1", start, start + DAY, "prop22", parts, [], BOOK, "USD", jurisdiction="us-wa-seattle"
    )
    assert len(statement.periods) == 1
    # 120 % x $16.50 x 1 engaged h; the 4 idle hours are unpaid waiting.
    assert statement.floor_minor == statement.topup_minor == 1980
    assert statement.unpaid_waiting_ms == 4 * HOUR
    assert statement.unpaid_share == 0.8
    assert "prop22-us-ca-2025" in statement.lines[-1].line.description


# --- CSV -----------------------------------------------------------------------------------


def test_csv_has_a_row_per_line_then_summary_rows() -> None:
    statement = nl_statement()
    text = statement.to_csv()
    assert text.startswith(",".join(CSV_COLUMNS) + "\r\n")
    rows = [
        dict(zip(CSV_COLUMNS, row, strict=True)) for row in list(csv.reader(io.StringIO(text)))[1:]
    ]
    pay_rows = [r for r in rows if r["section"] == "pay"]
    floor_rows = [r for r in rows if r["section"] == "floor"]
    summary = {r["code"]: r for r in rows if r["section"] == "summary"}
    assert [r["code"] for r in pay_rows] == ["fare_share", "wait_fee", "topup", "tips"]
    assert sum(int(r["amount_minor"]) for r in pay_rows) == statement.total_minor == 11390
    assert sum(int(r["amount_minor"]) for r in floor_rows) == statement.floor_minor == 10890
    assert all(r["currency"] == "EUR" for r in pay_rows + floor_rows)
    assert floor_rows[0]["quantity"] == "7.5000" and floor_rows[0]["unit"] == "h"
    assert summary["online_s"]["quantity"] == "27000.0"
    assert summary["waiting_unpaid_s"]["quantity"] == "0.0"
    assert summary["engaged_km"]["quantity"] == "15.0"
    assert summary["unpaid_share"]["quantity"] == "0.0"
    assert summary["topup_minor"]["amount_minor"] == "7605"
    assert summary["total_minor"]["amount_minor"] == "11390"
    assert summary["per_online_hour_minor"]["amount_minor"] == "1452"
    assert summary["total_minor"]["period_from"] == "2025-06-09T22:00:00.000Z"
    assert len(summary) == 8 + 3 + 2 + 7


# --- operator report -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], 0.0),
        ([0, 0, 0], 0.0),
        ([5, 5, 5, 5], 0.0),  # perfect equality
        ([0, 0, 0, 1], 0.75),  # one worker carries it all: (n - 1) / n
        ([1, 2, 3, 4], 0.25),  # sum |xi - xj| = 20 over 2 n^2 mean = 80
        ([4, 1, 3, 2], 0.25),  # order does not matter
        ([10, 20, 30, 40], 0.25),  # nor does scale
        ([1, 3], 0.25),  # |1 - 3| x 2 / (2 x 4 x 2)
    ],
)
def test_gini_on_known_vectors(values: list[float], expected: float) -> None:
    assert gini(values) == pytest.approx(expected)


def test_gini_refuses_negative_values() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        gini([1.0, -1.0])


def test_floor_gap_and_share_below_floor() -> None:
    low = nl_statement()
    rich_trip = ride("t1", SHIFT_START + 61 * MIN, 47, eur_fare(20000))
    high = nl_statement(trips=(rich_trip,))
    gap = floor_gap(low)
    # Platform pay 32.85 over 7.5 h = 4.38/h against a floor of 108.90 / 7.5 = 14.52/h.
    assert (gap.pay_per_online_hour_minor, gap.floor_per_online_hour_minor) == (438, 1452)
    assert gap.below and gap.policy is PolicyName.NL_HOURLY
    assert not floor_gap(high).below
    baseline = nl_statement("platform_share")
    idle = build_statement("d9", JUNE_10, JUNE_11, "nl_hourly", [], [], BOOK, "EUR")
    # Workers without online time do not count; platform_share has no floor to fall below.
    assert share_below_floor([low, high, baseline, idle]) == {
        PolicyName.NL_HOURLY: 0.5,
        PolicyName.PLATFORM_SHARE: 0.0,
    }


def test_gini_of_unpaid_waiting_across_workers() -> None:
    a = nl_statement("platform_share")  # 24420 s unpaid waiting
    b = build_statement("d1", JUNE_10, JUNE_11, "platform_share", [], [], BOOK, "EUR")  # none
    assert unpaid_waiting_gini([a, b]) == pytest.approx(0.5)
    assert unpaid_waiting_gini([a, a]) == 0.0


# --- another currency: a comparison at a reference rate --------------------------------------


def test_a_policy_in_another_currency_is_applied_at_the_reference_rate_and_says_so() -> None:
    # Issue 4: any policy can be asked for, to compare rules on the same record. prop22's rates
    # are in USD (California); on this EUR record its money rates are converted at the ECB
    # reference rate of fx_rates.json (2025-02-21: 1 EUR = 1.0465 USD); the same record kept
    # in USD shows the floor in USD. Each floor line is rounded on its own, hence +-1 per line.
    zone = CEST
    eur = build_statement(
        "d1",
        JUNE_10,
        JUNE_11,
        "prop22",
        NL_SEGMENTS,
        (),
        BOOK,
        "EUR",
        jurisdiction="nl",
        tz=zone,
    )
    usd = build_statement(
        "d1",
        JUNE_10,
        JUNE_11,
        "prop22",
        NL_SEGMENTS,
        (),
        BOOK,
        "USD",
        jurisdiction="us-ca",
        tz=zone,
    )
    body = eur.to_dict()
    assert body["earnings"]["currency"] == "EUR" and body["time"] == usd.to_dict()["time"]
    conversion = body["rates_conversion"]
    assert conversion["reference_rate"] == "1 EUR = 1.0465 USD"
    assert conversion["date"] == "2025-02-21" and "ecb.europa.eu" in conversion["source"]
    assert "rates_conversion" not in usd.to_dict()
    assert usd.floor_minor > 0
    lines = len(usd.periods[0].result.floor_lines)
    assert abs(eur.floor_minor - usd.floor_minor / 1.0465) <= lines
    # with no trips there is no platform pay: the whole floor is the top-up, in each currency
    assert (eur.topup_minor, usd.topup_minor) == (eur.floor_minor, usd.floor_minor)
