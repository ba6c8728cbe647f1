"""Tariffs: the fare rates of one city and product, versioned and effective-dated.

The rates live in ``tariffs.json`` next to this module, each with the source of its figures.
``load_tariffs`` is the only function here that reads a file; everything else takes a parsed
``Tariff`` or ``TariffBook`` so fare calculations stay pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Any

from polder.fares.money import Money, check_currency

# An editable install maps polder.fares onto this folder, so the file is always beside us.
TARIFFS_FILE = Path(__file__).parent / "tariffs.json"
SUPPORTED_FORMAT = 1


class Product(StrEnum):
    RIDE = "ride"
    DELIVERY = "delivery"


class UnknownTariff(KeyError):
    """No tariff is in force for this city and product at that time."""

    def __str__(self) -> str:
        # KeyError would print the repr of its argument; a message reads better.
        return str(self.args[0]) if self.args else "unknown tariff"


@dataclass(frozen=True, slots=True)
class Tariff:
    """One version of the fare rules of a city and product. Amounts are minor units."""

    city: str
    product: Product
    version: str
    effective_from: datetime
    currency: str
    base_minor: int
    per_km_minor: int
    per_minute_minor: int
    booking_fee_minor: int
    minimum_fare_minor: int
    wait_grace_s: int
    wait_per_minute_minor: int
    cancellation_fee_minor: int
    cancellation_free_s: int
    driver_late_after_s: int
    no_show_fee_minor: int
    no_show_wait_s: int
    surge_cap: Decimal
    source: str

    def __post_init__(self) -> None:
        check_currency(self.currency)
        if self.effective_from.tzinfo is None:
            raise ValueError(f"{self.version}: effective_from needs a UTC offset")
        if not (self.surge_cap.is_finite() and self.surge_cap >= 1):
            raise ValueError(f"{self.version}: surge_cap must be at least 1")
        for name in _NON_NEGATIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{self.version}: {name} must be a non-negative int")

    def money(self, amount_minor: int) -> Money:
        return Money(amount_minor, self.currency)


_NON_NEGATIVE_INTS = tuple(
    f.name for f in fields(Tariff) if f.name.endswith("_minor") or f.name.endswith("_s")
)


@dataclass(frozen=True, slots=True)
class TariffBook:
    """Every version of every tariff; ``get`` picks the one in force."""

    tariffs: tuple[Tariff, ...]

    def __post_init__(self) -> None:
        keys = [(t.city, t.product, t.effective_from) for t in self.tariffs]
        if len(set(keys)) != len(keys):
            raise ValueError("two tariff versions share a city, product and effective_from")

    def get(self, city: str, product: str, at: datetime) -> Tariff:
        """The tariff of ``city`` and ``product`` in force at ``at`` (timezone-aware)."""
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        in_force = [
            t
            for t in self.tariffs
            if t.city == city and t.product == product and t.effective_from <= at
        ]
        if not in_force:
            raise UnknownTariff(f"no {product!r} tariff for {city!r} in force at {at.isoformat()}")
        return max(in_force, key=lambda t: t.effective_from)

    def cities(self) -> frozenset[str]:
        return frozenset(t.city for t in self.tariffs)


def load_tariffs(path: Path = TARIFFS_FILE) -> TariffBook:
    """Read and parse the tariff file (the packaged one unless told otherwise)."""
    return parse_tariffs(json.loads(path.read_text(encoding="utf-8")))


def parse_tariffs(document: Mapping[str, Any]) -> TariffBook:
    if document.get("format") != SUPPORTED_FORMAT:
        raise ValueError(f"tariff file format must be {SUPPORTED_FORMAT}")
    return TariffBook(tuple(parse_tariff(raw) for raw in document["tariffs"]))


def parse_tariff(raw: Mapping[str, Any]) -> Tariff:
    """One tariff entry; unknown or missing keys are errors, so a typo cannot go unnoticed."""
    expected = {f.name for f in fields(Tariff)}
    if unknown := raw.keys() - expected:
        raise ValueError(f"unknown tariff keys: {sorted(unknown)}")
    if missing := expected - raw.keys():
        raise ValueError(f"missing tariff keys: {sorted(missing)}")
    return Tariff(
        city=_text(raw, "city"),
        product=Product(_text(raw, "product")),
        version=_text(raw, "version"),
        effective_from=datetime.fromisoformat(_text(raw, "effective_from")),
        currency=_text(raw, "currency"),
        base_minor=_whole(raw, "base_minor"),
        per_km_minor=_whole(raw, "per_km_minor"),
        per_minute_minor=_whole(raw, "per_minute_minor"),
        booking_fee_minor=_whole(raw, "booking_fee_minor"),
        minimum_fare_minor=_whole(raw, "minimum_fare_minor"),
        wait_grace_s=_whole(raw, "wait_grace_s"),
        wait_per_minute_minor=_whole(raw, "wait_per_minute_minor"),
        cancellation_fee_minor=_whole(raw, "cancellation_fee_minor"),
        cancellation_free_s=_whole(raw, "cancellation_free_s"),
        driver_late_after_s=_whole(raw, "driver_late_after_s"),
        no_show_fee_minor=_whole(raw, "no_show_fee_minor"),
        no_show_wait_s=_whole(raw, "no_show_wait_s"),
        surge_cap=_decimal(raw, "surge_cap"),
        source=_text(raw, "source"),
    )


def _text(raw: Mapping[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _whole(raw: Mapping[str, Any], key: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


def _decimal(raw: Mapping[str, Any], key: str) -> Decimal:
    # A string, not a JSON number: a float would already have lost the exact value.
    try:
        return Decimal(_text(raw, key))
    except InvalidOperation as exc:
        raise ValueError(f"{key} must be a decimal string") from exc
