"""Fares: one implementation of tariffs and fare lines, used by dispatch quotes and billing."""

from polder.fares.fare import (
    CancelledByCustomer,
    Completed,
    Fare,
    FareLine,
    LineCode,
    NoShow,
    Outcome,
    TripFacts,
    applied_surge,
    billable_wait_minutes,
    cancellation_fee_due,
    driver_was_late,
    final_fare,
    no_show_fee_due,
    quote,
)
from polder.fares.money import CurrencyMismatch, Money, round_minor, sum_money
from polder.fares.tariff import Product, Tariff, TariffBook, UnknownTariff, load_tariffs

__all__ = [
    "CancelledByCustomer",
    "Completed",
    "CurrencyMismatch",
    "Fare",
    "FareLine",
    "LineCode",
    "Money",
    "NoShow",
    "Outcome",
    "Product",
    "Tariff",
    "TariffBook",
    "TripFacts",
    "UnknownTariff",
    "applied_surge",
    "billable_wait_minutes",
    "cancellation_fee_due",
    "driver_was_late",
    "final_fare",
    "load_tariffs",
    "no_show_fee_due",
    "quote",
    "round_minor",
    "sum_money",
]
