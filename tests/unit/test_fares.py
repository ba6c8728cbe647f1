"""Fares: money, tariffs and fare lines, with hand-computed cases.

The rules checked are those of DESIGN.md s4 and issue 4 ("Money"): base + per km + per minute +
booking fee, minimum fare, surge locked at quote time and never on fees, wait fee per minute
beyond a 2 min grace, cancellation fee after 2 min unless the driver is 5 min late, no-show fee
after 5 min of waiting; integer minor units, explicit rounding; quote and fare from one code.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest

from polder.fares import (
    CancelledByCustomer,
    CurrencyMismatch,
    Fare,
    FareLine,
    LineCode,
    Money,
    NoShow,
    Product,
    Tariff,
    TariffBook,
    TripFacts,
    UnknownTariff,
    billable_wait_minutes,
    driver_was_late,
    final_fare,
    load_tariffs,
    quote,
    round_minor,
    sum_money,
)
from polder.fares.tariff import TARIFFS_FILE, parse_tariff, parse_tariffs

CET = timezone(timedelta(hours=1))
SUMMER_2025 = datetime(2025, 7, 1, 12, tzinfo=UTC)
ONE = Decimal(1)

# Round numbers so every expected amount below can be checked by hand.
TARIFF = Tariff(
    city="testville",
    product=Product.RIDE,
    version="testville-ride-1",
    effective_from=datetime(2025, 1, 1, tzinfo=UTC),
    currency="EUR",
    base_minor=300,
    per_km_minor=150,
    per_minute_minor=30,
    booking_fee_minor=200,
    minimum_fare_minor=800,
    wait_grace_s=120,
    wait_per_minute_minor=50,
    cancellation_fee_minor=500,
    cancellation_free_s=120,
    driver_late_after_s=300,
    no_show_fee_minor=700,
    no_show_wait_s=300,
    surge_cap=Decimal("2.0"),
    source="test figures",
)


def codes(fare: Fare) -> list[str]:
    return [line.code.value for line in fare.lines]


# --- money -------------------------------------------------------------------------------


def test_money_adds_and_subtracts_in_one_currency() -> None:
    assert Money(250, "EUR") + Money(125, "EUR") == Money(375, "EUR")
    assert Money(250, "EUR") - Money(300, "EUR") == Money(-50, "EUR")
    assert -Money(5, "USD") == Money(-5, "USD")
    assert sum_money([Money(1, "USD"), Money(2, "USD")], "USD") == Money(3, "USD")
    assert sum_money([], "USD") == Money.zero("USD")


def test_money_refuses_to_mix_currencies() -> None:
    with pytest.raises(CurrencyMismatch):
        Money(1, "EUR") + Money(1, "USD")
    with pytest.raises(ValueError, match="EUR and USD"):
        Money(1, "EUR") - Money(1, "USD")
    with pytest.raises(ValueError):
        sum_money([Money(1, "EUR")], "USD")


def test_money_is_whole_minor_units_of_an_iso_currency() -> None:
    with pytest.raises(TypeError):
        Money(1.5, "EUR")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(True, "EUR")
    with pytest.raises(ValueError):
        Money(1, "eur")
    assert Money(415, "EUR").to_dict() == {"currency": "EUR", "amount_minor": 415}


def test_rounding_is_half_up_unless_told_otherwise() -> None:
    assert round_minor(Decimal("2.5")) == 3
    assert round_minor(Decimal("2.4999")) == 2
    assert round_minor(Decimal("-2.5")) == -3  # half away from zero, symmetric for refunds
    assert Money(5, "EUR").scale(Decimal("0.5")) == Money(3, "EUR")
    assert Money(5, "EUR").scale(Decimal("0.5"), ROUND_HALF_EVEN) == Money(2, "EUR")
    with pytest.raises(ValueError):
        round_minor(Decimal("NaN"))


# --- tariffs -----------------------------------------------------------------------------


def test_the_packaged_tariffs_cover_three_cities_and_both_products() -> None:
    book = load_tariffs()
    assert TARIFFS_FILE.name == "tariffs.json"
    assert {"amsterdam", "new_york", "seattle"} <= book.cities()
    for city, currency in (("amsterdam", "EUR"), ("new_york", "USD"), ("seattle", "USD")):
        ride = book.get(city, "ride", SUMMER_2025)
        delivery = book.get(city, "delivery", SUMMER_2025)
        assert ride.currency == delivery.currency == currency
        assert ride.wait_grace_s == 120 and delivery.wait_grace_s == 300
        assert (ride.cancellation_free_s, ride.driver_late_after_s, ride.no_show_wait_s) == (
            120,
            300,
            300,
        )
        assert ride.source and delivery.source


def test_amsterdam_rides_use_the_dutch_maximum_taxi_tariff() -> None:
    # Regeling maximumtarief taxivervoer: 2025 EUR 4.15 + 3.05/km + 0.50/min, waiting at most
    # EUR 57.20/h; 2026 EUR 4.31 + 3.17/km + 0.52/min, waiting EUR 59.41/h.
    book = load_tariffs()
    for year, rates, hourly_wait_max in (
        (2025, (415, 305, 50), 5720),
        (2026, (431, 317, 52), 5941),
    ):
        ride = book.get("amsterdam", "ride", datetime(year, 6, 1, tzinfo=UTC))
        assert (ride.base_minor, ride.per_km_minor, ride.per_minute_minor) == rates
        assert ride.wait_per_minute_minor * 60 <= hourly_wait_max
        # At the legal maximum nothing may be added on top of the metered price.
        assert ride.surge_cap == 1 and ride.booking_fee_minor == 0


def test_the_version_in_force_at_the_time_is_chosen() -> None:
    book = load_tariffs()
    new_year = datetime(2026, 1, 1, tzinfo=CET)
    assert book.get("amsterdam", "ride", new_year - timedelta(seconds=1)).version.endswith("2025")
    assert book.get("amsterdam", "ride", new_year).version.endswith("2026")
    # 23:30 UTC on New Year's Eve is already 2026 in Amsterdam.
    late_utc = datetime(2025, 12, 31, 23, 30, tzinfo=UTC)
    assert book.get("amsterdam", "ride", late_utc).version.endswith("2026")


def test_no_tariff_in_force_is_an_unknown_tariff_key_error() -> None:
    book = load_tariffs()
    with pytest.raises(UnknownTariff, match="'gotham'") as caught:
        book.get("gotham", "ride", SUMMER_2025)
    assert isinstance(caught.value, KeyError)
    assert str(caught.value).startswith("no 'ride' tariff for 'gotham'")
    with pytest.raises(UnknownTariff):
        book.get("amsterdam", "scooter", SUMMER_2025)
    with pytest.raises(UnknownTariff):
        book.get("amsterdam", "ride", datetime(2024, 12, 31, tzinfo=UTC))
    with pytest.raises(ValueError):
        book.get("amsterdam", "ride", datetime(2025, 7, 1))  # noqa: DTZ001 - naive on purpose


def raw_tariff() -> dict[str, Any]:
    document = json.loads(TARIFFS_FILE.read_text(encoding="utf-8"))
    return dict(document["tariffs"][0])


def test_a_tariff_entry_with_a_typo_or_a_float_is_rejected() -> None:
    assert parse_tariff(raw_tariff()).city == "amsterdam"
    with pytest.raises(ValueError, match="unknown tariff keys"):
        parse_tariff({**raw_tariff(), "per_kilometre_minor": 300})
    without_base = {k: v for k, v in raw_tariff().items() if k != "base_minor"}
    with pytest.raises(ValueError, match="missing tariff keys"):
        parse_tariff(without_base)
    with pytest.raises(ValueError):
        parse_tariff({**raw_tariff(), "per_km_minor": 3.05})
    with pytest.raises(ValueError):
        parse_tariff({**raw_tariff(), "surge_cap": 1.5})
    with pytest.raises(ValueError):
        parse_tariff({**raw_tariff(), "effective_from": "2025-01-01T00:00:00"})
    with pytest.raises(ValueError):
        parse_tariff({**raw_tariff(), "base_minor": -1})


def test_a_tariff_file_must_be_consistent(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="share"):
        parse_tariffs({"format": 1, "tariffs": [raw_tariff(), raw_tariff()]})
    with pytest.raises(ValueError, match="format"):
        parse_tariffs({"format": 2, "tariffs": []})
    path = tmp_path / "tariffs.json"
    path.write_text(json.dumps({"format": 1, "tariffs": [raw_tariff()]}), encoding="utf-8")
    assert len(load_tariffs(path).tariffs) == 1


# --- a completed trip --------------------------------------------------------------------


def test_quote_lines_add_up_to_the_total() -> None:
    fare = quote(TARIFF, distance_m=5234, duration_s=754, surge=ONE)
    # base 300; 5.234 km x 150 = 785.1 -> 785; 754 s = 12.5667 min x 30 = 377.0 -> 377; fee 200
    assert [(line.code, line.amount_minor) for line in fare.lines] == [
        (LineCode.BASE, 300),
        (LineCode.DISTANCE, 785),
        (LineCode.TIME, 377),
        (LineCode.BOOKING_FEE, 200),
    ]
    assert fare.total_minor == 1662 == sum(line.amount_minor for line in fare.lines)
    assert fare.total == Money(1662, "EUR")
    distance = fare.lines[1]
    assert (distance.quantity, distance.unit) == (Decimal("5.234"), "km")


def test_each_line_is_rounded_half_up_on_its_own() -> None:
    # 30 m x 150/km = 4.5 -> 5 (half-even would give 4); 1 s x 30/min = 0.5 -> 1.
    fare = quote(replace(TARIFF, minimum_fare_minor=0), distance_m=30, duration_s=1, surge=ONE)
    assert fare.amount(LineCode.DISTANCE) == 5
    assert fare.amount(LineCode.TIME) == 1
    assert fare.total_minor == 300 + 5 + 1 + 200
    # Measures are taken to the metre and second first: 29.6 m is 30 m.
    again = quote(replace(TARIFF, minimum_fare_minor=0), distance_m=29.6, duration_s=0.6, surge=ONE)
    assert again == fare


def test_a_short_trip_pays_the_minimum_fare_plus_fees() -> None:
    fare = quote(TARIFF, distance_m=500, duration_s=60, surge=ONE)
    # base 300 + 75 + 30 = 405 is below 800: lifted by 395, then the booking fee on top.
    assert fare.amount(LineCode.MINIMUM_FARE_ADJUSTMENT) == 395
    assert fare.total_minor == 800 + 200
    surged = quote(TARIFF, distance_m=500, duration_s=60, surge=Decimal("1.5"))
    # Surge 0.5 x 405 = 202.5 -> 203 counts towards the minimum: 405 + 203 + 192 = 800.
    assert surged.amount(LineCode.SURGE) == 203
    assert surged.amount(LineCode.MINIMUM_FARE_ADJUSTMENT) == 192
    assert surged.total_minor == 1000


def test_surge_is_its_own_line_on_base_distance_and_time() -> None:
    fare = quote(TARIFF, distance_m=10_000, duration_s=1200, surge=Decimal("1.5"))
    # metered = 300 + 1500 + 600 = 2400; surge = 0.5 x 2400 = 1200
    assert fare.amount(LineCode.SURGE) == 1200
    assert fare.total_minor == 2400 + 1200 + 200
    surge_line = next(line for line in fare.lines if line.code is LineCode.SURGE)
    assert (surge_line.quantity, surge_line.unit) == (Decimal("1.5"), "x")
    assert fare.surge == Decimal("1.5")
    assert "surge" not in codes(quote(TARIFF, 10_000, 1200, ONE))


def test_surge_never_touches_fees() -> None:
    facts = TripFacts(distance_m=10_000, duration_s=1200, surge=ONE, pickup_wait_s=300)
    plain = final_fare(TARIFF, facts)
    surged = final_fare(TARIFF, replace(facts, surge=Decimal("2.0")))
    for code in (LineCode.BOOKING_FEE, LineCode.WAIT_FEE):
        assert surged.amount(code) == plain.amount(code) > 0
    assert surged.total_minor - plain.total_minor == surged.amount(LineCode.SURGE) == 2400


def test_surge_is_capped_by_the_tariff_and_never_a_discount() -> None:
    capped = quote(TARIFF, 10_000, 1200, Decimal("3.5"))
    assert capped.surge == Decimal("2.0")
    assert capped.amount(LineCode.SURGE) == 2400
    amsterdam = load_tariffs().get("amsterdam", "ride", SUMMER_2025)
    at_the_maximum = quote(amsterdam, 10_000, 1200, Decimal("1.8"))
    assert at_the_maximum.surge == 1 and "surge" not in codes(at_the_maximum)
    with pytest.raises(ValueError):
        quote(TARIFF, 10_000, 1200, Decimal("0.9"))
    with pytest.raises(ValueError):
        quote(TARIFF, -1, 1200, ONE)
    with pytest.raises(ValueError):
        quote(TARIFF, float("nan"), 1200, ONE)


def test_quote_and_final_fare_agree_on_the_same_facts() -> None:
    for distance_m, duration_s, surge in (
        (5234.4, 754.2, ONE),
        (0, 0, ONE),
        (31_337, 2999.5, Decimal("1.7")),
        (800, 95, Decimal("3")),
    ):
        quoted = quote(TARIFF, distance_m, duration_s, surge)
        billed = final_fare(TARIFF, TripFacts(distance_m, duration_s, surge))
        assert billed == quoted
        # Waiting within the grace, or less than a whole minute beyond it, costs nothing.
        waited = final_fare(TARIFF, TripFacts(distance_m, duration_s, surge, pickup_wait_s=179))
        assert waited.total_minor == quoted.total_minor


# --- waiting -----------------------------------------------------------------------------


def test_wait_minutes_count_whole_minutes_beyond_the_grace() -> None:
    assert billable_wait_minutes(0, 120) == 0
    assert billable_wait_minutes(120, 120) == 0
    assert billable_wait_minutes(179.999, 120) == 0
    assert billable_wait_minutes(180, 120) == 1
    assert billable_wait_minutes(239.9, 120) == 1
    assert billable_wait_minutes(240, 120) == 2
    # Timestamps differ by 180 s, but float subtraction says 179.9999999999999: still 1 minute.
    assert billable_wait_minutes(1180.1 - 1000.1, 120) == 1
    with pytest.raises(ValueError):
        billable_wait_minutes(-1, 120)


def test_the_wait_fee_is_charged_per_billable_minute() -> None:
    facts = TripFacts(distance_m=10_000, duration_s=1200, surge=ONE, pickup_wait_s=250)
    fare = final_fare(TARIFF, facts)
    wait = next(line for line in fare.lines if line.code is LineCode.WAIT_FEE)
    # 250 - 120 = 130 s beyond the grace: 2 whole minutes x 50
    assert (wait.amount_minor, wait.quantity, wait.unit) == (100, Decimal(2), "min")
    assert wait.quantity == billable_wait_minutes(facts.pickup_wait_s, TARIFF.wait_grace_s)
    assert fare.total_minor == quote(TARIFF, 10_000, 1200, ONE).total_minor + 100


# --- cancellation and no-show ------------------------------------------------------------


def cancelled(since_assignment_s: float | None, driver_late: bool = False) -> TripFacts:
    outcome = CancelledByCustomer(since_assignment_s, driver_late)
    return TripFacts(distance_m=0, duration_s=0, surge=Decimal("1.5"), outcome=outcome)


def test_a_customer_cancelling_after_two_minutes_pays_the_cancellation_fee() -> None:
    fare = final_fare(TARIFF, cancelled(121))
    assert codes(fare) == ["cancellation_fee"]  # no base, no booking fee, no surge
    assert fare.total_minor == 500


def test_cancelling_within_two_minutes_or_before_assignment_is_free() -> None:
    for since in (None, 0, 60, 120, 120.0004):
        fare = final_fare(TARIFF, cancelled(since))
        assert fare.total_minor == 0 and fare.lines == ()


def test_cancelling_a_late_driver_is_free() -> None:
    assert final_fare(TARIFF, cancelled(900, driver_late=True)).total_minor == 0


def test_a_driver_is_late_past_the_promised_eta_plus_five_minutes() -> None:
    # Promised 4 min at assignment, so late means later than 240 + 300 = 540 s.
    assert not driver_was_late(TARIFF, 240, since_assignment_s=600, arrived_after_s=540)
    assert driver_was_late(TARIFF, 240, since_assignment_s=600, arrived_after_s=541)
    # Not there yet when the customer cancels: judged at the cancellation.
    assert not driver_was_late(TARIFF, 240, since_assignment_s=400)
    assert driver_was_late(TARIFF, 240, since_assignment_s=541)


def test_a_no_show_fee_only_after_five_minutes_of_waiting() -> None:
    def no_show(wait_s: float) -> Fare:
        facts = TripFacts(0, 0, ONE, pickup_wait_s=wait_s, outcome=NoShow())
        return final_fare(TARIFF, facts)

    assert no_show(299.999).total_minor == 0
    fare = no_show(300)
    # The fee replaces the wait fee: the customer pays one or the other, not both.
    assert codes(fare) == ["no_show_fee"] and fare.total_minor == 700
    assert no_show(1200).total_minor == 700


# --- delivery and the shape of a fare ----------------------------------------------------


def test_a_delivery_is_base_plus_distance_plus_service_fee() -> None:
    delivery = load_tariffs().get("amsterdam", "delivery", SUMMER_2025)
    fare = quote(delivery, distance_m=3200, duration_s=900, surge=ONE)
    # 199 + 3.2 km x 50 = 160, no time charge, service fee 99
    assert codes(fare) == ["base", "distance", "booking_fee"]
    assert fare.total_minor == 199 + 160 + 99
    short = quote(delivery, distance_m=200, duration_s=60, surge=ONE)
    assert short.amount(LineCode.MINIMUM_FARE_ADJUSTMENT) == 299 - 209
    # A courier's wait at the merchant is not the customer's doing: no wait fee for them.
    waited = final_fare(delivery, TripFacts(3200, 900, ONE, pickup_wait_s=900))
    assert waited == fare
    assert billable_wait_minutes(900, delivery.wait_grace_s) == 10


def test_a_fare_is_json_friendly_and_its_lines_must_add_up() -> None:
    fare = final_fare(TARIFF, TripFacts(10_000, 1200, Decimal("1.5"), pickup_wait_s=250))
    document = json.loads(json.dumps(fare.to_dict()))
    assert document["currency"] == "EUR" and document["surge"] == "1.5"
    assert document["total_minor"] == sum(line["amount_minor"] for line in document["lines"])
    assert document["lines"][0] == {
        "code": "base",
        "description": "Base fare",
        "amount_minor": 300,
        "quantity": None,
        "unit": None,
    }
    with pytest.raises(ValueError, match="add up"):
        Fare("EUR", (FareLine(LineCode.BASE, "Base fare", 300),), 301, ONE)


def test_fares_come_in_the_tariffs_currency() -> None:
    new_york = load_tariffs().get("new_york", "ride", SUMMER_2025)
    fare = quote(new_york, distance_m=8000, duration_s=1080, surge=ONE)
    # 300 + 8 km x 155 = 1240 + 18 min x 65 = 1170 + booking 250
    assert fare.total == Money(300 + 1240 + 1170 + 250, "USD")
    assert isinstance(TariffBook(()).cities(), frozenset)
