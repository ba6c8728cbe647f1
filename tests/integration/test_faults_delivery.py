"""Faults of delivery on the real broker and Postgres (test_faults.py has the outages and
test_scale_out.py the killed instances):

* a topic replayed from offset 0 into billing (its consumer groups' committed offsets reset to
  0 on the broker) and into dispatch (consumers of its in-memory views reading from offset 0):
  every table and the views are as they were;
* a rebalance during processing (a second billing instance joins the group mid-stream): every
  event takes effect once;
* every event delivered 1-5 times, reordered within each worker, device clocks skewed by up to
  ±10 min, and set back by 5 min mid-shift: billing's segments, ledger and statements equal
  those of the clean history.

Each scenario asserts the invariants: every order accounted for, timelines gap-free and
exclusive, ledger balanced, no duplicate postings.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from polder.billing.domain.segments import Segment
from polder.billing.ingest import CONSUMER as BILLING_CONSUMER
from polder.billing.main import build_app as build_billing
from polder.billing.pings import CONSUMER as PINGS_CONSUMER
from polder.billing.runtime import BillingRuntime
from polder.common.bus import Bus, Consumer, Received, create_topics
from polder.common.envelope import Event, format_time
from polder.common.metrics import CommonMetrics
from polder.common.positions import apply_pings
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DISPATCH, DRIVER_EVENTS, DRIVER_LOCATIONS, ORDERS, Topic
from tests.conftest import Infra, eventually, isolated_settings
from tests.integration.test_billing_property import as_event, ledger
from tests.integration.test_billing_property import expected as oracle_posting
from tests.integration.test_dispatch import CENTRE, Dispatch, running
from tests.support import serve
from tests.unit.test_billing_ledger import T0, City, clean_postings, random_city

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BILLING_TOPICS = {
    BILLING_CONSUMER: [DRIVER_EVENTS, ORDERS, DISPATCH],
    PINGS_CONSUMER: [DRIVER_LOCATIONS],
}
POLICIES = ["nl_hourly", "prop22", "nyc_tlc", "seattle_payup", "platform_share"]


# --- the services and what they hold ------------------------------------------------------


@dataclass
class BillingInstance:
    app: FastAPI
    base: str

    @property
    def rt(self) -> BillingRuntime:
        rt: BillingRuntime = self.app.state.runtime
        return rt

    @property
    def pool(self) -> Any:
        return self.rt.statements.pool

    def consumed(self, consumer: str) -> float:
        """Events this instance's consumer handled (a counter since it started)."""
        registry: CollectorRegistry = self.rt.metrics.registry
        total = 0.0
        for metric in registry.collect():
            for sample in metric.samples:
                if (
                    sample.name == "polder_events_consumed_total"
                    and sample.labels["consumer"] == consumer
                ):
                    total += sample.value
        return total


@contextlib.asynccontextmanager
async def billing(settings: Settings) -> AsyncIterator[BillingInstance]:
    app = build_billing(settings)
    async with serve(app) as base:
        yield BillingInstance(app, base)


async def table_dump(pool: Any, schema: str) -> dict[str, list[str]]:
    """Every row of every table of the schema, as text, in a stable order."""
    tables = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 "
        "AND table_type = 'BASE TABLE' ORDER BY 1",
        schema,
    )
    dump = {}
    for t in tables:
        name = t["table_name"]
        query = f'SELECT to_jsonb(x)::text AS r FROM "{schema}"."{name}" x ORDER BY 1'  # noqa: S608
        rows = await pool.fetch(query)
        dump[name] = [r["r"] for r in rows]
    return dump


async def log_end(settings: Settings, topics: Sequence[Topic]) -> int:
    """Records in the topics: the sum of their partitions' end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        parts = await _partitions(consumer, settings, topics)
        ends = await consumer.end_offsets(parts)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def _partitions(
    consumer: AIOKafkaConsumer, settings: Settings, topics: Sequence[Topic]
) -> list[TopicPartition]:
    parts = []
    for topic in topics:
        name = settings.topic(topic.name)
        ids = consumer.partitions_for_topic(name)
        while not ids:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            ids = consumer.partitions_for_topic(name)
        parts += [TopicPartition(name, p) for p in sorted(ids)]
    return parts


async def rewind_group(settings: Settings, group: str, topics: Sequence[Topic]) -> None:
    """Commit offset 0 on every partition for the (stopped) consumer group, on the broker: as
    the group's only member once the stopped service's session is over (Tansu takes commits
    from members only)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.topic(group),
        enable_auto_commit=False,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_ms,
    )
    await consumer.start()
    try:
        parts = await _partitions(consumer, settings, topics)
        consumer.subscribe([settings.topic(t.name) for t in topics])

        async def assigned() -> set[TopicPartition]:
            await consumer.getmany(timeout_ms=100, max_records=1)
            return set(consumer.assignment())

        await eventually(assigned, until=lambda a: a == set(parts), within=30)
        await consumer.commit(dict.fromkeys(parts, 0))
        committed = [await consumer.committed(tp) for tp in parts]
        assert committed == [0] * len(parts), committed
    finally:
        await consumer.stop()


# --- a stream of work: rides through dispatch's API ----------------------------------------


@dataclass
class Work:
    drivers: list[str] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)
    completed_trips: list[str] = field(default_factory=list)
    cancelled_orders: list[str] = field(default_factory=list)


async def rides(
    d: Dispatch,
    work: Work,
    prefix: str,
    n: int,
    after: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """``n`` rides one after another, each by a driver of its own who goes online, drives
    (positions on the way) and goes offline; every fourth ride the customer cancels at pickup."""
    for i in range(n):
        driver, customer = f"{prefix}-drv-{i}", f"{prefix}-cust-{i}"
        lat, lng = CENTRE[0] + 0.001 * i, CENTRE[1]
        work.drivers.append(driver)
        await d.online(driver, lat, lng)
        created = await d.order(customer, dlat=0.001 * i + 0.0005)
        work.orders.append(created["order_id"])
        await d.batch()
        [offer] = await d.offers(driver)
        r = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", driver)
        assert r.status_code == 200, r.text
        trip_id = r.json()["trip_id"]
        await d.position(driver, lat + 0.0005, lng)
        await step(d, trip_id, driver, "arrived_pickup")
        if i % 4 == 3:
            r = await d.call(
                "POST", f"/v1/orders/{created['order_id']}/cancel", "customer", customer
            )
            assert r.status_code == 200, r.text
            work.cancelled_orders.append(created["order_id"])
        else:
            await step(d, trip_id, driver, "picked_up")
            await d.position(driver, lat + 0.01, lng + 0.005)
            await d.position(driver, lat + 0.02, lng + 0.01)
            await step(d, trip_id, driver, "arrived_dropoff")
            await step(d, trip_id, driver, "completed")
            work.completed_trips.append(trip_id)
        r = await d.call(
            "POST", f"/v1/drivers/{driver}/status", "driver", driver, json={"status": "offline"}
        )
        assert r.status_code == 200, r.text
        if after is not None:
            await after(i)


async def step(d: Dispatch, trip_id: str, driver: str, name: str) -> None:
    await asyncio.sleep(0.05)  # each step at a later millisecond of server time
    r = await d.call("POST", f"/v1/trips/{trip_id}/events", "driver", driver, json={"type": name})
    assert r.status_code == 200, (name, r.text)


async def published_ids(d: Dispatch, topic: Topic) -> set[str]:
    rows = await d.rt.handlers.pool.fetch(
        "SELECT event ->> 'id' AS id FROM outbox WHERE topic = $1", d.settings.topic(topic.name)
    )
    return {r["id"] for r in rows}


async def billing_caught_up(d: Dispatch, b: BillingInstance, work: Work) -> None:
    """Billing stored every worker event dispatch published and settled every completed trip."""
    wanted = await published_ids(d, DRIVER_EVENTS)

    async def stored() -> set[str]:
        return {r["event_id"] for r in await b.pool.fetch("SELECT event_id FROM driver_events")}

    await eventually(stored, until=lambda s: s >= wanted, within=60)

    async def settled() -> set[str]:
        rows = await b.pool.fetch(
            "SELECT trip_id::text AS t FROM ledger_transactions WHERE kind = 'trip_settlement'"
        )
        return {r["t"] for r in rows}

    await eventually(settled, until=lambda s: s >= set(work.completed_trips), within=60)

    async def unsent() -> int:
        n: int = await b.pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        return n

    await eventually(unsent, until=lambda n: n == 0, within=30)


# --- the invariants ------------------------------------------------------------------------


async def assert_invariants(d: Dispatch, b: BillingInstance, work: Work) -> None:
    await assert_orders_accounted_for(d, b, work)
    await assert_ledger_sound(b.pool)
    now = datetime.now(UTC)
    for driver in work.drivers:
        _, segments, _ = await b.rt.statements.compute(
            driver, now - timedelta(hours=1), now, ["nl_hourly"], now
        )
        sessions = await online_sessions(b.pool, driver)
        assert_tiles(segments, sessions, driver)


async def assert_orders_accounted_for(d: Dispatch, b: BillingInstance, work: Work) -> None:
    rows = await d.rt.handlers.pool.fetch("SELECT order_id::text AS o, status FROM orders")
    ended = {r["o"]: r["status"] for r in rows}
    assert ended == {
        o: ("cancelled" if o in work.cancelled_orders else "completed") for o in work.orders
    }
    known = {r["o"] for r in await b.pool.fetch("SELECT order_id::text AS o FROM orders")}
    assert known == set(work.orders)  # billing knows every order, and only those
    settled = await b.pool.fetch(
        "SELECT trip_id::text AS t, count(*) AS n FROM ledger_transactions "
        "WHERE kind = 'trip_settlement' GROUP BY 1"
    )
    assert {r["t"]: r["n"] for r in settled} == dict.fromkeys(work.completed_trips, 1)


async def assert_ledger_sound(pool: Any) -> None:
    unbalanced = await pool.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM ledger_entries GROUP BY tx_id, currency "
        "HAVING sum(amount_minor) <> 0) u"
    )
    assert unbalanced == 0
    # each posting announced once: one outbox row per ledger transaction, none without one
    posted = await pool.fetch(
        "SELECT event -> 'data' ->> 'tx_id' AS tx, count(*) AS n FROM outbox GROUP BY 1"
    )
    txs = {str(r["tx_id"]) for r in await pool.fetch("SELECT tx_id FROM ledger_transactions")}
    assert {r["tx"]: r["n"] for r in posted} == dict.fromkeys(txs, 1)


async def online_sessions(pool: Any, driver: str) -> list[tuple[int, int]]:
    """[went online, went offline) of each of the worker's sessions, in server ms."""
    rows = await pool.fetch(
        "SELECT data ->> 'from' AS f, data ->> 'to' AS t, "
        "floor(extract(epoch FROM at) * 1000)::bigint AS ms FROM driver_events "
        "WHERE driver_id = $1 ORDER BY seq",
        driver,
    )
    sessions, start = [], None
    for r in rows:
        if r["f"] == "offline":
            start = r["ms"]
        elif r["t"] == "offline":
            assert start is not None
            sessions.append((start, r["ms"]))
            start = None
    return sessions


def assert_tiles(segments: Sequence[Segment], sessions: list[tuple[int, int]], who: str) -> None:
    """The segments cover each online session exactly: no gap, no overlap, nothing outside."""
    segs = sorted(segments, key=lambda s: s.start_ms)
    covered: list[tuple[int, int]] = []
    for s in segs:
        assert s.end_ms >= s.start_ms, (who, s)
        if covered and covered[-1][1] == s.start_ms:
            covered[-1] = (covered[-1][0], s.end_ms)
        else:
            assert not covered or covered[-1][1] < s.start_ms, (who, "overlap", s)
            covered.append((s.start_ms, s.end_ms))
    assert covered == sessions, who


# --- scenario: replay from offset 0 --------------------------------------------------------


async def test_replaying_every_topic_from_offset_0_changes_nothing(settings: Settings) -> None:
    s = settings.model_copy(update={"location_ttl_s": 3600.0})  # no position expires meanwhile
    work = Work()
    async with running(s) as d:
        async with billing(s) as b:
            await rides(d, work, "rp", 4)
            await billing_caught_up(d, b, work)
            await assert_invariants(d, b, work)
            billing_before = await table_dump(b.pool, s.db_schema("billing"))
        dispatch_before = await table_dump(d.rt.handlers.pool, s.db_schema("dispatch"))
        views_before = dispatch_views(d)
        assert len(views_before["positions"]) == len(work.drivers)

        # billing: its groups' offsets reset to 0 on the broker, then the service restarted
        for group, topics in BILLING_TOPICS.items():
            await rewind_group(s, group, topics)
        events, pings = (
            await log_end(s, BILLING_TOPICS[BILLING_CONSUMER]),
            await log_end(s, [DRIVER_LOCATIONS]),
        )
        assert events > 0 and pings > 0
        async with billing(s) as b:
            await eventually(
                lambda: _const((b.consumed(BILLING_CONSUMER), b.consumed(PINGS_CONSUMER))),
                until=lambda c: c[0] >= events and c[1] >= pings,
                within=60,
            )
            assert await table_dump(b.pool, s.db_schema("billing")) == billing_before
            await assert_invariants(d, b, work)

        # dispatch: its views of positions and available workers fed every topic from offset 0
        await replay_into_dispatch(d, s)
        assert dispatch_views(d) == views_before
        assert await table_dump(d.rt.handlers.pool, s.db_schema("dispatch")) == dispatch_before


async def _const(value: Any) -> Any:
    return value


def dispatch_views(d: Dispatch) -> dict[str, Any]:
    matcher = d.rt.matcher
    availability = matcher.availability
    return {
        "positions": {p.driver_id: (p.lat, p.lng, p.recorded_at) for p in matcher.positions},
        "states": {driver: availability.state(driver) for driver in sorted(_drivers(d))},
        "idle": dict(availability.idle),
    }


def _drivers(d: Dispatch) -> set[str]:
    return {p.driver_id for p in d.rt.matcher.positions}


async def replay_into_dispatch(d: Dispatch, s: Settings) -> None:
    """Dispatch's own handlers of its in-memory views, fed by a consumer from offset 0."""
    seen = 0
    availability = d.rt.matcher.availability

    async def handler(records: Sequence[Received]) -> None:
        nonlocal seen
        locations = [r for r in records if r.event.type == "polder.location.pings_recorded.v1"]
        apply_pings(d.rt.matcher.positions, locations)
        for r in records:
            if r.event.type == "polder.driver.state_changed.v1":
                availability.apply_event(r.event.data, r.event.time.timestamp())
        seen += len(records)

    topics = [DRIVER_EVENTS, DRIVER_LOCATIONS]
    total = await log_end(s, topics)
    consumer = Consumer(
        name="dispatch-replay",
        settings=s,
        registry=d.bus.registry,
        bus=d.bus,
        metrics=CommonMetrics(CollectorRegistry()),
        topics=topics,
        handler=handler,
        group_id=None,
        start_at_ms=lambda: 0,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually(lambda: _const(seen), until=lambda n: n >= total, within=60)
    finally:
        stop.set()
        await task
    assert seen >= total  # at least once: a record may come twice, the views must not mind


# --- scenario: a rebalance mid-stream -------------------------------------------------------


async def test_a_second_billing_instance_joining_mid_stream_changes_no_effect(
    settings: Settings,
) -> None:
    work = Work()
    async with running(settings) as d, billing(settings) as first:
        joined: list[BillingInstance] = []
        async with contextlib.AsyncExitStack() as stack:

            async def join_after_second_ride(i: int) -> None:
                if i == 1:  # mid-stream: rides go on while the group rebalances
                    joined.append(await stack.enter_async_context(billing(settings)))

            await rides(d, work, "rb", 6, after=join_after_second_ride)
            [second] = joined
            # The group may still be settling (a rebalance takes a few heartbeats, longer on a
            # busy machine than four rides): rides go on until the new instance takes part.
            for extra in range(20):
                if second.consumed(BILLING_CONSUMER) > 0:
                    break
                await rides(d, work, f"rb{extra}", 1)
            await billing_caught_up(d, first, work)
            # both instances took part: the partitions were shared out again mid-stream
            assert first.consumed(BILLING_CONSUMER) > 0 and second.consumed(BILLING_CONSUMER) > 0
            wanted = await published_ids(d, DRIVER_EVENTS)
            stored = await first.pool.fetch(
                "SELECT event_id, count(*) AS n FROM driver_events GROUP BY 1"
            )
            assert {r["event_id"]: r["n"] for r in stored} == dict.fromkeys(wanted, 1)
            await assert_invariants(d, first, work)
            await assert_invariants(d, second, work)


# --- scenario: duplicates, reordering and skewed device clocks ------------------------------

PING_EVERY_MS = 30_000
SKEWS_MS = (10 * 60_000, -10 * 60_000, 7 * 60_000, -3 * 60_000)  # device minus server clock
# A clock set back mid-shift by 5 min and 7 s: billing keys its pings by driver and device time,
# so a ping recorded at the very millisecond of one before the set back would be taken for it;
# a set back of whole ping intervals would make every one of them such a twin.
SET_BACK_MS = 5 * 60_000 + 7_000


def ping_events(city: City, skewed: bool, set_back_ms: int = 0) -> list[tuple[Topic, str, Event]]:
    """Each worker's pings every 30 s from its first to its last state change, driving a
    straight line; received (server time) as recorded, on a device clock that is off by its
    worker's skew when ``skewed``, and set back by ``set_back_ms`` halfway through."""
    out = []
    for w, driver in enumerate(sorted({c.driver_id for c in city.changes})):
        times = [c.at_ms for c in city.changes if c.driver_id == driver]
        skew = SKEWS_MS[w % len(SKEWS_MS)] if skewed else 0
        sent = range(min(times), max(times) + 1, PING_EVERY_MS)
        for n, t in enumerate(sent):
            clock = t + skew - (set_back_ms if n >= len(sent) // 2 else 0)
            data = {
                "driver_id": driver,
                "received_at": format_time(_at(t)),
                "pings": [
                    {
                        "lat": CENTRE[0] + 0.0001 * n,  # ~11 m a ping: driving at 1.3 km/h...
                        "lng": CENTRE[1] + 0.0004 * n,  # ...plus ~27 m east: ~4.7 km/h
                        "recorded_at_ms": clock,
                        "accuracy_m": 5.0,
                    }
                ],
            }
            event = Event(
                type="polder.location.pings_recorded.v1",
                source="polder/location",
                subject=driver,
                data=data,
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"ping/{driver}/{t}")),
                time=_at(t),
            )
            out.append((DRIVER_LOCATIONS, driver, event))
    return out


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def history_events(city: City) -> list[tuple[Topic, str, Event]]:
    """The facts as dispatch publishes them, each on its topic with its key, in time order."""
    out: list[tuple[int, Topic, str, Event]] = []
    for c in city.changes:
        out.append((c.at_ms, DRIVER_EVENTS, c.driver_id, as_event(c)))
    for o in city.orders.values():
        out.append((T0, ORDERS, o.order_id, as_event(o)))
    for x in city.no_shows:
        out.append((T0, ORDERS, x.order_id, as_event(x)))
    for f in city.offers:
        out.append((f.made_ms, DISPATCH, f.order_id, as_event(f)))
    out.sort(key=lambda r: (r[0], r[3].data.get("seq", 0)))
    return [(topic, key, event) for _, topic, key, event in out]


async def publish(settings: Settings, records: Sequence[tuple[Topic, str, Event]]) -> None:
    bus = Bus(settings, SchemaRegistry.load(), source="polder/test")
    await bus.start()
    try:
        encoded = []
        for topic, key, event in records:
            bus.registry.validate(event)  # the real contract's events
            encoded.append((settings.topic(topic.name), key.encode(), bus.registry.encode(event)))
        await bus.send_many(encoded)
    finally:
        await bus.stop()


async def stored_counts(b: BillingInstance) -> tuple[int, ...]:
    return tuple(
        [
            await b.pool.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
            for table in ("driver_events", "orders", "offers", "order_changes", "pings")
        ]
    )


async def results(b: BillingInstance, city: City, now: datetime) -> dict[str, Any]:
    """What billing makes of the history: the ledger after closing its days, and every
    worker's segments and statement under every policy."""
    first = _at(min(c.at_ms for c in city.changes))
    last = _at(max(c.at_ms for c in city.changes))
    day = b.rt.closer.day_of(first)
    while day <= last:
        await b.rt.closer.close(day, now)
        day = b.rt.closer.day_of(day + timedelta(hours=26))
    start, end = b.rt.closer.day_of(first), b.rt.closer.day_of(last) + timedelta(days=2)
    out: dict[str, Any] = {"ledger": await ledger(b.pool)}
    for driver in sorted({c.driver_id for c in city.changes}):
        statements, segments, _ = await b.rt.statements.compute(driver, start, end, POLICIES, now)
        out[driver] = {
            "segments": segments,
            "statements": [s.to_dict() for s in statements],
        }
    return out


@pytest.mark.parametrize("seed", [3, 21])  # histories that settle trips
async def test_duplicates_reordering_and_skewed_clocks_give_the_clean_results(
    settings: Settings, infra: Infra, seed: int
) -> None:
    await assert_faults_give_the_clean_results(settings, infra, random.Random(seed))


@pytest.mark.parametrize("seed", [3, 21])
async def test_clocks_set_back_mid_shift_give_the_clean_results(
    settings: Settings, infra: Infra, seed: int
) -> None:
    """As above, and every worker's device clock goes back 5 minutes halfway through its
    pings: billing places each batch on the server's clock by its own offset."""
    engaged = await assert_faults_give_the_clean_results(
        settings, infra, random.Random(seed), set_back_ms=SET_BACK_MS
    )
    assert engaged > 0  # the pings measured distance that policies pay for: placed right


async def assert_faults_give_the_clean_results(
    settings: Settings, infra: Infra, rng: random.Random, set_back_ms: int = 0
) -> float:
    """Billing of a city's history delivered with duplicates and reordering, on skewed device
    clocks (set back mid-shift by ``set_back_ms``), equals billing of its clean delivery.
    Answers the engaged metres the statements measured."""
    city = random_city(rng, 4)
    clean_settings = isolated_settings(infra)
    await create_topics(clean_settings, embedded=True)
    clean_stream = [*history_events(city), *ping_events(city, skewed=False)]
    faulty_stream = [
        r
        for r in [*history_events(city), *ping_events(city, True, set_back_ms)]
        for _ in range(rng.randint(1, 5))
    ]
    rng.shuffle(faulty_stream)  # reordered within each worker (and across them)
    assert len(faulty_stream) > 2 * len(clean_stream)
    # The history lies in the past: keep its raw pings (billing skips pings older than
    # retention, which the retention job would only thin again).
    ten_years_h = 10 * 365 * 24.0
    clean_settings = clean_settings.model_copy(update={"raw_ping_retention_h": ten_years_h})
    settings = settings.model_copy(update={"raw_ping_retention_h": ten_years_h})
    async with billing(clean_settings) as clean, billing(settings) as faulty:
        await publish(clean_settings, clean_stream)
        await publish(settings, faulty_stream)
        pings = len([r for r in clean_stream if r[0] is DRIVER_LOCATIONS])
        wanted = (len(city.changes), len(city.orders), len(city.offers), len(city.no_shows), pings)
        for b in (clean, faulty):
            await eventually(lambda b=b: stored_counts(b), until=lambda c: c == wanted, within=90)
        now = datetime.now(UTC)
        expected = await results(clean, city, now)
        assert await results(faulty, city, now) == expected
        # and the clean history posts what the pure oracle does (top-ups aside, which closing
        # the days adds), each trip settled once
        posted = {tx: p for tx, p in expected["ledger"].items() if not p[0].startswith("topup")}
        oracle = {tx: oracle_posting(p) for tx, p in clean_postings(city.changes, city).items()}
        assert posted == oracle
        assert any(kind == "trip_settlement" for kind, _, _ in posted.values())
        for b in (clean, faulty):
            await assert_ledger_sound(b.pool)
        for driver in sorted({c.driver_id for c in city.changes}):
            assert_exclusive(expected[driver]["segments"], driver)
    return sum(
        seg.distance_m
        for driver in sorted({c.driver_id for c in city.changes})
        for seg in expected[driver]["segments"]
    )


def assert_exclusive(segments: Sequence[Segment], who: str) -> None:
    segs = sorted(segments, key=lambda s: s.start_ms)
    for a, b in zip(segs, segs[1:], strict=False):
        assert a.end_ms <= b.start_ms, (who, a, b)
