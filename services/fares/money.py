"""Money: integer minor units of an ISO 4217 currency.

Amounts are whole minor units (cents) in every result; ``Decimal`` appears only in the middle
of a calculation, and every step back to minor units names its rounding. Fares round each line
half-up to the minor unit (``ROUND_HALF_UP``: 0.5 cent goes up, as a customer would round it by
hand), and a total is the sum of rounded lines, so the lines shown always add up to the total.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

_CURRENCY_CODE = re.compile(r"[A-Z]{3}")

FARE_ROUNDING = ROUND_HALF_UP


class CurrencyMismatch(ValueError):
    """Amounts in two currencies were combined; converting them is never implicit."""


def round_minor(amount: Decimal, rounding: str = FARE_ROUNDING) -> int:
    """An amount in (fractional) minor units, rounded to a whole minor unit."""
    if not amount.is_finite():
        raise ValueError(f"cannot round {amount} to a minor unit")
    return int(amount.quantize(Decimal(1), rounding=rounding))


def check_currency(code: str) -> str:
    if not _CURRENCY_CODE.fullmatch(code):
        raise ValueError(f"not an ISO 4217 currency code: {code!r}")
    return code


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; True cents is a bug, not an amount.
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise TypeError(f"amount_minor must be an int, got {self.amount_minor!r}")
        check_currency(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    def __add__(self, other: Money) -> Money:
        return Money(self.amount_minor + self._same_currency(other).amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.amount_minor - self._same_currency(other).amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def scale(self, factor: Decimal, rounding: str = FARE_ROUNDING) -> Money:
        """This amount times ``factor``, rounded to a whole minor unit as named."""
        return Money(round_minor(Decimal(self.amount_minor) * factor, rounding), self.currency)

    def to_dict(self) -> dict[str, int | str]:
        return {"currency": self.currency, "amount_minor": self.amount_minor}

    def _same_currency(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} and {other.currency}")
        return other


def sum_money(amounts: Iterable[Money], currency: str) -> Money:
    """Sum of ``amounts``, all in ``currency`` (zero when there are none)."""
    result = Money.zero(currency)
    for amount in amounts:
        result = result + amount
    return result
