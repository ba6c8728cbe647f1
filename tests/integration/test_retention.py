"""Retention: raw positions past the configured age are deleted, older positions are kept only
as H3 res-8 cells, and a worker's statements stay exactly what they were."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import h3.api.basic_int as h3
import pytest
from prometheus_client import CollectorRegistry

from polder.billing.ingest import BillingIngest
from polder.billing.metrics import BillingMetrics
from polder.billing.pings import PingKeeper
from polder.billing.retention import PingRetention
from polder.billing.statements import ALL_POLICIES
from polder.common.bus import Bus, Received
from polder.common.db import Pool, create_pool, migrate
from polder.common.envelope import Event, format_time
from polder.common.outbox import OutboxRelay
from polder.common.retention import cut_for
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.fares.tariff import load_tariffs
from polder.location.handlers import TraceWriter
from polder.location.metrics import LocationMetrics
from polder.location.retention import TraceRetention
from tests.integration.test_billing import billing_service
from tests.integration.test_billing_property import as_event
from tests.support import migrate_before
from tests.unit.test_billing_ledger import random_city

pytestmark = pytest.mark.integration


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def trace_events(
    driver: str,
    start_ms: int,
    end_ms: int,
    rng: random.Random,
    skew_ms: int,
    set_back_ms: int = 0,
) -> list[Event]:
    """A phone's batches of 3 pings every 10 s while it drives, with a pause of 6–9 minutes now
    and then (the trace breaks), a few cell-tower fixes, and a clock ``skew_ms`` behind that
    is set back by ``set_back_ms`` more halfway through."""
    events, t = [], start_ms
    halfway = (start_ms + end_ms) // 2
    lat, lng = 52.37 + rng.uniform(-0.01, 0.01), 4.89 + rng.uniform(-0.01, 0.01)
    while t < end_ms:
        pings = []
        for _ in range(3):
            t += 10_000
            lat += rng.uniform(-1, 1) * 4e-4
            lng += rng.uniform(-1, 1) * 6e-4
            accuracy = 500.0 if rng.random() < 0.05 else 8.0
            clock = t - skew_ms - (set_back_ms if t > halfway else 0)
            pings.append({"lat": lat, "lng": lng, "recorded_at_ms": clock, "accuracy_m": accuracy})
        received = t + rng.randint(100, 900)
        events.append(
            Event(
                type="polder.location.pings_recorded.v1",
                source="polder/location",
                subject=driver,
                time=_at(received),
                data={
                    "driver_id": driver,
                    "received_at": format_time(_at(received)),
                    "pings": pings,
                },
            )
        )
        if rng.random() < 0.05:
            t += rng.randint(360_000, 540_000)
    return events


async def test_billing_thins_its_pings_and_every_statement_stays_the_same(
    settings: Settings,
) -> None:
    rng = random.Random(7)
    city = random_city(rng, 4)
    facts = [*city.changes, *city.orders.values(), *city.no_shows, *city.offers]
    records = [Received(as_event(f), None, "t", 0, i) for i, f in enumerate(facts)]
    span: dict[str, tuple[int, int]] = {}
    for c in city.changes:
        lo, hi = span.get(c.driver_id, (c.at_ms, c.at_ms))
        span[c.driver_id] = (min(lo, c.at_ms), max(hi, c.at_ms))
    async with billing_service(settings) as b:
        registry = SchemaRegistry.load()
        bus = Bus(settings, registry, source="polder/billing")
        metrics = BillingMetrics(CollectorRegistry())
        ingest = BillingIngest(
            b.pool, bus, OutboxRelay(b.pool, bus), load_tariffs(), Decimal("0.75"), metrics
        )
        await ingest(records)
        keeper = PingKeeper(b.pool, metrics, spacing_ms=5_000)
        for n, (driver, (lo, hi)) in enumerate(sorted(span.items())):
            skew = 60_000 if n % 2 else 0  # some phones' clocks are a minute behind
            # and some are set back 5 min mid-shift (by 303 s: no ping twice at a device ms)
            set_back = 303_000 if n % 4 < 2 else 0
            events = trace_events(driver, lo - 60_000, hi + 600_000, rng, skew, set_back)
            await keeper([Received(e, driver, "l", 0, i) for i, e in enumerate(events)])
        first = min(lo for lo, _ in span.values())
        last = max(hi for _, hi in span.values())
        start = _at(first).replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=2)
        now = datetime.now(UTC)

        async def statements() -> dict[str, Any]:
            return {
                d: await b.rt.statements.compute(d, start, end, ALL_POLICIES, now) for d in span
            }

        before = await statements()
        raw = await b.pool.fetchval("SELECT count(*) FROM pings")
        assert raw > 300
        # the pings measure engaged distance, which some policies pay for
        assert any(st.engaged_m > 0 for sts, _, _ in before.values() for st in sts)

        # a cut in the middle of the day, then one after everything
        retention = PingRetention(b.pool, metrics)
        middle = _at((first + last) // 2)
        thinned_mid = await retention(middle)
        assert 0 < thinned_mid < raw
        assert await statements() == before
        hours = 72.0
        job_now = _at(last + 3_600_000) + timedelta(hours=hours)
        thinned = await retention(cut_for(job_now, hours))
        assert thinned_mid + thinned == raw
        assert await b.pool.fetchval("SELECT count(*) FROM pings") == 0  # no position is left
        assert await b.pool.fetchval("SELECT count(*) FROM ping_marks") == raw
        assert await b.pool.fetchval("SELECT count(*) FROM ping_legs") > 0
        assert await statements() == before
        assert metrics.pings_thinned._value.get() == raw  # noqa: SLF001
        assert await retention(cut_for(job_now, hours)) == 0  # nothing left to do


async def test_legs_stored_on_the_device_clock_move_to_the_server_clock_in_migration_006(
    settings: Settings,
) -> None:
    """Legs measured before 006 were on the device clock and moved by the worker's one offset
    when read; 006 moves them by that offset once (0 within 5 s), as statements now read them."""
    schema = settings.db_schema("billing")
    pool = await create_pool(settings.database_url, schema)
    try:
        async with pool.acquire() as conn:
            await migrate_before(conn, schema, "polder.billing.migrations", "006")
            t0 = 1_796_000_000_000
            # (driver, recorded, received): "behind" a minute behind (its smallest delay 60.2 s
            # of a mark and a raw ping), "right" within the tolerance
            pings = [("behind", t0, 60_500), ("behind", t0 + 10_000, 60_200)]
            pings += [("right", t0, 700), ("right", t0 + 10_000, 300)]
            for table, (driver, recorded, delay) in zip(
                ["ping_marks", "pings", "ping_marks", "pings"], pings, strict=True
            ):
                position = ", 52.37, 4.89" if table == "pings" else ""
                columns = ", lat, lng" if table == "pings" else ""
                await conn.execute(
                    f"INSERT INTO {table} (driver_id, recorded_at_ms, received_at, accuracy_m, "  # noqa: S608
                    f"cell8{columns}) VALUES ($1, $2, $3, 5.0, 1{position})",
                    driver,
                    recorded,
                    _at(recorded + delay),
                )
            await conn.executemany(
                "INSERT INTO ping_legs (driver_id, start_ms, end_ms, distance_m, received_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                [
                    ("behind", t0 - 10_000, t0, 40.0, _at(t0 + 60_500)),
                    ("behind", t0 + 50_000, t0 + 60_200, 30.0, _at(t0 + 60_200 + 60_300)),
                    ("right", t0 - 10_000, t0, 20.0, _at(t0 + 700)),
                ],
            )
        # 006 is what the run applies first (later migrations follow it)
        applied = await migrate(pool, schema, "polder.billing.migrations")
        assert applied[:1] == ["006_legs_on_server_clock"]
        rows = await pool.fetch(
            "SELECT driver_id, start_ms, end_ms, distance_m FROM ping_legs ORDER BY 1, 2"
        )
        # "behind" by 60.2 s (the smallest delay of its marks and pings), "right" as it was
        assert [tuple(r) for r in rows] == [
            ("behind", t0 + 50_200, t0 + 60_200, 40.0),
            ("behind", t0 + 110_200, t0 + 120_400, 30.0),
            ("right", t0 - 10_000, t0, 20.0),
        ]
        pkey = await pool.fetchval(
            "SELECT count(*) FROM information_schema.table_constraints WHERE table_schema = $1 "
            "AND table_name = 'ping_legs' AND constraint_type = 'PRIMARY KEY'",
            schema,
        )
        assert pkey == 1
    finally:
        await pool.close()


async def test_location_thins_its_trace_into_res8_cells(location_pool: Pool) -> None:
    metrics = LocationMetrics(CollectorRegistry())
    writer = TraceWriter(location_pool, metrics)
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    rng = random.Random(3)
    sent: list[tuple[str, datetime, float, float]] = []
    records = []
    for i in range(60):
        driver = f"d{i % 3}"
        received = now - timedelta(hours=80 - i * 0.2)  # from 80 h to 68 h ago
        pings = []
        for k in range(5):
            lat, lng = 52.3 + rng.uniform(0, 0.1), 4.8 + rng.uniform(0, 0.1)
            recorded = received - timedelta(seconds=5 - k)
            pings.append(
                {"lat": lat, "lng": lng, "recorded_at_ms": int(recorded.timestamp() * 1000)}
            )
            sent.append((driver, received, lat, lng))
        event = Event(
            type="polder.location.pings_recorded.v1",
            source="polder/location",
            subject=driver,
            time=received,
            data={"driver_id": driver, "received_at": format_time(received), "pings": pings},
        )
        records.append(Received(event, driver, "l", 0, i))
    await writer(records)
    cut = cut_for(now, 72.0)
    old = [s for s in sent if s[1] < cut]
    assert 0 < len(old) < len(sent)

    # two chunks of batches
    thinned = await TraceRetention(location_pool, metrics, 9, chunk=37)(cut)
    assert thinned == len(old)
    left = "SELECT count(*) FROM pings WHERE received_at < $1"
    assert await location_pool.fetchval(left, cut) == 0
    assert await location_pool.fetchval("SELECT count(*) FROM pings") == len(sent) - len(old)
    expected: dict[tuple[str, datetime, int], int] = {}
    for driver, received, lat, lng in old:
        key = (
            driver,
            received.replace(minute=0, second=0, microsecond=0),
            # the res-8 parent of the stored index cell
            h3.cell_to_parent(h3.latlng_to_cell(lat, lng, 9), 8),
        )
        expected[key] = expected.get(key, 0) + 1
    rows = await location_pool.fetch("SELECT driver_id, hour, cell8, pings FROM ping_cells")
    assert {(r["driver_id"], r["hour"], r["cell8"]): r["pings"] for r in rows} == expected
    assert metrics.pings_thinned._value.get() == len(old)  # noqa: SLF001
    assert await TraceRetention(location_pool, metrics, 9)(cut) == 0
