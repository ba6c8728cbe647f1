"""Load for the dispatch-latency benchmark: the drivers' app, the customers' app, and a reader
of the dispatch service's event topics.

* **Drivers** (``driver_entry``, one or more processes, each with a disjoint set of drivers):
  go online through ``POST /v1/drivers/{id}/status``; publish their positions as the location
  service does (``polder.location.pings_recorded.v1`` on ``polder.driver.locations``, one event
  per driver every ``position_interval_s``, spread evenly); hear of their offers either on the
  WebSocket feed (a sample of drivers, as the real app does) or, for the rest, from the
  ``polder.dispatch`` topic (standing in for a push notification: it arrives only after the offer
  is committed and published, like the feed's news); then, after a think time, accept, decline
  or ignore each offer (ignored ones expire), and drive an accepted trip through its four steps
  (``arrived_pickup``, ``picked_up``, ``arrived_dropoff``, ``completed``) within
  ``trip_s``, ending up idle at the drop-off (or, with ``complete_trips=False``, stay on it).
* **Customers** (``customer_entry``): ``POST /v1/orders`` with an ``Idempotency-Key``, Poisson
  arrivals at a fixed mean rate (open loop) from a pool of customers, pickups mostly near
  hotspots, drop-offs 1-8 km away.
* **Topic reader** (``TopicReader``, in the harness): every event on ``polder.orders`` and
  ``polder.dispatch`` with its envelope time (the service's clock) and the broker record's
  CreateTime (stamped by the service's producer when its outbox relay published the event).

Every answer is checked; errors are counted by route, status and code.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from typing import Any

import aiohttp
import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from loadtests._loadgen import FAILURES, Window, decode
from polder.common.auth import issue_token
from polder.common.bus import Bus
from polder.common.envelope import Event, format_time, parse_time
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DISPATCH, DRIVER_LOCATIONS, ORDERS
from polder.simulator.city import CENTRE_LAT, CENTRE_LNG, HOTSPOTS, M_PER_DEG_LAT, Point, offset

HALF_SIDE_M = 10_000.0  # 20 km x 20 km
DRIVERS_NEAR_HOTSPOTS = 0.4
PICKUPS_NEAR_HOTSPOTS = 0.7
TRIP_STEPS = ("arrived_pickup", "picked_up", "arrived_dropoff", "completed")
OFFER_MADE = "polder.dispatch.offer_made.v1"


# --- the city ---------------------------------------------------------------------------------


def clamp(p: Point) -> Point:
    """Keep a point inside the 20 km box."""
    half_lat = HALF_SIDE_M / M_PER_DEG_LAT
    half_lng = HALF_SIDE_M / (M_PER_DEG_LAT * math.cos(math.radians(CENTRE_LAT)))
    return (
        min(CENTRE_LAT + half_lat, max(CENTRE_LAT - half_lat, p[0])),
        min(CENTRE_LNG + half_lng, max(CENTRE_LNG - half_lng, p[1])),
    )


def city_point(rng: random.Random, hotspot_share: float) -> Point:
    if rng.random() < hotspot_share:
        lat, lng, spread = rng.choice(HOTSPOTS)
        return clamp(offset(lat, lng, rng.gauss(0.0, spread), rng.gauss(0.0, spread)))
    north, east = rng.uniform(-HALF_SIDE_M, HALF_SIDE_M), rng.uniform(-HALF_SIDE_M, HALF_SIDE_M)
    return offset(CENTRE_LAT, CENTRE_LNG, north, east)


def trip_from(rng: random.Random) -> tuple[Point, Point]:
    """A pickup (mostly near a hotspot) and a drop-off 1-8 km away, inside the box."""
    pickup = city_point(rng, PICKUPS_NEAR_HOTSPOTS)
    distance, bearing = rng.uniform(1_000.0, 8_000.0), rng.uniform(0.0, math.tau)
    dropoff = clamp(offset(*pickup, distance * math.cos(bearing), distance * math.sin(bearing)))
    return pickup, dropoff


# --- shared plumbing --------------------------------------------------------------------------


# How long the benchmark's own consumers (drivers learning of offers from the topic, the
# observer) let the broker hold an empty fetch. Tansu answers a fetch that finds no records only
# when this wait runs out, and each such fetch costs it CPU: at 20 ms the two consumers took
# ~0.07 core of the broker's time from the system under test (a consumer on 16 partitions polling
# every 20 ms costs Tansu 0.06-0.11 core, every 250 ms ~0.01). A fetch that finds records is
# answered at once, so under load this adds nothing to when offers are seen (measured: order→offer
# via the topic p50 / p99 787 / 1 231 ms at 20 ms, 769-780 / 1 228-1 236 ms at 200 ms).
TAIL_FETCH_MAX_WAIT_MS = 200


async def tail(bootstrap: str, topics: Sequence[str], client_id: str) -> AIOKafkaConsumer:
    """A consumer on every partition of ``topics``, positioned at their ends (no group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, client_id=client_id,
        enable_auto_commit=False, fetch_max_wait_ms=TAIL_FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    partitions: list[TopicPartition] = []
    for topic in topics:
        for _ in range(100):
            ids = consumer.partitions_for_topic(topic)
            if ids:
                break
            await consumer._client.force_metadata_update()  # noqa: SLF001
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"topic {topic} does not exist")
        partitions += [TopicPartition(topic, p) for p in sorted(ids)]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for tp in partitions:  # resolve the end offsets now, before anything is published
        await consumer.position(tp)
    return consumer


class Calls:
    """HTTP calls over at most ``connections`` keep-alive connections (one aiohttp session: about
    a seventh of httpx's client CPU per request, which matters on a box the service shares).
    Checks the status; tallies errors and, inside the measured window, latencies by route."""

    def __init__(self, base_url: str, connections: int) -> None:
        self.base_url = base_url
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None  # made on the running loop
        self._slots = asyncio.Semaphore(connections)
        self.window: Window | None = None
        self.errors: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.latencies_s: dict[str, list[float]] = defaultdict(list)
        # waits for a free connection (all busy): the load process, not the service, held it
        self.waits_s: list[float] = []

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Idle connections are dropped before the server's keep-alive timeout (uvicorn: 5 s),
            # so a request never goes out on a connection the server is closing.
            self._session = aiohttp.ClientSession(
                self.base_url,
                connector=aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=3.0),
                timeout=aiohttp.ClientTimeout(total=30.0),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def post(
        self, route: str, path: str, token: str, body: Any = None, expect: int = 200,
        headers: dict[str, str] | None = None,
    ) -> tuple[Any, float, float] | None:
        """The decoded answer and the (start, end) times, or None (counted as an error)."""
        wanted = time.time()
        async with self._slots:
            started = time.time()
            if self.window is not None and self.window.phase(started) == "window":
                self.waits_s.append(started - wanted)
            try:
                async with self._client().post(
                    path,
                    data=b"" if body is None else orjson.dumps(body),
                    headers={
                        "authorization": f"Bearer {token}",
                        "content-type": "application/json",
                        **(headers or {}),
                    },
                ) as resp:
                    status, content = resp.status, await resp.read()
            except FAILURES as exc:
                self.errors[f"{route} {type(exc).__name__}"] += 1
                return None
        done = time.time()
        self.counts[route] += 1
        if self.window is not None and self.window.phase(done) == "window":
            self.latencies_s[route].append(done - started)
        answer = decode(content)
        if status != expect:
            err = answer.get("error", {}) if isinstance(answer, dict) else {}
            code, state = err.get("code") or "unexpected body", err.get("current_state")
            detail = f" ({state})" if state else ""
            self.errors[f"{route} {status} {code}{detail}"] += 1
            return None
        return answer, started, done

    def wrong(self, route: str, what: str) -> None:
        self.errors[f"{route} {what}"] += 1

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


# --- drivers ----------------------------------------------------------------------------------


def position_event(
    bus: Bus, driver_id: str, lat: float, lng: float, recorded_at_ms: int, when: datetime
) -> Event:
    """A driver's position as the location service publishes it: one ping, received ``when``."""
    return bus.event(
        "polder.location.pings_recorded.v1",
        driver_id,
        {
            "driver_id": driver_id,
            "received_at": format_time(when),
            "pings": [{"lat": lat, "lng": lng, "recorded_at_ms": recorded_at_ms}],
        },
        when,
    )


@dataclass(frozen=True, slots=True)
class DriverPlan:
    worker: int
    base_url: str
    kafka_bootstrap: str
    driver_ids: list[str]
    feed_ids: list[str]  # the drivers (a subset) that hold a WebSocket feed
    seed: int
    position_interval_s: float
    think_s: float  # mean time to answer an offer
    trip_s: float  # accept → completed
    complete_trips: bool  # False: an accepted driver stays on the trip for the rest of the run
    decline: float  # share of offers declined
    ignore: float  # share of offers left to expire
    connections: int


@dataclass(slots=True)
class DriverReport:
    worker: int
    online: int = 0
    feeds: int = 0
    positions_published: int = 0
    offers_received: dict[str, tuple[float, str]] = field(default_factory=dict)  # id → (t, via)
    feed_offers_on_topic: dict[str, float] = field(default_factory=dict)  # feed drivers' offers
    outcomes: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: dict[str, list[float]] = field(default_factory=dict)
    connection_waits_s: list[float] = field(default_factory=list)
    fatal: str | None = None


class DriverApp:
    def __init__(self, plan: DriverPlan, settings: Settings) -> None:
        self.plan = plan
        self.settings = settings
        self.rng = random.Random(plan.seed)
        self.tokens = {d: issue_token(settings, "driver", d) for d in plan.driver_ids}
        self.feed_ids = set(plan.feed_ids)
        self.where = {d: city_point(self.rng, DRIVERS_NEAR_HOTSPOTS) for d in plan.driver_ids}
        self.last_ms = dict.fromkeys(plan.driver_ids, 0)
        self.calls = Calls(plan.base_url, plan.connections)
        self.bus = Bus(settings, SchemaRegistry.load(), source="loadtests/positions")
        self.report = DriverReport(plan.worker)
        self.tasks: set[asyncio.Task[None]] = set()
        self.sockets: list[ClientConnection] = []
        self.stopping = False

    # positions

    def _ping_event(self, driver_id: str, now: float) -> bytes:
        ms = max(int(now * 1000), self.last_ms[driver_id] + 1)
        self.last_ms[driver_id] = ms
        lat, lng = self.where[driver_id]
        when = datetime.fromtimestamp(now, UTC)
        event = position_event(self.bus, driver_id, round(lat, 7), round(lng, 7), ms, when)
        return self.bus.registry.encode(event)

    async def publish_positions(self, ids: Sequence[str]) -> None:
        topic = self.settings.topic(DRIVER_LOCATIONS.name)
        now = time.time()
        await self.bus.send_many([(topic, d.encode(), self._ping_event(d, now)) for d in ids])
        self.report.positions_published += len(ids)

    async def refresh_positions(self) -> None:
        """Every driver once per interval, in even slices; drivers drift a little meanwhile."""
        ids = list(self.plan.driver_ids)
        tick = 0.5
        per_tick = max(1, math.ceil(len(ids) * tick / self.plan.position_interval_s))
        i, next_at = 0, time.monotonic()
        while True:
            chunk = [ids[(i + j) % len(ids)] for j in range(per_tick)]
            i = (i + per_tick) % len(ids)
            for d in chunk:
                north, east = self.rng.gauss(0.0, 50.0), self.rng.gauss(0.0, 50.0)
                self.where[d] = clamp(offset(*self.where[d], north, east))
            await self.publish_positions(chunk)
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    # going online, feeds and the topic

    async def go_online(self) -> None:
        gate = asyncio.Semaphore(self.plan.connections)

        async def one(d: str) -> None:
            async with gate:
                got = await self.calls.post(
                    "status", f"/v1/drivers/{d}/status", self.tokens[d], {"status": "online"}
                )
            if got is None:
                return
            if got[0] != {"driver_id": d, "status": "idle"}:
                self.calls.wrong("status", "unexpected body")
                return
            self.report.online += 1

        await asyncio.gather(*(one(d) for d in self.plan.driver_ids))

    async def open_feeds(self) -> None:
        ws_base = self.plan.base_url.replace("http://", "ws://", 1)
        gate = asyncio.Semaphore(50)

        async def one(d: str) -> None:
            async with gate:
                ws = await connect(
                    f"{ws_base}/v1/drivers/{d}/feed?token={self.tokens[d]}",
                    compression=None, proxy=None, open_timeout=60, ping_interval=None,
                )
            self.sockets.append(ws)
            self._spawn(self.read_feed(d, ws))

        await asyncio.gather(*(one(d) for d in self.plan.feed_ids))
        self.report.feeds = len(self.sockets)

    async def read_feed(self, driver_id: str, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                t = time.time()
                msg = decode(raw)
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "offer" and isinstance(msg.get("offer"), dict):
                    self.on_offer(driver_id, msg["offer"], t, "feed")
                elif kind == "offer_closed":
                    self.report.outcomes[f"feed_closed_{msg.get('outcome')}"] += 1
                else:
                    self.calls.wrong("feed", "unexpected message")
        except ConnectionClosed:
            pass
        if not self.stopping:
            self.calls.wrong("feed", "closed by the service")

    async def read_topic(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            t = time.time()
            for records in batches.values():
                for r in records:
                    event = orjson.loads(r.value or b"{}")
                    if event.get("type") != OFFER_MADE:
                        continue
                    data = event["data"]
                    d = data["driver_id"]
                    if d in self.feed_ids:
                        self.report.feed_offers_on_topic.setdefault(data["offer_id"], t)
                    elif d in self.tokens:
                        self.on_offer(d, data, t, "topic")

    # answering offers and driving trips

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_offer(self, driver_id: str, offer: dict[str, Any], t: float, via: str) -> None:
        offer_id = str(offer.get("offer_id"))
        if offer_id in self.report.offers_received:
            return  # the feed repeats pending offers on connect; the topic is at least once
        self.report.offers_received[offer_id] = (t, via)
        self._spawn(self.answer(driver_id, offer_id, offer))

    async def answer(self, d: str, offer_id: str, offer: dict[str, Any]) -> None:
        p, rng = self.plan, self.rng
        await asyncio.sleep(rng.uniform(0.5, 1.5) * p.think_s)
        r = rng.random()
        if r < p.ignore:
            self.report.outcomes["ignored"] += 1
            return
        if r < p.ignore + p.decline:
            got = await self.calls.post("decline", f"/v1/offers/{offer_id}/decline", self.tokens[d])
            if got is not None:
                if got[0].get("status") != "declined":
                    self.calls.wrong("decline", "unexpected body")
                self.report.outcomes["declined"] += 1
            return
        got = await self.calls.post("accept", f"/v1/offers/{offer_id}/accept", self.tokens[d])
        if got is None:
            return
        if got[0].get("order_id") != offer.get("order_id") or not got[0].get("trip_id"):
            self.calls.wrong("accept", "unexpected body")
            return
        self.report.outcomes["accepted"] += 1
        if not p.complete_trips:
            return
        trip_id = got[0]["trip_id"]
        for step in TRIP_STEPS:
            await asyncio.sleep(p.trip_s / len(TRIP_STEPS))
            got = await self.calls.post(
                "trip_step", f"/v1/trips/{trip_id}/events", self.tokens[d], {"type": step}
            )
            if got is None:
                return
        if got[0].get("driver_status") != "idle" or got[0].get("order_status") != "completed":
            self.calls.wrong("trip_step", "not idle and completed after the last step")
            return
        self.report.outcomes["completed"] += 1
        dropoff = offer.get("dropoff")  # the feed's offer has it; the topic's event does not
        if isinstance(dropoff, dict):
            self.where[d] = (dropoff["lat"], dropoff["lng"])
        else:
            self.where[d] = city_point(rng, DRIVERS_NEAR_HOTSPOTS)
        await self.publish_positions([d])

    async def stop(self) -> None:
        self.stopping = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        await self.calls.close()


async def _drivers(plan: DriverPlan, out: Queue[Any], control: Queue[Any]) -> DriverReport:
    settings = Settings(kafka_bootstrap=plan.kafka_bootstrap)
    app = DriverApp(plan, settings)
    await app.bus.start()
    consumer = await tail(
        plan.kafka_bootstrap, [settings.topic(DISPATCH.name)], f"loadtests-drivers-{plan.worker}"
    )
    refresher: asyncio.Task[None] | None = None
    try:
        ids = plan.driver_ids
        for i in range(0, len(ids), 1000):
            await app.publish_positions(ids[i : i + 1000])
        refresher = asyncio.create_task(app.refresh_positions())
        await app.go_online()
        await app.open_feeds()
        topic_reader = asyncio.create_task(app.read_topic(consumer))
        out.put(("ready", plan.worker, None))
        window = await asyncio.to_thread(control.get)
        if not isinstance(window, Window):
            return app.report  # stopped before the load began
        app.calls.window = window
        stop_word = asyncio.create_task(asyncio.to_thread(control.get))
        await asyncio.wait({stop_word, topic_reader, refresher},
                           return_when=asyncio.FIRST_COMPLETED)
        for t in (topic_reader, refresher):
            if t.done() and t.exception() is not None:
                raise RuntimeError(f"driver app task failed: {t.exception()!r}")
        topic_reader.cancel()
    finally:
        if refresher is not None:
            refresher.cancel()
        await app.stop()
        await consumer.stop()
        await app.bus.stop()
    r = app.report
    r.calls, r.errors = app.calls.counts, app.calls.errors
    r.latencies_s = dict(app.calls.latencies_s)
    r.connection_waits_s = app.calls.waits_s
    return r


def driver_entry(plan: DriverPlan, out: Queue[Any], control: Queue[Any]) -> None:
    """Process entry: set up, say ready, take the Window, run until told to stop, report."""
    try:
        report = uvloop.run(_drivers(plan, out, control))
    except KeyboardInterrupt:
        return
    except Exception as exc:  # reported to the parent, which fails the run loudly
        report = DriverReport(plan.worker, fatal=f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(Exception):
        out.put(("report", plan.worker, report))


# --- customers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CustomerPlan:
    worker: int
    base_url: str
    customer_ids: list[str]
    orders_per_s: float
    connections: int
    delivery_share: float
    seed: int


@dataclass(slots=True)
class CustomerReport:
    worker: int
    # order_id → (request sent, answer received), for every order the service created
    orders: dict[str, tuple[float, float]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: dict[str, list[float]] = field(default_factory=dict)
    connection_waits_s: list[float] = field(default_factory=list)
    late_starts: int = 0  # orders sent > 50 ms after due (no connection free, or a busy loop)
    fatal: str | None = None


async def _customers(plan: CustomerPlan, out: Queue[Any], control: Queue[Any]) -> CustomerReport:
    settings = Settings()
    rng = random.Random(plan.seed)
    tokens = {c: issue_token(settings, "customer", c) for c in plan.customer_ids}
    calls = Calls(plan.base_url, plan.connections)
    report = CustomerReport(plan.worker)
    tasks: set[asyncio.Task[None]] = set()

    async def place(customer: str, body: dict[str, Any]) -> None:
        got = await calls.post("place_order", "/v1/orders", tokens[customer], body, expect=201,
                               headers={"idempotency-key": str(uuid.uuid4())})
        if got is None:
            return
        answer, started, done = got
        quote = answer.get("quote") or {}
        if (answer.get("status") != "searching" or not answer.get("order_id")
                or not {"currency", "amount_minor", "surge"} <= set(quote)):
            calls.wrong("place_order", "unexpected body")
            return
        report.orders[answer["order_id"]] = (started, done)

    try:
        out.put(("ready", plan.worker, None))
        window = await asyncio.to_thread(control.get)
        if not isinstance(window, Window):
            return report  # stopped before the load began
        calls.window = window
        # Open loop, Poisson arrivals at the rate (so orders fall at every phase of the batch
        # cycle), whatever the answers to earlier ones; an order starts late (counted) only when
        # every connection is busy or this process cannot keep up.
        gate = asyncio.Semaphore(plan.connections)
        due = window.start
        while True:
            due += rng.expovariate(plan.orders_per_s)
            await asyncio.sleep(max(0.0, due - time.time()))
            await gate.acquire()
            now = time.time()
            if now > window.measure_to:
                gate.release()
                break
            report.late_starts += now - due > 0.05
            pickup, dropoff = trip_from(rng)
            body = {
                "kind": "delivery" if rng.random() < plan.delivery_share else "ride",
                "pickup": {"lat": round(pickup[0], 6), "lng": round(pickup[1], 6)},
                "dropoff": {"lat": round(dropoff[0], 6), "lng": round(dropoff[1], 6)},
            }
            task = asyncio.create_task(place(rng.choice(plan.customer_ids), body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: gate.release())
        await asyncio.gather(*tasks)
    finally:
        await calls.close()
    report.calls, report.errors = calls.counts, calls.errors
    report.latencies_s = dict(calls.latencies_s)
    report.connection_waits_s = calls.waits_s
    return report


def customer_entry(plan: CustomerPlan, out: Queue[Any], control: Queue[Any]) -> None:
    try:
        report = uvloop.run(_customers(plan, out, control))
    except KeyboardInterrupt:
        return
    except Exception as exc:
        report = CustomerReport(plan.worker, fatal=f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(Exception):
        out.put(("report", plan.worker, report))


# --- the service's events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Offer:
    offer_id: str
    order_id: str
    driver_id: str
    at: float  # envelope time: when the batch part that made it began writing (after the solve)
    published: float  # record CreateTime: when the outbox relay handed it to the producer
    batch_id: str


@dataclass(slots=True)
class TopicReader:
    """Every order and offer event the dispatch service publishes, with its server times."""

    placed: dict[str, float] = field(default_factory=dict)  # order_id → envelope time
    offers: list[Offer] = field(default_factory=list)
    resolved: dict[str, tuple[str, float]] = field(default_factory=dict)  # offer → outcome, t
    assigned: dict[str, float] = field(default_factory=dict)
    expired: dict[str, float] = field(default_factory=dict)
    completed: dict[str, float] = field(default_factory=dict)
    records: int = 0
    not_create_time: int = 0

    async def run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batches.values():
                for r in records:
                    self.records += 1
                    self.not_create_time += r.timestamp_type != 0
                    self.add(orjson.loads(r.value or b"{}"), r.timestamp / 1000)

    def add(self, event: dict[str, Any], record_ts: float) -> None:
        kind, data = event.get("type"), event.get("data") or {}
        at = parse_time(event["time"]).timestamp()
        if kind == "polder.order.placed.v1":
            self.placed.setdefault(data["order_id"], at)
        elif kind == OFFER_MADE:
            self.offers.append(Offer(data["offer_id"], data["order_id"], data["driver_id"], at,
                                     record_ts, data["batch_id"]))
        elif kind == "polder.dispatch.offer_resolved.v1":
            self.resolved.setdefault(data["offer_id"], (data["outcome"], at))
        elif kind == "polder.order.status_changed.v1":
            target = {"assigned": self.assigned, "expired": self.expired,
                      "completed": self.completed}.get(data["to"])
            if target is not None:
                target.setdefault(data["order_id"], at)

    def first_offers(self) -> dict[str, Offer]:
        """Each order's first offer (the earliest envelope time)."""
        first: dict[str, Offer] = {}
        for o in self.offers:
            if o.order_id not in first or o.at < first[o.order_id].at:
                first[o.order_id] = o
        return first


async def topic_reader(settings: Settings) -> tuple[TopicReader, AIOKafkaConsumer]:
    topics = [settings.topic(ORDERS.name), settings.topic(DISPATCH.name)]
    return TopicReader(), await tail(settings.kafka_bootstrap, topics, "loadtests-observer")
