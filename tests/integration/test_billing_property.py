"""The ledger property on real Postgres: the seeded histories of
tests/unit/test_billing_ledger.py (several workers, their orders, offers and no-shows;
duplicates and reordering; truncation is left to the pure test) go through the real consumer,
``BillingIngest``, in batches as it receives them.
After every batch the database's ledger balances per transaction, settles no trip twice and
holds only what an in-order delivery posts (the pure oracle); at the end it holds exactly that,
and replaying every batch changes nothing."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from polder.billing.domain.ledger import Posting
from polder.billing.domain.settlement import OfferMade
from polder.billing.domain.timeline import StateChange
from polder.billing.domain.trips import OrderFacts
from polder.billing.ingest import BillingIngest
from polder.billing.metrics import BillingMetrics
from polder.common.bus import Bus, Received
from polder.common.envelope import Event, format_time
from polder.common.outbox import OutboxRelay
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.fares.tariff import load_tariffs
from tests.integration.test_billing import billing_service
from tests.unit.test_billing_ledger import T0, NoShow, clean_postings, random_city

pytestmark = pytest.mark.integration


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _event(type_: str, subject: str, data: dict[str, Any], ms: int, id_: str) -> Event:
    return Event(
        type=type_, source="polder/test", subject=subject, data=data, id=id_, time=_time(ms)
    )


def as_event(fact: StateChange | OrderFacts | NoShow | OfferMade) -> Event:
    """The fact as the event dispatch publishes (schemas/), validated below."""
    if isinstance(fact, StateChange):
        data = {
            "driver_id": fact.driver_id,
            "seq": fact.seq,
            "from": fact.from_,
            "to": fact.to,
            "cause": fact.cause,
            "order_id": fact.order_id,
            "trip_id": fact.trip_id,
            "offer_id": fact.offer_id,
            "kind": fact.product,
        }
        return _event(
            "polder.driver.state_changed.v1", fact.driver_id, data, fact.at_ms, fact.event_id
        )
    if isinstance(fact, OrderFacts):
        ready = format_time(_time(fact.ready_at_ms)) if fact.ready_at_ms is not None else None
        data = {
            "order_id": fact.order_id,
            "customer_id": fact.customer_id,
            "kind": fact.product,
            "city": "amsterdam",
            "pickup": {"lat": 52.37, "lng": 4.89},
            "dropoff": {"lat": 52.35, "lng": 4.91},
            "ready_at": ready,
            "quote": {
                "currency": "EUR",
                "amount_minor": 1000,
                "surge": str(fact.surge),
                "distance_m": fact.distance_m,
            },
        }
        # placed at T0, the moment the oracle takes its tariff at
        return _event(
            "polder.order.placed.v1",
            fact.order_id,
            data,
            T0,
            str(uuid.uuid5(uuid.NAMESPACE_URL, fact.order_id)),
        )
    if isinstance(fact, NoShow):
        data = {
            "order_id": fact.order_id,
            "from": "driver_arrived",
            "to": "cancelled",
            "cause": "cancelled_by_driver",
            "reason": "no_show",
        }
        return _event("polder.order.status_changed.v1", fact.order_id, data, T0, fact.event_id)
    offer_id = str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"{fact.order_id}/{fact.driver_id}/{fact.made_ms}")
    )
    data = {
        "offer_id": offer_id,
        "order_id": fact.order_id,
        "driver_id": fact.driver_id,
        "expires_at": format_time(_time(fact.made_ms + 15_000)),
        "pickup_eta_s": fact.pickup_eta_s,
        "pickup_distance_m": 800.0,
        "estimated_pay": {"currency": "EUR", "amount_minor": 700},
        "batch_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"batch/{offer_id}")),
    }
    return _event("polder.dispatch.offer_made.v1", fact.order_id, data, fact.made_ms, offer_id)


async def ledger(
    pool: Any,
) -> dict[uuid.UUID, tuple[str, str | None, frozenset[tuple[str, str, int]]]]:
    rows = await pool.fetch(
        "SELECT t.tx_id, t.kind, t.trip_id::text AS trip_id, e.account, e.currency, "
        "e.amount_minor FROM ledger_transactions t JOIN ledger_entries e USING (tx_id)"
    )
    out: dict[uuid.UUID, tuple[str, str | None, set[tuple[str, str, int]]]] = {}
    for r in rows:
        out.setdefault(r["tx_id"], (r["kind"], r["trip_id"], set()))[2].add(
            (r["account"], r["currency"], r["amount_minor"])
        )
    return {k: (kind, trip, frozenset(e)) for k, (kind, trip, e) in out.items()}


def expected(p: Posting) -> tuple[str, str | None, frozenset[tuple[str, str, int]]]:
    return (
        p.kind,
        p.trip_id,
        frozenset((e.account, e.currency, e.amount_minor) for e in p.entries),
    )


@pytest.mark.parametrize("seed", [3, 8, 21, 64])
async def test_the_real_consumer_keeps_the_ledger_right_under_any_delivery(
    settings: Settings, seed: int
) -> None:
    rng = random.Random(seed)
    city = random_city(rng, 4)
    clean = {tx: expected(p) for tx, p in clean_postings(city.changes, city).items()}
    facts = [*city.changes, *city.orders.values(), *city.no_shows, *city.offers]
    delivery = [f for f in facts for _ in range(rng.randint(1, 3))]
    rng.shuffle(delivery)
    registry = SchemaRegistry.load()
    records = []
    for offset, fact in enumerate(delivery):
        event = as_event(fact)
        registry.validate(event)  # the events are the real contract's
        records.append(Received(event, event.subject, "t", 0, offset))
    async with billing_service(settings) as b:
        bus = Bus(settings, registry, source="polder/billing")
        ingest = BillingIngest(
            b.pool,
            bus,
            OutboxRelay(b.pool, bus),
            load_tariffs(),
            Decimal("0.75"),
            BillingMetrics(CollectorRegistry()),
        )
        batches = []
        i = 0
        while i < len(records):
            size = rng.randint(1, 40)
            batches.append(records[i : i + size])
            i += size
        for n, batch in enumerate(batches):
            await ingest(batch)
            now = await ledger(b.pool)
            unbalanced = await b.pool.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM ledger_entries GROUP BY tx_id, currency "
                "HAVING sum(amount_minor) <> 0) u"
            )
            assert unbalanced == 0, (seed, n)
            trips = [trip for kind, trip, _ in now.values() if kind == "trip_settlement"]
            assert len(trips) == len(set(trips)), (seed, n, "a trip settled twice")
            for tx, posting in now.items():
                assert clean.get(tx) == posting, (seed, n, "posted what in-order would not")
        assert await ledger(b.pool) == clean
        assert len(clean) > 0  # the seeds are chosen to settle trips
        for batch in batches:  # replayed from offset 0
            await ingest(batch)
        assert await ledger(b.pool) == clean


class CrashingRegistry(SchemaRegistry):
    """Fails the first validation of each posting event: the handler dies after every fact
    and posting of its batch is written, before the transaction commits (the outbox rows are
    the last thing it writes), as a process killed at that moment would."""

    def __init__(self, inner: SchemaRegistry) -> None:
        self.__dict__.update(inner.__dict__)
        self.failed: set[str] = set()

    def validate(self, event: Event) -> dict[str, Any]:
        if event.type == "polder.billing.posted.v1" and event.data["tx_id"] not in self.failed:
            self.failed.add(event.data["tx_id"])
            raise RuntimeError("killed before commit")
        return super().validate(event)


async def test_a_consumer_killed_before_its_commit_posts_nothing_twice(settings: Settings) -> None:
    # Issue 4 "Tests": every batch that posts dies once before its commit and is redelivered
    # (the offsets were not committed); the ledger ends as an in-order delivery's, each posting
    # and its outbox row exactly once.
    rng = random.Random(5)
    city = random_city(rng, 4)
    clean = {tx: expected(p) for tx, p in clean_postings(city.changes, city).items()}
    facts = [*city.changes, *city.orders.values(), *city.no_shows, *city.offers]
    rng.shuffle(facts)
    registry = CrashingRegistry(SchemaRegistry.load())
    records = [Received(as_event(f), None, "t", 0, i) for i, f in enumerate(facts)]
    async with billing_service(settings) as b:
        bus = Bus(settings, registry, source="polder/billing")
        ingest = BillingIngest(
            b.pool,
            bus,
            OutboxRelay(b.pool, bus),
            load_tariffs(),
            Decimal("0.75"),
            BillingMetrics(CollectorRegistry()),
        )
        crashes = 0
        for i in range(0, len(records), 10):
            batch = records[i : i + 10]
            while True:  # as the consumer does: the batch again until it is durable
                before = await ledger(b.pool)
                try:
                    await ingest(batch)
                    break
                except RuntimeError:
                    crashes += 1
                    assert await ledger(b.pool) == before  # nothing of the batch committed
        assert crashes > 0 and len(clean) > 0
        assert await ledger(b.pool) == clean
        outbox = await b.pool.fetch("SELECT event -> 'data' ->> 'tx_id' AS tx FROM outbox")
        assert sorted(r["tx"] for r in outbox) == sorted(str(tx) for tx in clean)
