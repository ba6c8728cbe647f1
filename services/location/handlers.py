"""Location handlers: screen → publish for ingest; apply to the index; store traces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import orjson

from polder.common.bus import Bus, Received
from polder.common.db import Pool
from polder.common.envelope import format_time, parse_time
from polder.common.geoindex import LocationIndex
from polder.common.positions import apply_pings
from polder.common.service import Resources
from polder.common.settings import Settings
from polder.common.topics import DRIVER_LOCATIONS
from polder.location.domain.pings import Fix, Limits, PingLike, Screened, SetBack, screen_batch
from polder.location.domain.status import DriverStatuses, StatusChange, newest
from polder.location.metrics import LocationMetrics

PINGS_RECORDED = "polder.location.pings_recorded.v1"
TRACE_CONSUMER = "location-traces"
STATUS_CONSUMER = "location-driver-status"
STATE_CHANGED = "polder.driver.state_changed.v1"


class DriverOffline(Exception):  # noqa: N818 (a refusal, not a fault)
    """The driver is not on shift: none of its pings are taken."""

    def __init__(self, driver_id: str) -> None:
        super().__init__(f"driver {driver_id} is offline")
        self.driver_id = driver_id


class Ingest:
    """Screens a driver's pings and publishes the accepted ones as one event."""

    def __init__(
        self,
        bus: Bus,
        index: LocationIndex,
        limits: Limits,
        metrics: LocationMetrics,
        statuses: DriverStatuses,
        publish_timeout_s: float = 3.0,
    ) -> None:
        self.bus = bus
        self.statuses = statuses
        # How long a request waits for the broker to acknowledge its pings before the driver
        # is told 503 "retry": a broker that is down must not hold requests for the
        # producer's own 15 s timeout.
        self.publish_timeout_s = publish_timeout_s
        self.index = index
        self.limits = limits
        self.metrics = metrics
        self.resolution = index.resolution
        # Last accepted fix per driver as this process published it, with the server time it
        # was received (epoch s); the index may lag behind it.
        self._last: dict[str, tuple[Fix, float]] = {}
        # A batch refused whole as stale, per driver, until one is accepted: maybe the first
        # from a clock set back (``after_stale``).
        self._set_back: dict[str, SetBack] = {}

    def last_fix(self, driver_id: str) -> tuple[Fix, float] | None:
        """The driver's last accepted fix and when it was received: this process's, or the
        index's when that was received later (another replica took a newer batch). Compared by
        the server's time: a device clock set back makes a newer fix look older."""
        mine = self._last.get(driver_id)
        indexed = self.index.get(driver_id)
        if indexed is None:
            return mine
        if mine is None or indexed.seen_at > mine[1]:
            recorded = datetime.fromtimestamp(indexed.recorded_at, UTC)
            return Fix(indexed.lat, indexed.lng, recorded), indexed.seen_at
        return mine

    async def __call__(self, driver_id: str, pings: Sequence[PingLike], now: datetime) -> Screened:
        if not self.statuses.on_shift(driver_id):
            self.metrics.pings_rejected.labels("driver_offline").inc(len(pings))
            raise DriverOffline(driver_id)
        known = self.last_fix(driver_id)
        last, last_at = known if known is not None else (None, 0.0)
        result, remembered = screen_batch(
            pings, last, last_at, self._set_back.get(driver_id), now, self.limits
        )
        self.metrics.batch_size.observe(len(pings))
        for _, reason in result.rejected:
            self.metrics.pings_rejected.labels(reason.value).inc()
        if result.accepted:
            event = self.bus.event(
                PINGS_RECORDED,
                subject=driver_id,
                data={
                    "driver_id": driver_id,
                    "received_at": format_time(now),
                    "pings": [
                        _ping_doc(p, ms)
                        for (_, p), ms in zip(result.accepted, result.accepted_ms, strict=True)
                    ],
                },
                time=now,
            )
            await asyncio.wait_for(
                self.bus.publish(DRIVER_LOCATIONS, driver_id, event), self.publish_timeout_s
            )
            self.metrics.pings_accepted.inc(len(result.accepted))
            if result.clock_set_back:
                self.metrics.clocks_set_back.inc()
            assert result.last is not None
            self._last[driver_id] = (result.last, now.timestamp())
        if remembered is None:
            self._set_back.pop(driver_id, None)
        else:
            self._set_back[driver_id] = remembered
        return result

    def forget_expired(self) -> None:
        """Drop fixes of drivers the index no longer holds, so the maps stay bounded."""
        for driver_id in [d for d in self._last if self.index.get(d) is None]:
            _, received = self._last[driver_id]
            if time.time() - received > self.index.ttl_s:
                del self._last[driver_id]
                self._set_back.pop(driver_id, None)


def _ping_doc(p: PingLike, recorded_at_ms: int) -> dict[str, object]:
    # recorded_at as epoch ms: a tenth of the cost of an RFC 3339 string, to write and to read
    doc: dict[str, object] = {"lat": p.lat, "lng": p.lng, "recorded_at_ms": recorded_at_ms}
    if p.accuracy_m is not None:
        doc["accuracy_m"] = p.accuracy_m
    if p.speed_mps is not None:
        doc["speed_mps"] = p.speed_mps
    if p.heading_deg is not None:
        doc["heading_deg"] = p.heading_deg
    return doc


class IndexUpdater:
    """Applies recorded pings to the in-memory index (consumer handler)."""

    def __init__(self, index: LocationIndex, metrics: LocationMetrics) -> None:
        self.index = index
        self.metrics = metrics

    async def __call__(self, records: Sequence[Received]) -> None:
        now = time.time()
        for seen_at in apply_pings(self.index, records):
            self.metrics.ping_to_index.observe(max(0.0, now - seen_at))
        self.metrics.indexed_drivers.set(len(self.index))


def _change(r: Received) -> StatusChange:
    data = r.event.data
    return StatusChange(data["driver_id"], data["seq"], data["to"])


class StatusFollower:
    """Keeps this replica's map of who is on shift (a consumer of every partition)."""

    def __init__(self, statuses: DriverStatuses, metrics: LocationMetrics) -> None:
        self.statuses = statuses
        self.metrics = metrics

    async def __call__(self, records: Sequence[Received]) -> None:
        for r in records:
            if r.event.type == STATE_CHANGED:
                self.statuses.apply(_change(r))
        self.metrics.drivers_on_shift.set(len(self.statuses))

    async def load(self, pool: Pool) -> Mapping[tuple[str, int], int]:
        """Load ``driver_status`` and return the offsets it is complete to, from one snapshot:
        following the topic from there misses nothing and what it sees twice is ignored."""
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            rows = await conn.fetch("SELECT driver_id, seq, status FROM driver_status")
            offsets = await conn.fetch(
                "SELECT topic, partition, next_offset FROM driver_status_offsets"
            )
        self.statuses.load(StatusChange(r["driver_id"], r["seq"], r["status"]) for r in rows)
        self.metrics.drivers_on_shift.set(len(self.statuses))
        return {(r["topic"], r["partition"]): r["next_offset"] for r in offsets}


class StatusWriter:
    """Stores the newest state of every driver and how far the table is complete, in one
    transaction (one consumer group across replicas). Idempotent: a row only moves forward."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def __call__(self, records: Sequence[Received]) -> None:
        changes = {_change(r): r for r in records if r.event.type == STATE_CHANGED}
        kept = newest(changes)
        ends: dict[tuple[str, int], int] = {}
        for r in records:
            ends[(r.topic, r.partition)] = max(ends.get((r.topic, r.partition), 0), r.offset + 1)
        async with self.pool.acquire() as conn, conn.transaction():
            if kept:
                await conn.execute(
                    "INSERT INTO driver_status AS s (driver_id, seq, status, changed_at) "
                    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], "
                    "$4::timestamptz[]) "
                    "ON CONFLICT (driver_id) DO UPDATE SET seq = EXCLUDED.seq, "
                    "status = EXCLUDED.status, changed_at = EXCLUDED.changed_at "
                    "WHERE s.seq < EXCLUDED.seq",
                    [c.driver_id for c in kept],
                    [c.seq for c in kept],
                    [c.status for c in kept],
                    [changes[c].event.time for c in kept],
                )
            await conn.execute(
                "INSERT INTO driver_status_offsets (topic, partition, next_offset) "
                "SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[]) "
                # not GREATEST: going back only makes a replica read some events twice, and a
                # log that started over (a new embedded broker) is followed from the start
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                [t for t, _ in ends],
                [p for _, p in ends],
                list(ends.values()),
            )


class TraceWriter:
    """Stores each recorded batch as published, once: one ``trace_batches`` row per event
    (an event id seen before writes nothing, so replays and redeliveries are harmless). The
    ``pings`` view shows one row per (driver, recorded_at), so a ping sent again in another
    request is stored with its batch and shown once.

    One statement per fetch, the pings as the JSON text they arrived in: a row per ping cost
    Postgres four to eight times the CPU (see migration 005)."""

    def __init__(
        self,
        pool: Pool,
        metrics: LocationMetrics,
        retention_s: float | None = None,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        # A replayed batch received longer ago than retention is not stored again as raw
        # positions (the retention job has counted it into its res-8 cells already).
        self.retention_s = retention_s

    async def __call__(self, records: Sequence[Received]) -> None:
        if self.retention_s is not None:
            oldest = time.time() - self.retention_s
            records = [r for r in records if r.event.time.timestamp() >= oldest]
        batches = [_batch_row(r) for r in _first_of_each(records, {r.event.id for r in records})]
        if not batches:
            return
        columns = list(zip(*batches, strict=True))
        stored = await self.pool.fetch(
            "INSERT INTO trace_batches (event_id, driver_id, received_at, first_recorded_at, "
            "last_recorded_at, pings) "
            "SELECT e, d, r, f, l, p::json FROM unnest($1::text[], $2::text[], "
            "$3::timestamptz[], $4::timestamptz[], $5::timestamptz[], $6::text[]) "
            "AS u(e, d, r, f, l, p) ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            *columns,
        )
        sizes = {r.event.id: len(r.event.data["pings"]) for r in records}
        self.metrics.traces_written.inc(sum(sizes[row["event_id"]] for row in stored))


def consume_traces(res: Resources, settings: Settings, metrics: LocationMetrics) -> None:
    """Start the trace writer's consumer (in the service, or in its own process)."""
    res.consumer(
        TRACE_CONSUMER,
        [DRIVER_LOCATIONS],
        TraceWriter(res.pool, metrics, retention_s=settings.raw_ping_retention_h * 3600),
        group_id=TRACE_CONSUMER,
        prompt=False,  # nobody waits on the stored trace
    )


def _batch_row(r: Received) -> tuple[str, str, datetime, datetime, datetime, str]:
    """A ``trace_batches`` row of a recorded event: its pings re-encoded as they came."""
    data = r.event.data
    pings = data["pings"]
    times = [p["recorded_at_ms"] for p in pings]
    return (
        r.event.id,
        data["driver_id"],
        parse_time(data["received_at"]),
        datetime.fromtimestamp(min(times) / 1000, UTC),
        datetime.fromtimestamp(max(times) / 1000, UTC),
        orjson.dumps(pings).decode(),
    )


def _first_of_each(records: Sequence[Received], wanted: set[str]) -> list[Received]:
    """The records whose id is wanted, each id once (a batch may hold a redelivery)."""
    out: list[Received] = []
    for r in records:
        if r.event.id in wanted:
            wanted.discard(r.event.id)
            out.append(r)
    return out
