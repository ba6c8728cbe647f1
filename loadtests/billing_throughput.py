"""Billing consumer throughput: a city's pre-produced event history, consumed as fast as it goes.

    python -m loadtests.billing_throughput [--drivers 1000] [--hours 1.0] [--ping-every 8]
                                           [--pings-per-event 2] [--duplicates 0.01] [--seed 5]

Starts its own embedded Postgres and Tansu broker (``loadtests._system``), then, **before billing
runs**, produces a seeded, schema-validated stream: every worker's shift (online, offers declined
or accepted, full trip lifecycles, breaks, offline) on ``polder.driver.events``, the matching order
events on ``polder.orders`` and the app's location batches on ``polder.driver.locations`` (one
event per ``--ping-every`` seconds online, ``--pings-per-event`` pings each), plus a share of
redelivered driver and order events (at-least-once delivery). Then it starts
``python -m polder serve billing`` as its own process and reads ``/metrics`` every 0.1 s:

* events/s from the first event processed to the last (``polder_events_consumed_total`` of both
  billing consumers), for the whole stream and for the ``billing`` consumer of driver, order
  and dispatch events on its own (the ``billing-pings`` consumer keeps the pings);
* consumer lag at the end, CPU cores used by billing, the broker, Postgres, the harness and
  "anything else" on the box over the same interval;
* checks on the database: every stored fact once, every completed trip settled exactly once,
  every ledger transaction balanced per currency, no duplicate posting.

Writes ``loadtests/results/<out>.json``; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from loadtests import _system
from loadtests._report import fmt, table, write_result
from loadtests._stats import Scrape, cpu_snapshot, pids_matching
from polder.common.bus import Bus
from polder.common.envelope import Event, format_time
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DISPATCH, DRIVER_EVENTS, DRIVER_LOCATIONS, ORDERS, Topic
from polder.runtime.up import System

CENTRE = (52.37, 4.89)
CONSUMED = "polder_events_consumed_total"


@dataclass(frozen=True, slots=True)
class Options:
    drivers: int
    hours: float
    ping_every_s: float
    pings_per_event: int
    duplicates: float
    delivery_share: float
    seed: int
    timeout_s: float
    profile: str | None
    out: str


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtests.billing_throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drivers", type=int, default=1000, help="workers with a shift in the stream")
    p.add_argument("--hours", type=float, default=1.0, help="length of each worker's shift")
    p.add_argument("--ping-every", type=float, default=8.0,
                   help="seconds between a worker's location events while online (the app batches)")
    p.add_argument("--pings-per-event", type=int, default=2, help="pings in one location event")
    p.add_argument("--duplicates", type=float, default=0.01,
                   help="share of driver and order events delivered a second time")
    p.add_argument("--delivery-share", type=float, default=0.2, help="share of deliveries")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--timeout", type=float, default=300.0,
                   help="give up if billing has not consumed everything after this many seconds")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="record billing with py-spy (raw, non-blocking) while it consumes")
    p.add_argument("--out", default="billing_throughput")
    a = p.parse_args(argv)
    if a.drivers < 1 or a.hours <= 0 or a.ping_every <= 0 or a.pings_per_event < 1:
        p.error("drivers, hours, --ping-every and --pings-per-event must be positive")
    return Options(a.drivers, a.hours, a.ping_every, a.pings_per_event, a.duplicates,
                   a.delivery_share, a.seed, a.timeout, a.profile, a.out)


# ---------------------------------------------------------------------------------------------
# The stream: a seeded city


@dataclass(slots=True)
class Stream:
    records: list[tuple[Topic, str, Event]] = field(default_factory=list)
    driver_events: int = 0
    orders: int = 0
    order_changes: int = 0
    location_events: int = 0
    pings: int = 0
    duplicates: int = 0
    dispatch_events: int = 0  # offer_made and offer_resolved (polder.dispatch)
    completed_trips: set[str] = field(default_factory=set)
    fee_cancellations: set[str] = field(default_factory=set)  # customer paid for cancelling

    @property
    def event_records(self) -> int:
        """Records for the ``billing`` consumer (driver, order and dispatch topics)."""
        return len(self.records) - self.location_events


class Worker:
    """One worker's shift, written as the events dispatch and the location service publish."""

    def __init__(self, rng: random.Random, stream: Stream, driver: str, start: datetime) -> None:
        self.rng, self.stream, self.driver = rng, stream, driver
        self.seq = 0
        self.shifts: list[tuple[datetime, datetime]] = []  # (went online, went offline)
        self.state = "offline"
        self.t = start
        self.lat = CENTRE[0] + rng.uniform(-0.08, 0.08)
        self.lng = CENTRE[1] + rng.uniform(-0.12, 0.12)

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def event(self, topic: Topic, key: str, type_: str, data: dict[str, Any]) -> None:
        e = Event(type=type_, source="polder/loadtest", subject=key, data=data, id=self.uid(),
                  time=self.t)
        self.stream.records.append((topic, key, e))

    def change(self, to: str, cause: str, **ids: Any) -> None:
        self.seq += 1
        data = {"driver_id": self.driver, "seq": self.seq, "from": self.state, "to": to,
                "cause": cause, **ids}
        self.event(DRIVER_EVENTS, self.driver, "polder.driver.state_changed.v1", data)
        self.stream.driver_events += 1
        self.state = to

    def order_change(self, order: str, from_: str, to: str, cause: str, **more: Any) -> None:
        data = {"order_id": order, "from": from_, "to": to, "cause": cause, **more}
        self.event(ORDERS, order, "polder.order.status_changed.v1", data)
        self.stream.order_changes += 1

    def wait(self, seconds: float) -> None:
        """Time passes; the app sends its location batches meanwhile."""
        end = self.t + timedelta(seconds=seconds)
        step = timedelta(seconds=self.stream_ping_every)
        nxt = self.t + step
        while nxt < end:
            self.t = nxt
            self.locations()
            nxt += step
        self.t = end

    stream_ping_every: float = 10.0
    pings_per_event: int = 2

    def locations(self) -> None:
        pings = []
        gap_ms = int(self.stream_ping_every * 1000 / self.pings_per_event)
        t_ms = int(self.t.timestamp() * 1000)
        for i in range(self.pings_per_event):
            self.lat += self.rng.gauss(0, 0.0002)
            self.lng += self.rng.gauss(0, 0.0003)
            pings.append({"lat": round(self.lat, 6), "lng": round(self.lng, 6),
                          "recorded_at_ms": t_ms - (self.pings_per_event - 1 - i) * gap_ms,
                          "accuracy_m": round(self.rng.uniform(3, 15), 1)})
        data = {"driver_id": self.driver, "received_at": format_time(self.t), "pings": pings}
        self.event(DRIVER_LOCATIONS, self.driver, "polder.location.pings_recorded.v1", data)
        self.stream.location_events += 1
        self.stream.pings += len(pings)

    def shift(self, end: datetime, delivery_share: float) -> None:
        """Online now, offers and trips until ``end``, then offline."""
        rng = self.rng
        online_at = self.t
        self.change("idle", "went_online")
        while self.t < end:
            self.wait(rng.expovariate(1 / 180))  # idle until the next offer
            if rng.random() < 0.04:
                self.change("break", "took_break")
                self.wait(rng.uniform(300, 900))
                self.change("idle", "went_online")
                continue
            self.offer(delivery_share)
        self.change("offline", "went_offline")
        self.shifts.append((online_at, self.t))

    def offer(self, delivery_share: float) -> None:
        rng = self.rng
        kind = "delivery" if rng.random() < delivery_share else "ride"
        order, offer = self.uid(), self.uid()
        placed = self.t - timedelta(seconds=rng.uniform(3, 30))
        ready = placed + timedelta(seconds=rng.uniform(300, 900)) if kind == "delivery" else None
        distance = rng.uniform(1500, 9000)
        t, self.t = self.t, placed
        self.event(ORDERS, order, "polder.order.placed.v1", {
            "order_id": order, "customer_id": f"cust-{rng.randrange(20_000):05d}", "kind": kind,
            "city": "amsterdam",
            "pickup": {"lat": round(self.lat, 6), "lng": round(self.lng, 6)},
            "dropoff": {"lat": round(self.lat + 0.02, 6), "lng": round(self.lng + 0.02, 6)},
            "ready_at": format_time(ready) if ready else None, "scheduled_for": None,
            "quote": {"currency": "EUR", "amount_minor": int(300 + distance * 0.2),
                      "surge": rng.choice(["1.0", "1.0", "1.0", "1.2", "1.5"]),
                      "distance_m": round(distance, 1), "duration_s": round(distance / 8.3, 1)},
        })
        self.stream.orders += 1
        self.t = t
        ids = {"order_id": order, "offer_id": offer, "kind": kind}
        self.order_change(order, "searching", "offered", "offer_sent", driver_id=self.driver,
                          offer_id=offer)
        self.change("offered", "offer_sent", **ids)
        en_route_s = rng.uniform(120, 480)
        eta_s = round(en_route_s * rng.uniform(0.6, 1.3))  # dispatch's promise, never exact
        self.event(DISPATCH, order, "polder.dispatch.offer_made.v1", {
            "offer_id": offer, "order_id": order, "driver_id": self.driver,
            "expires_at": format_time(self.t + timedelta(seconds=15)), "pickup_eta_s": eta_s,
            "pickup_distance_m": round(en_route_s * 8.3, 1),
            "estimated_pay": {"currency": "EUR", "amount_minor": int(250 + distance * 0.15)},
            "batch_id": self.uid(),
        })
        self.stream.dispatch_events += 1
        self.wait(rng.uniform(3, 15))
        if rng.random() < 0.1:
            self.change("idle", "offer_declined", **ids)
            self.order_change(order, "offered", "searching", "offer_declined",
                              driver_id=self.driver, offer_id=offer)
            self.resolved(order, offer, "declined", None)
            return
        trip = self.uid()
        ids["trip_id"] = trip
        more = {"driver_id": self.driver, "trip_id": trip, "offer_id": offer}
        self.change("en_route_pickup", "offer_accepted", **ids)
        self.order_change(order, "offered", "assigned", "offer_accepted", **more)
        self.resolved(order, offer, "accepted", trip)
        if rng.random() < 0.03:  # the customer cancels while the driver is on the way
            since = rng.uniform(30, en_route_s)
            self.wait(since)
            self.change("idle", "cancelled_by_customer", **ids)
            self.order_change(order, "assigned", "cancelled", "cancelled_by_customer", **more)
            # tariffs.json amsterdam: a fee after 120 s, unless later than the ETA + 300 s
            if since > 120 and since <= eta_s + 300:
                self.stream.fee_cancellations.add(trip)
            return
        self.wait(en_route_s)
        self.change("at_pickup", "arrived_pickup", **ids)
        self.order_change(order, "assigned", "driver_arrived", "arrived_pickup", **more)
        self.wait(rng.uniform(20, 300))
        self.change("on_trip", "picked_up", **ids)
        self.order_change(order, "driver_arrived", "in_progress", "picked_up", **more)
        self.wait(distance / 8.3)
        self.change("at_dropoff", "arrived_dropoff", **ids)
        self.wait(rng.uniform(20, 120))
        self.change("idle", "completed", **ids)
        self.order_change(order, "in_progress", "completed", "completed", **more)
        self.stream.completed_trips.add(trip)

    def resolved(self, order: str, offer: str, outcome: str, trip: str | None) -> None:
        self.event(DISPATCH, order, "polder.dispatch.offer_resolved.v1", {
            "offer_id": offer, "order_id": order, "driver_id": self.driver, "outcome": outcome,
            "trip_id": trip,
        })
        self.stream.dispatch_events += 1


def build_stream(opts: Options, now: datetime) -> Stream:
    """Every worker's shift ends before ``now`` (server times in the past, as in a replay)."""
    rng = random.Random(opts.seed)
    stream = Stream()
    Worker.stream_ping_every = opts.ping_every_s
    Worker.pings_per_event = opts.pings_per_event
    shift = timedelta(hours=opts.hours)
    first = now - shift - timedelta(minutes=40)
    for i in range(opts.drivers):
        start = first + timedelta(seconds=rng.uniform(0, 600))
        Worker(rng, stream, f"drv-{i:05d}", start).shift(start + shift, opts.delivery_share)
    return in_broker_order(stream, rng, opts.duplicates)


def in_broker_order(stream: Stream, rng: random.Random, duplicates: float) -> Stream:
    """The records as the broker would hold them: in time order (each key keeps its own
    order); a share of driver and order events is delivered again up to ten minutes later
    (at-least-once)."""
    keyed = [(r[2].time, r) for r in stream.records]
    redelivered = [(r[2].time + timedelta(seconds=rng.uniform(0, 600)), r) for r in stream.records
                   if r[0] is not DRIVER_LOCATIONS and rng.random() < duplicates]
    keyed += redelivered
    keyed.sort(key=lambda k: k[0])
    stream.records = [r for _, r in keyed]
    stream.duplicates = len(redelivered)
    return stream


async def produce(settings: Settings, stream: Stream) -> float:
    bus = Bus(settings, SchemaRegistry.load(), source="polder/loadtest")
    await bus.start()
    started = time.monotonic()
    try:
        chunk: list[tuple[str, bytes, bytes]] = []
        for topic, key, event in stream.records:
            chunk.append((settings.topic(topic.name), key.encode(), bus.registry.encode(event)))
            if len(chunk) >= 5000:
                await bus.send_many(chunk)
                chunk = []
        await bus.send_many(chunk)
    finally:
        await bus.stop()
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# Infrastructure: the stream goes in before billing starts


@contextmanager
def infrastructure() -> Iterator[tuple[System, Settings, Path]]:
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="polder-bench-"))
    ports = {"broker_port": _system.free_port(_system.HOST),
             "billing_port": _system.free_port(_system.HOST)}
    system = System(Settings(data_dir=tmp, host=_system.HOST, **ports))
    try:
        yield system, _system._start_infrastructure(system), tmp  # noqa: SLF001
    finally:
        system.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def start_billing(system: System, settings: Settings, tmp: Path) -> _system.RunningService:
    port = settings.port_of("billing")
    log_path = tmp / "billing.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "polder", "serve", "billing", "--port", str(port)],
            # The histories lie in the past: billing must keep their raw pings (it skips pings
            # older than retention, which its retention job would only thin again).
            env=_system._service_env(  # noqa: SLF001
                settings, 1000.0, 1000, {"POLDER_RAW_PING_RETENTION_H": str(10 * 365 * 24)}
            ),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    system.processes["billing"] = proc
    return _system.RunningService(settings, f"http://{_system.HOST}:{port}", proc.pid, log_path,
                                  tmp)


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass(slots=True)
class Measured:
    first_at: float = math.nan  # first scrape that saw an event consumed
    first_count: float = 0.0
    first_events: float = 0.0
    last_at: float = math.nan  # first scrape that saw every event consumed
    events_last_at: float = math.nan  # ... every driver and order event
    started_at: float = math.nan
    cpu: dict[str, float] = field(default_factory=dict)
    final: Scrape | None = None
    timeline: list[tuple[float, float, float]] = field(default_factory=list)


async def measure(svc: _system.RunningService, total: int, events_total: int,
                  timeout_s: float) -> Measured:
    m = Measured(started_at=time.time())
    groups: dict[str, list[int]] = {}
    cpu0: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                resp = await client.get(f"{svc.base_url}/metrics")
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
                continue
            s = Scrape.parse(time.time(), resp.text)
            consumed = s.total(CONSUMED, consumer="billing") + s.total(
                CONSUMED, consumer="billing-pings")
            events = s.total(CONSUMED, consumer="billing")
            m.timeline.append((s.at - m.started_at, consumed, events))
            if consumed > 0 and math.isnan(m.first_at):
                m.first_at, m.first_count, m.first_events = s.at, consumed, events
                # now that billing's pool is open, its Postgres backends exist to be counted
                groups = {
                    "billing": [svc.pid],
                    "broker": pids_matching(f"tcp://{svc.settings.kafka_bootstrap}"),
                    "postgres": pids_matching(str(svc.pgdata)),
                    "harness": [os.getpid()],
                }
                cpu0 = cpu_snapshot(groups)
            if events >= events_total and math.isnan(m.events_last_at):
                m.events_last_at = s.at
            if consumed >= total:
                m.last_at = s.at
                cpu1 = cpu_snapshot(groups)
                span = max(m.last_at - m.first_at, 1e-9)
                m.cpu = {k: (cpu1[k] - cpu0[k]) / span for k in cpu1}
                m.cpu["other"] = m.cpu["box"] - sum(v for k, v in m.cpu.items() if k != "box")
                await asyncio.sleep(1.5)  # the lag gauge is refreshed once a second
                resp = await client.get(f"{svc.base_url}/metrics")
                m.final = Scrape.parse(time.time(), resp.text)
                return m
            await asyncio.sleep(0.1)
    raise TimeoutError(f"billing consumed {consumed:.0f} of {total} events in {timeout_s:.0f} s")


async def check(settings: Settings, stream: Stream) -> dict[str, Any]:
    conn = await asyncpg.connect(settings.database_url,
                                 server_settings={"search_path": settings.db_schema("billing")})
    try:
        async def one(sql: str) -> Any:
            return await conn.fetchval(sql)

        settled = await conn.fetch(
            "SELECT trip_id::text AS trip_id, count(*) AS n FROM ledger_transactions "
            "WHERE kind = 'trip_settlement' GROUP BY trip_id")
        counts = {r["trip_id"]: r["n"] for r in settled}
        found = {
            "driver_events": await one("SELECT count(*) FROM driver_events"),
            "orders": await one("SELECT count(*) FROM orders"),
            "order_changes": await one("SELECT count(*) FROM order_changes"),
            "pings_kept": await one("SELECT count(*) FROM pings"),
            "ledger_transactions": await one("SELECT count(*) FROM ledger_transactions"),
            "ledger_entries": await one("SELECT count(*) FROM ledger_entries"),
            "unbalanced_transactions": await one(
                "SELECT count(*) FROM (SELECT 1 FROM ledger_entries GROUP BY tx_id, currency "
                "HAVING sum(amount_minor) <> 0) u"),
            "outbox_rows": await one("SELECT count(*) FROM outbox"),
        }
    finally:
        await conn.close()
    checks = {
        "every driver event stored once": found["driver_events"] == stream.driver_events,
        "every order stored once": found["orders"] == stream.orders,
        "every order change stored once": found["order_changes"] == stream.order_changes,
        "every completed trip and fee-paying cancellation settled": set(counts)
        == stream.completed_trips | stream.fee_cancellations,
        "no trip settled twice": all(n == 1 for n in counts.values()),
        "every ledger transaction balanced": found["unbalanced_transactions"] == 0,
        "one outbox event per posting": found["outbox_rows"] == found["ledger_transactions"],
        "pings kept (thinned, none lost)": 0 < found["pings_kept"] <= stream.pings
        if stream.pings
        else found["pings_kept"] == 0,
    }
    return {"found": found, "checks": checks}


# ---------------------------------------------------------------------------------------------


def summarise(opts: Options, stream: Stream, produce_s: float, m: Measured,
              db: dict[str, Any]) -> dict[str, Any]:
    total = len(stream.records)
    span = m.last_at - m.first_at
    events_total = stream.event_records
    events_span = m.events_last_at - m.first_at
    final = m.final
    lag = final.total("polder_consumer_lag_records") if final else math.nan
    postings = final.total("polder_billing_ledger_postings_total") if final else math.nan
    return {
        "options": {k: getattr(opts, k) for k in opts.__dataclass_fields__
                    if k not in ("out", "profile")},
        "stream": {
            "records": total,
            "driver_events": stream.driver_events,
            "orders_placed": stream.orders,
            "order_changes": stream.order_changes,
            "dispatch_events": stream.dispatch_events,
            "location_events": stream.location_events,
            "pings": stream.pings,
            "redelivered": stream.duplicates,
            "completed_trips": len(stream.completed_trips),
            "fee_cancellations": len(stream.fee_cancellations),
            "produce_s": produce_s,
        },
        "throughput": {
            "events_per_s": (total - m.first_count) / span if span > 0 else math.nan,
            "first_to_last_s": span,
            "driver_order_events_per_s": (events_total - m.first_events) / events_span
            if events_span > 0 else math.nan,
            "driver_order_first_to_last_s": events_span,
            "startup_to_first_s": m.first_at - m.started_at,
            "scrape_resolution_s": 0.1,
            "lag_at_end": lag,
            "postings": postings,
        },
        "cpu_cores": m.cpu,
        # CPU seconds per 1 000 records: what the work costs, less sensitive than events/s to
        # other work on a shared box
        "cpu_s_per_1000": {
            k: m.cpu[k] * span * 1000 / (total - m.first_count)
            for k in ("billing", "postgres", "broker")
            if k in m.cpu and span > 0
        },
        "timeline": m.timeline,
        **db,
    }


def render(doc: dict[str, Any]) -> str:
    s, t, c, f = doc["stream"], doc["throughput"], doc["cpu_cores"], doc["found"]
    rows = [
        ("records in the stream", f"{s['records']:,}"),
        ("  driver events / orders / order changes / offers",
         f"{s['driver_events']:,} / {s['orders_placed']:,} / {s['order_changes']:,} / "
         f"{s['dispatch_events']:,}"),
        ("  location events (pings)", f"{s['location_events']:,} ({s['pings']:,})"),
        ("  redelivered driver/order events", f"{s['redelivered']:,}"),
        ("billing events/s, first → last processed", fmt(t["events_per_s"], "", 0)),
        ("  over", fmt(t["first_to_last_s"], " s", 2)),
        ("  driver/order/dispatch consumer, events/s", fmt(t["driver_order_events_per_s"], "", 0)),
        ("start → first event processed", fmt(t["startup_to_first_s"], " s", 1)),
        ("consumer lag at the end", fmt(t["lag_at_end"], "", 0)),
        (
            "completed trips + paid cancellations / postings",
            f"{s['completed_trips']:,} + {s['fee_cancellations']:,} / {t['postings']:,.0f}",
        ),
        ("pings kept (thinned)", f"{f['pings_kept']:,}"),
        ("CPU cores: billing / broker / postgres",
         f"{c.get('billing', 0):.2f} / {c.get('broker', 0):.2f} / {c.get('postgres', 0):.2f}"),
        ("CPU cores: harness / box / anything else",
         f"{c.get('harness', 0):.2f} / {c.get('box', 0):.2f} / {c.get('other', 0):.2f}"),
    ]
    per = doc["cpu_s_per_1000"]
    rows.append(
        (
            "CPU s per 1 000 records: billing / postgres",
            f"{per.get('billing', math.nan):.3f} / {per.get('postgres', math.nan):.3f}",
        )
    )
    rows += [(f"check: {k}", "ok" if v else "FAILED") for k, v in doc["checks"].items()]
    return table("Billing consumer throughput (target ≥ 25 000 events/s)", rows)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = "python -m loadtests.billing_throughput " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    _system.stop_on_sigterm()
    print(f"Machine: {_system.describe_machine('billing')}", flush=True)
    stream = build_stream(opts, datetime.now(UTC))
    print(f"stream: {len(stream.records):,} records for {opts.drivers} workers", flush=True)
    with infrastructure() as (system, settings, tmp):
        produce_s = asyncio.run(produce(settings, stream))
        print(f"produced in {produce_s:.1f} s; starting billing", flush=True)
        svc = start_billing(system, settings, tmp)
        profiler = None
        if opts.profile:
            py_spy = Path(sys.executable).with_name("py-spy")
            profiler = subprocess.Popen(
                [str(py_spy), "record", "-p", str(svc.pid), "-d", "60", "--format", "raw",
                 "--nonblocking", "-o", opts.profile],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        events_total = stream.event_records
        try:
            m = asyncio.run(measure(svc, len(stream.records), events_total, opts.timeout_s))
        except TimeoutError:
            print(_system._log_tail(svc.log_path), file=sys.stderr)  # noqa: SLF001
            raise
        if profiler is not None:
            profiler.send_signal(2)  # SIGINT: py-spy writes what it has
            profiler.wait(30)
        db = asyncio.run(check(settings, stream))
    doc = summarise(opts, stream, produce_s, m, db)
    print("\n" + render(doc) + "\n", flush=True)
    print(f"wrote {write_result(opts.out, command.strip(), doc)}", flush=True)
    return 0 if all(doc["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
