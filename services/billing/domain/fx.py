"""Reference exchange rates, to compare a pay policy's rules on a record in another currency.

A statement under a policy whose rates are in another currency (``prop22`` on an Amsterdam
record in EUR) applies the policy's rules with its money rates converted at a reference rate
from ``services/billing/fx_rates.json`` (each with its date and source; shown in the answer).
Only rates are converted (per hour, per mile, per offer); ratios (a wage multiplier, a share of
the fare) are not, and the result is in the record's currency. Nothing converted is ever
posted: it is a comparison, and it says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from polder.fares.money import check_currency

FX_FILE = Path(__file__).parent.parent / "fx_rates.json"


@dataclass(frozen=True, slots=True)
class Conversion:
    """``amount in to_currency = amount in from_currency × factor`` (minor units to minor
    units), from the reference rate ``base``/``quote`` = ``rate`` of ``date``."""

    from_currency: str
    to_currency: str
    factor: Decimal
    base: str
    quote: str
    rate: Decimal
    date: str
    source: str

    def convert(self, minor: Decimal) -> Decimal:
        return minor * self.factor

    def to_dict(self) -> dict[str, str]:
        return {
            "from_currency": self.from_currency,
            "to_currency": self.to_currency,
            "reference_rate": f"1 {self.base} = {self.rate} {self.quote}",
            "date": self.date,
            "source": self.source,
            "note": "the policy's money rates converted for comparison; nothing converted "
            "is posted",
        }


@dataclass(frozen=True, slots=True)
class FxBook:
    rates: tuple[tuple[str, str, Decimal, str, str], ...] = ()  # base, quote, rate, date, source
    exponents: Mapping[str, int] | None = None

    def conversion(self, from_currency: str, to_currency: str) -> Conversion | None:
        """How to convert minor units of ``from_currency`` into ``to_currency``; None if the
        book has no reference rate for the pair."""
        exps = self.exponents or {}
        if from_currency not in exps or to_currency not in exps:
            return None
        scale = Decimal(10) ** (exps[to_currency] - exps[from_currency])
        for base, quote, rate, date, source in self.rates:
            if (base, quote) == (from_currency, to_currency):
                factor = rate * scale
            elif (base, quote) == (to_currency, from_currency):
                factor = scale / rate
            else:
                continue
            return Conversion(from_currency, to_currency, factor, base, quote, rate, date, source)
        return None


def load_fx(path: Path = FX_FILE) -> FxBook:
    return parse_fx(json.loads(path.read_text(encoding="utf-8")))


def parse_fx(document: Mapping[str, Any]) -> FxBook:
    if document.get("format") != 1:
        raise ValueError("fx rates file format must be 1")
    rows = []
    for raw in document["rates"]:
        base, quote = str(raw["base"]), str(raw["quote"])
        check_currency(base)
        check_currency(quote)
        if not isinstance(raw["rate"], str):
            raise ValueError("a rate is a decimal string")
        rate = Decimal(raw["rate"])
        if not (rate.is_finite() and rate > 0):
            raise ValueError(f"{base}/{quote}: rate must be positive")
        if not raw.get("date") or not raw.get("source"):
            raise ValueError(f"{base}/{quote}: a rate needs its date and source")
        rows.append((base, quote, rate, str(raw["date"]), str(raw["source"])))
    exponents = {str(k): int(v) for k, v in document["minor_unit_exponents"].items()}
    return FxBook(tuple(rows), exponents)
