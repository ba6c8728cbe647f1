"""Double-entry postings: pure construction, balanced by construction and checked again by the
database. Ids derive from the causing event (uuid5), so a replay posts nothing new."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from polder.fares.fare import Fare
from polder.fares.money import round_minor

LEDGER_NAMESPACE = uuid.UUID("6f1c2a4e-8d0b-5b7e-9a53-0c2d7e1f4b90")


def derived_id(*parts: str) -> uuid.UUID:
    return uuid.uuid5(LEDGER_NAMESPACE, "/".join(parts))


@dataclass(frozen=True, slots=True)
class Entry:
    account: str
    currency: str
    amount_minor: int  # positive = debit, negative = credit


class Unbalanced(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Posting:
    tx_id: uuid.UUID
    kind: str
    driver_id: str | None
    trip_id: str | None
    occurred_at: datetime
    caused_by: str
    entries: tuple[Entry, ...]
    reverses: uuid.UUID | None = None

    def __post_init__(self) -> None:
        totals: dict[str, int] = defaultdict(int)
        for e in self.entries:
            if e.amount_minor == 0:
                raise Unbalanced(f"zero entry in {self.kind}")
            totals[e.currency] += e.amount_minor
        if any(totals.values()):
            raise Unbalanced(f"{self.kind} does not balance: {dict(totals)}")

    def entry_ids(self) -> list[uuid.UUID]:
        return [derived_id(str(self.tx_id), str(i)) for i in range(len(self.entries))]

    def reversal(self, caused_by: str, at: datetime) -> Posting:
        """The correction of this posting: the same entries with the opposite sign."""
        return Posting(
            tx_id=derived_id("reversal", str(self.tx_id), caused_by),
            kind=f"reversal:{self.kind}",
            driver_id=self.driver_id,
            trip_id=self.trip_id,
            occurred_at=at,
            caused_by=caused_by,
            entries=tuple(Entry(e.account, e.currency, -e.amount_minor) for e in self.entries),
            reverses=self.tx_id,
        )


def customer_account(order_customer: str) -> str:
    return f"customer:{order_customer}:receivable"


def driver_account(driver_id: str) -> str:
    return f"driver:{driver_id}:payable"


PLATFORM_REVENUE = "platform:revenue"
PLATFORM_TOPUPS = "platform:topup_expense"


def trip_settlement(
    *,
    fare: Fare,
    driver_share: Decimal,
    customer_id: str,
    driver_id: str,
    trip_id: str,
    occurred_at: datetime,
    caused_by: str,
) -> Posting:
    """The customer owes the fare; the driver is owed their share of it, the platform the rest.
    Wait, cancellation and no-show fees are shared the same way (they pay for the worker's time).
    """
    total = fare.total_minor
    to_driver = round_minor(Decimal(total) * driver_share)
    entries = [Entry(customer_account(customer_id), fare.currency, total)]
    if to_driver:
        entries.append(Entry(driver_account(driver_id), fare.currency, -to_driver))
    if total - to_driver:
        entries.append(Entry(PLATFORM_REVENUE, fare.currency, -(total - to_driver)))
    return Posting(
        tx_id=derived_id("trip", trip_id, caused_by),
        kind="trip_settlement",
        driver_id=driver_id,
        trip_id=trip_id,
        occurred_at=occurred_at,
        caused_by=caused_by,
        entries=tuple(e for e in entries if e.amount_minor),
    )


def topup(
    *, driver_id: str, policy: str, period: str, currency: str, amount_minor: int, at: datetime
) -> Posting:
    """A pay floor above what the worker earned in a period: the platform pays the difference.
    The amount is part of the id: a recount that changes it is a new posting (after the old
    one's reversal), a recount that does not is the same posting."""
    return Posting(
        tx_id=derived_id("topup", driver_id, policy, period, str(amount_minor)),
        kind=f"topup:{policy}",
        driver_id=driver_id,
        trip_id=None,
        occurred_at=at,
        caused_by=f"period:{period}",
        entries=(
            Entry(PLATFORM_TOPUPS, currency, amount_minor),
            Entry(driver_account(driver_id), currency, -amount_minor),
        ),
    )
