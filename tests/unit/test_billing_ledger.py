"""Seeded property test of the ledger (issue 4 "Tests"): random event histories of several
workers with their orders, delivered with duplicates, reordering, delays and truncation, in
batches as the consumer gets them. After every batch each worker's timeline is exclusive and
gap-free, the ledger balances per currency, holds no transaction twice and no trip twice, and
everything in it is exactly what an in-order delivery of the same facts posts. At the end the
ledger *is* that: nothing missing either.

The consumer's rule is modelled as ``BillingIngest`` applies it: facts are stored once by their
keys; every trip a batch touched (a step of it, its order, its order's cancellation) is given
to ``settle_trip`` with everything stored; a posting is inserted unless its id is there.
``tests/integration/test_billing_property.py`` runs the same histories through the real
consumer on Postgres.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from polder.billing.domain.ledger import Posting, trip_settlement
from polder.billing.domain.settlement import (
    OfferMade,
    promised_eta_s,
    settle_trip,
    trip_facts_complete,
)
from polder.billing.domain.timeline import StateChange, build_timeline, invariant_violations
from polder.billing.domain.trips import OrderFacts, trip_from_changes
from polder.fares.fare import LineCode
from polder.fares.tariff import load_tariffs
from tests.unit.test_billing_timeline import T0, grace, random_history

TARIFFS = load_tariffs()
SHARE = Decimal("0.75")
NS = uuid.UUID("0b5e7a52-3c1d-4f4e-9b8a-2d6c1e0f9a77")


@dataclass(frozen=True, slots=True)
class NoShow:
    """The order's cancellation with reason no_show (an order change on polder.orders)."""

    event_id: str
    order_id: str


Fact = StateChange | OrderFacts | NoShow | OfferMade


@dataclass(slots=True)
class City:
    changes: list[StateChange]
    orders: dict[str, OrderFacts]
    no_shows: list[NoShow]
    offers: list[OfferMade]


def _uid(*parts: object) -> str:
    return str(uuid.uuid5(NS, "/".join(map(str, parts))))


def random_city(rng: random.Random, workers: int) -> City:
    """Each worker's legal history (the timeline test's generator), with uuid ids per worker;
    an order for every offer; a no-show cancellation for some orders a driver cancelled."""
    changes: list[StateChange] = []
    orders: dict[str, OrderFacts] = {}
    no_shows: list[NoShow] = []
    offers: list[OfferMade] = []
    for w in range(workers):
        driver = f"drv-{w}"
        for c in random_history(rng, rng.randint(1, 40)):
            order = _uid(driver, c.order_id) if c.order_id else None
            c = replace(
                c,
                driver_id=driver,
                event_id=_uid(driver, c.event_id),
                order_id=order,
                trip_id=_uid(driver, c.trip_id) if c.trip_id else None,
                offer_id=_uid(driver, c.offer_id) if c.offer_id else None,
            )
            changes.append(c)
            if order and order not in orders:
                orders[order] = OrderFacts(
                    order_id=order,
                    customer_id=f"cust-{rng.randrange(5)}",
                    product=c.product or "ride",
                    surge=Decimal(rng.choice(["1.0", "1.3"])),
                    distance_m=rng.uniform(500, 12_000),
                    ready_at_ms=c.at_ms + rng.randint(0, 600_000)
                    if c.product == "delivery"
                    else None,
                )
            if c.cause == "offer_sent" and order:
                eta_s = rng.choice([0.0, rng.uniform(30, 900)])
                offers.append(OfferMade(order, driver, c.at_ms, eta_s))
            if c.cause == "cancelled_by_driver" and order and rng.random() < 0.5:
                no_shows.append(NoShow(_uid("no-show", order), order))
    return City(changes, orders, no_shows, offers)


@dataclass(slots=True)
class Store:
    """What billing keeps: facts by key, and the ledger by transaction id."""

    changes: dict[str, StateChange] = field(default_factory=dict)
    orders: dict[str, OrderFacts] = field(default_factory=dict)
    no_shows: dict[str, NoShow] = field(default_factory=dict)
    offers: set[OfferMade] = field(default_factory=set)
    ledger: dict[uuid.UUID, Posting] = field(default_factory=dict)

    def consume(self, batch: Iterable[Fact]) -> None:
        touched_trips: set[str] = set()
        touched_orders: set[str] = set()
        for f in batch:
            if isinstance(f, StateChange):
                if f.event_id not in self.changes:
                    self.changes[f.event_id] = f
                    if f.trip_id:
                        touched_trips.add(f.trip_id)
            elif isinstance(f, OrderFacts):
                if f.order_id not in self.orders:
                    self.orders[f.order_id] = f
                    touched_orders.add(f.order_id)
            elif isinstance(f, OfferMade):
                if f not in self.offers:
                    self.offers.add(f)
                    touched_orders.add(f.order_id)
            elif f.event_id not in self.no_shows:
                self.no_shows[f.event_id] = f
                touched_orders.add(f.order_id)
        by_trip: dict[str, list[StateChange]] = defaultdict(list)
        for c in self.changes.values():
            if c.trip_id:
                by_trip[c.trip_id].append(c)
        touched_trips |= {t for t, cs in by_trip.items() if cs[0].order_id in touched_orders}
        for posting in settle_all(
            {t: by_trip[t] for t in touched_trips if t in by_trip},
            self.orders,
            {n.order_id for n in self.no_shows.values()},
            self.offers,
        ):
            self.ledger.setdefault(posting.tx_id, posting)  # ON CONFLICT DO NOTHING


def settle_all(
    trips: dict[str, list[StateChange]],
    orders: dict[str, OrderFacts],
    no_shows: set[str],
    offers: Iterable[OfferMade],
) -> list[Posting]:
    out = []
    for trip_id, changes in sorted(trips.items()):
        order = orders.get(changes[0].order_id or "")
        ends = [
            c
            for c in changes
            if c.cause in ("completed", "cancelled_by_customer", "cancelled_by_driver")
        ]
        if order is None or not ends:
            continue
        placed = datetime.fromtimestamp(T0 / 1000, UTC)
        for end in ends:
            posting = settle_trip(
                trip_id=trip_id,
                end_event_id=end.event_id,
                changes=changes,
                order=order,
                tariff=TARIFFS.get("amsterdam", order.product, placed),
                no_show=order.order_id in no_shows,
                driver_share=SHARE,
                promised_eta_s=promised_eta_s(
                    [o for o in offers if o.order_id == order.order_id],
                    end.driver_id,
                    changes,
                    trip_id,
                ),
            )
            if posting is not None:
                out.append(posting)
    return out


def clean_postings(changes: Sequence[StateChange], city: City) -> dict[uuid.UUID, Posting]:
    """What an in-order delivery of these facts posts: every fact known, settled once."""
    store = Store()
    store.consume([*city.orders.values(), *city.no_shows, *city.offers, *changes])
    return store.ledger


def ledger_violations(ledger: dict[uuid.UUID, Posting]) -> list[str]:
    problems = []
    totals: dict[str, int] = defaultdict(int)
    entry_ids: set[uuid.UUID] = set()
    trips: dict[str | None, int] = defaultdict(int)
    for tx_id, p in ledger.items():
        if tx_id != p.tx_id:
            problems.append(f"{tx_id} stored under another id")
        per_tx: dict[str, int] = defaultdict(int)
        for e in p.entries:
            per_tx[e.currency] += e.amount_minor
            totals[e.currency] += e.amount_minor
        if any(per_tx.values()):
            problems.append(f"{tx_id} unbalanced {dict(per_tx)}")
        if entry_ids & set(p.entry_ids()):
            problems.append(f"{tx_id} repeats an entry id")
        entry_ids |= set(p.entry_ids())
        if p.kind == "trip_settlement":
            trips[p.trip_id] += 1
    if any(totals.values()):
        problems.append(f"ledger unbalanced {dict(totals)}")
    problems += [f"trip {t} settled {n} times" for t, n in trips.items() if n > 1]
    return problems


@pytest.mark.parametrize("seed", range(150))
def test_any_delivery_keeps_the_ledger_balanced_and_converges_on_it(seed: int) -> None:
    rng = random.Random(seed)
    city = random_city(rng, rng.randint(1, 4))
    truncate = rng.random() < 0.3  # each worker's stream stops early: a seq-prefix arrives
    changes = city.changes
    if truncate:
        keep: dict[str, int] = {}
        for c in changes:
            keep[c.driver_id] = max(keep.get(c.driver_id, 0), c.seq)
        cut = {d: rng.randint(1, n) for d, n in keep.items()}
        changes = [c for c in changes if c.seq <= cut[c.driver_id]]
    clean = clean_postings(changes, city)
    assert ledger_violations(clean) == []

    facts: list[Fact] = [*changes, *city.orders.values(), *city.no_shows, *city.offers]
    delivery = [f for f in facts for _ in range(rng.randint(1, 3))]  # duplicates
    rng.shuffle(delivery)  # reordering, across topics and within a worker's stream
    delayed = [f for f in delivery if rng.random() < 0.1]  # held back, delivered last
    delivery = [f for f in delivery if f not in delayed] + delayed
    store = Store()
    i = 0
    while i < len(delivery):
        size = rng.randint(1, 8)
        store.consume(delivery[i : i + size])
        i += size
        assert ledger_violations(store.ledger) == [], (seed, i)
        for tx_id, p in store.ledger.items():
            assert clean.get(tx_id) == p, (seed, i, "posted what in-order delivery would not")
        by_driver: dict[str, list[StateChange]] = defaultdict(list)
        for c in store.changes.values():
            by_driver[c.driver_id].append(c)
        for driver, received in by_driver.items():
            timeline = build_timeline(
                received,
                until_ms=max(c.at_ms for c in changes) + 60_000,
                last_sign_of_life_ms=max(c.at_ms for c in received),
                silence_timeout_ms=48 * 3_600_000,
                grace_ms=grace,
                driver_id=driver,
            )
            assert invariant_violations(timeline) == [], (seed, i, driver)
    assert store.ledger == clean, seed
    store.consume(delivery)  # replayed from offset 0
    assert store.ledger == clean, seed


def test_some_histories_settle_trips() -> None:
    # the property above is only as strong as the trips it sees settled
    settled = sum(
        len(clean_postings(c.changes, c))
        for c in (random_city(random.Random(s), 3) for s in range(150))
    )
    assert settled > 100


def _trip(seq0: int, causes: list[str]) -> list[StateChange]:
    states = {
        "offer_accepted": ("offered", "en_route_pickup"),
        "arrived_pickup": ("en_route_pickup", "at_pickup"),
        "picked_up": ("at_pickup", "on_trip"),
        "arrived_dropoff": ("on_trip", "at_dropoff"),
        "completed": ("at_dropoff", "idle"),
    }
    return [
        StateChange(
            event_id=f"e{seq0 + i}",
            driver_id="d",
            seq=seq0 + i,
            at_ms=T0 + 60_000 * i,
            from_=states[c][0],
            to=states[c][1],
            cause=c,
            order_id="o",
            trip_id="t",
            product="ride",
        )
        for i, c in enumerate(causes)
    ]


def test_a_trip_is_complete_only_with_every_step_between_accept_and_end() -> None:
    steps = ["offer_accepted", "arrived_pickup", "picked_up", "arrived_dropoff", "completed"]
    whole = _trip(7, steps)
    assert trip_facts_complete("t", whole)
    for missing in range(len(whole)):
        assert not trip_facts_complete("t", whole[:missing] + whole[missing + 1 :]), missing
    assert not trip_facts_complete("other", whole)


def test_a_fare_is_not_posted_from_partial_facts() -> None:
    # The end arrives before arrived_pickup: pricing now would drop the wait at pickup, under
    # the id that makes the posting final. It waits; the whole trip posts the right fare.
    steps = ["offer_accepted", "arrived_pickup", "picked_up", "arrived_dropoff", "completed"]
    whole = _trip(3, steps)
    # a long wait at pickup: 4 minutes, beyond the ride's 2-minute grace
    whole[2] = replace(whole[2], at_ms=whole[1].at_ms + 240_000)
    whole[3] = replace(whole[3], at_ms=whole[2].at_ms + 600_000)
    whole[4] = replace(whole[4], at_ms=whole[3].at_ms + 60_000)
    order = OrderFacts("o", "c", "ride", Decimal("1.0"), 5_000.0)
    tariff = TARIFFS.get("amsterdam", "ride", datetime.fromtimestamp(T0 / 1000, UTC))
    kw = {
        "trip_id": "t",
        "end_event_id": "e7",
        "order": order,
        "tariff": tariff,
        "no_show": False,
        "driver_share": SHARE,
        "promised_eta_s": None,
    }
    assert settle_trip(changes=[whole[0], *whole[2:]], **kw) is None  # type: ignore[arg-type]
    posting = settle_trip(changes=whole, **kw)  # type: ignore[arg-type]
    assert posting is not None
    fare = trip_from_changes("t", whole, order, tariff).fare  # type: ignore[union-attr]
    partial = trip_from_changes("t", [whole[0], *whole[2:]], order, tariff).fare  # type: ignore[union-attr]
    # tariffs.json, amsterdam ride: wait fee per whole minute beyond the 2-minute grace
    assert fare.amount(LineCode.WAIT_FEE) > 0 and partial.amount(LineCode.WAIT_FEE) == 0
    assert posting == trip_settlement(
        fare=fare,
        driver_share=SHARE,
        customer_id="c",
        driver_id="d",
        trip_id="t",
        occurred_at=datetime.fromtimestamp(whole[4].at_ms / 1000, UTC),
        caused_by="e7",
    )
