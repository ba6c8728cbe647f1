"""The trace writer: accepted pings land in Postgres once, however often they are delivered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from polder.common.bus import Received
from polder.common.db import Pool, create_pool, migrate
from polder.common.envelope import Event, format_time
from polder.common.settings import Settings
from polder.location.handlers import StatusWriter, TraceWriter
from polder.location.metrics import LocationMetrics
from tests.support import migrate_before

pytestmark = pytest.mark.integration


def recorded(driver: str, n: int) -> Event:
    return Event(
        type="polder.location.pings_recorded.v1",
        source="test",
        subject=driver,
        time=datetime(2026, 11, 29, 12, tzinfo=UTC),
        data={
            "driver_id": driver,
            "received_at": "2026-11-29T12:00:00.000Z",
            "pings": [
                {
                    "lat": 52.37 + i * 1e-4,
                    "lng": 4.89,
                    "recorded_at_ms": 1_795_996_740_000 + i * 1000,
                    "speed_mps": 4.5,
                }
                for i in range(n)
            ],
        },
    )


def received(e: Event, offset: int) -> Received:
    return Received(e, e.subject, "t", 0, offset)


async def test_pings_are_written_once_across_duplicates_and_replays(location_pool: Pool) -> None:
    writer = TraceWriter(location_pool, LocationMetrics(CollectorRegistry()))
    a, b = recorded("d1", 3), recorded("d2", 2)
    # a duplicate inside one batch, then the whole batch replayed
    await writer([received(a, 0), received(b, 1), received(a, 2)])
    await writer([received(a, 0), received(b, 1)])
    rows = await location_pool.fetch(
        "SELECT driver_id, count(*) AS n FROM pings GROUP BY driver_id ORDER BY driver_id"
    )
    assert [(r["driver_id"], r["n"]) for r in rows] == [("d1", 3), ("d2", 2)]
    first = await location_pool.fetchrow(
        "SELECT * FROM pings WHERE driver_id = 'd1' ORDER BY recorded_at LIMIT 1"
    )
    assert first["lat"] == 52.37 and first["speed_mps"] == 4.5 and first["accuracy_m"] is None
    assert first["event_id"] == a.id
    # one stored row per event: the duplicate and the replay added none
    assert await location_pool.fetchval("SELECT count(*) FROM trace_batches") == 2
    assert first["recorded_at"] == datetime.fromtimestamp(1_795_996_740, UTC)
    assert first["received_at"] == datetime(2026, 11, 29, 12, tzinfo=UTC)


async def test_the_same_ping_resent_in_another_request_is_stored_once(location_pool: Pool) -> None:
    """Two requests carrying the same pings are two events with their own ids: each batch is
    stored as published, and the trace shows one row per (driver, recorded_at), in one batch
    or in the next, as first received."""
    metrics = LocationMetrics(CollectorRegistry())
    writer = TraceWriter(location_pool, metrics)
    first, again, later = recorded("d1", 3), recorded("d1", 3), recorded("d1", 5)
    assert first.id != again.id
    await writer([received(first, 0), received(again, 1)])
    await writer([received(later, 2)])  # two new pings, three seen before
    await writer([received(recorded("d2", 3), 3)])  # another driver, same times
    rows = await location_pool.fetch(
        "SELECT driver_id, count(*) AS n, count(DISTINCT recorded_at) AS times "
        "FROM pings GROUP BY driver_id ORDER BY driver_id"
    )
    assert [(r["driver_id"], r["n"], r["times"]) for r in rows] == [("d1", 5, 5), ("d2", 3, 3)]
    # stored as published: 3 + 3 + 5 + 3 pings in four batches
    assert metrics.traces_written._value.get() == 14  # noqa: SLF001
    assert await location_pool.fetchval("SELECT count(*) FROM trace_batches") == 4
    shown = await location_pool.fetch(
        "SELECT event_id FROM pings WHERE driver_id = 'd1' ORDER BY recorded_at"
    )
    # the first three from the first request received; the two new ones from the later one
    assert [r["event_id"] for r in shown[:3]] in ([first.id] * 3, [again.id] * 3)
    assert [r["event_id"] for r in shown[3:]] == [later.id] * 2


async def test_a_replay_older_than_retention_stores_no_raw_positions(location_pool: Pool) -> None:
    writer = TraceWriter(location_pool, LocationMetrics(CollectorRegistry()), retention_s=72 * 3600)
    old = recorded("d1", 3)  # received 2026-11-29, long before this test's retention cut
    fresh = Event(
        type=old.type,
        source="test",
        subject="d2",
        time=datetime.now(UTC),
        data={**old.data, "driver_id": "d2", "received_at": format_time(datetime.now(UTC))},
    )
    await writer([received(old, 0), received(fresh, 1)])
    rows = await location_pool.fetch("SELECT DISTINCT driver_id FROM pings")
    assert [r["driver_id"] for r in rows] == ["d2"]


async def test_the_status_table_keeps_the_newest_change_whatever_the_order(
    location_pool: Pool,
) -> None:
    writer = StatusWriter(location_pool)

    def change(seq: int, to: str, offset: int) -> Received:
        e = Event(
            type="polder.driver.state_changed.v1",
            source="polder/dispatch",
            subject="d1",
            time=datetime(2026, 12, 1, 12, 0, seq, tzinfo=UTC),
            data={"driver_id": "d1", "seq": seq, "from": "x", "to": to, "cause": "c"},
        )
        return Received(e, "d1", "events", 3, offset)

    await writer([change(1, "idle", 10), change(3, "offline", 12)])
    await writer([change(2, "on_trip", 11), change(1, "idle", 10)])  # late and replayed
    row = await location_pool.fetchrow("SELECT seq, status, changed_at FROM driver_status")
    assert (row["seq"], row["status"]) == (3, "offline")
    assert row["changed_at"] == datetime(2026, 12, 1, 12, 0, 3, tzinfo=UTC)
    # the offset stored is the one after the last batch's (a redelivered batch may move it
    # back: a replica then reads some changes twice, which the seq makes harmless)
    assert await location_pool.fetchval("SELECT next_offset FROM driver_status_offsets") == 12


async def test_a_trace_stored_a_row_per_ping_reads_the_same_after_migration_005(
    settings: Settings,
) -> None:
    """Migration 005 turns per-ping rows into batches; the pings view shows what was there."""
    schema = settings.db_schema("location")
    pool = await create_pool(settings.database_url, schema)
    try:
        async with pool.acquire() as conn:
            await migrate_before(conn, schema, "polder.location.migrations", "005")
            t0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
            old_rows = [
                (
                    driver,
                    t0 + timedelta(seconds=i),
                    t0 + timedelta(seconds=10 + i // 3),
                    52.37 + i * 1e-4,
                    4.89,
                    0,
                    5.0 if i % 2 else None,
                    8.5,
                    None,
                    f"e-{driver}-{i // 3}",
                )
                for driver in ("d1", "d2")
                for i in range(7)
            ]
            await conn.copy_records_to_table(
                "pings",
                records=old_rows,
                columns=[
                    "driver_id",
                    "recorded_at",
                    "received_at",
                    "lat",
                    "lng",
                    "cell",
                    "accuracy_m",
                    "speed_mps",
                    "heading_deg",
                    "event_id",
                ],
            )
        assert await migrate(pool, schema, "polder.location.migrations") == ["005_trace_batches"]
        assert await pool.fetchval("SELECT count(*) FROM trace_batches") == 6  # 3 events each
        rows = await pool.fetch(
            "SELECT driver_id, recorded_at, received_at, lat, lng, accuracy_m, speed_mps, "
            "heading_deg, event_id FROM pings ORDER BY driver_id, recorded_at"
        )
        assert [tuple(r) for r in rows] == [
            (d, rec, recv, lat, lng, acc, speed, heading, event)
            for d, rec, recv, lat, lng, _, acc, speed, heading, event in old_rows
        ]
    finally:
        await pool.close()
