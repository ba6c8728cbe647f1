"""The transactional outbox: events leave only with their transaction, in order, at least once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from polder.common.bus import Bus, Received
from polder.common.db import create_pool, migrate
from polder.common.outbox import OutboxRelay, add_to_outbox
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DRIVER_EVENTS
from tests.support import read_topic

pytestmark = pytest.mark.integration


def state_event(bus: Bus, driver: str, seq: int) -> tuple:  # type: ignore[type-arg]
    data = {
        "driver_id": driver,
        "seq": seq,
        "from": "offline",
        "to": "idle",
        "cause": "went_online",
    }
    return (
        DRIVER_EVENTS,
        driver,
        bus.event("polder.driver.state_changed.v1", driver, data, datetime.now(UTC)),
    )


async def read_all(settings: Settings, expected: int) -> list[Received]:
    """Everything on the topic once ``expected`` records are there, and nothing arrives after."""
    seen = await read_topic(settings, DRIVER_EVENTS, until=lambda s: len(s) >= expected)
    await asyncio.sleep(0.5)
    again = await read_topic(settings, DRIVER_EVENTS, until=lambda s: len(s) >= len(seen))
    assert len(again) == len(seen)
    return seen


async def test_rolled_back_events_never_leave_and_committed_ones_leave_in_order(
    settings: Settings,
) -> None:
    schema = settings.db_schema("dispatch")
    pool = await create_pool(settings.database_url, schema)
    bus = Bus(settings, SchemaRegistry.load(), source="test")
    await bus.start()
    try:
        await migrate(pool, schema, "polder.dispatch.migrations")
        with pytest.raises(RuntimeError):
            async with pool.acquire() as conn, conn.transaction():
                await add_to_outbox(conn, bus, [state_event(bus, "ghost", 1)])
                raise RuntimeError("the state change failed")
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, bus, [state_event(bus, "d1", seq) for seq in range(1, 6)])
        relay = OutboxRelay(pool, bus)
        assert await relay.relay_once() == 5
        assert await relay.relay_once() == 0
        seen = await read_all(settings, 5)
        assert [r.key for r in seen] == ["d1"] * 5
        assert [r.event.data["seq"] for r in seen] == [1, 2, 3, 4, 5]
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    finally:
        await bus.stop()
        await pool.close()


async def test_a_relay_killed_after_sending_sends_again_and_ids_let_consumers_dedupe(
    settings: Settings,
) -> None:
    schema = settings.db_schema("dispatch")
    pool = await create_pool(settings.database_url, schema)
    bus = Bus(settings, SchemaRegistry.load(), source="test")
    await bus.start()
    try:
        await migrate(pool, schema, "polder.dispatch.migrations")
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, bus, [state_event(bus, "d2", 1), state_event(bus, "d2", 2)])

        class KilledAfterSend(OutboxRelay):
            async def relay_once(self) -> int:
                original = self.bus.send_many

                async def send_then_die(records):  # type: ignore[no-untyped-def]
                    await original(records)
                    raise ConnectionResetError("killed before marking sent")

                self.bus.send_many = send_then_die  # type: ignore[method-assign]
                try:
                    return await super().relay_once()
                finally:
                    self.bus.send_many = original  # type: ignore[method-assign]

        with pytest.raises(ConnectionResetError):
            await KilledAfterSend(pool, bus).relay_once()
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 2
        assert await OutboxRelay(pool, bus).relay_once() == 2
        seen = await read_all(settings, 4)
        ids = [r.event.id for r in seen]
        assert len(ids) == 4 and len(set(ids)) == 2  # each event twice, with the same id
    finally:
        await bus.stop()
        await pool.close()


async def test_the_outbox_refuses_an_invalid_event(settings: Settings) -> None:
    schema = settings.db_schema("dispatch")
    pool = await create_pool(settings.database_url, schema)
    bus = Bus(settings, SchemaRegistry.load(), source="test")
    try:
        await migrate(pool, schema, "polder.dispatch.migrations")
        bad = bus.event(
            "polder.driver.state_changed.v1", "d", {"driver_id": "d"}, datetime.now(UTC)
        )
        async with pool.acquire() as conn:
            with pytest.raises(ValueError, match="seq"):
                await add_to_outbox(conn, bus, [(DRIVER_EVENTS, "d", bad)])
    finally:
        await pool.close()
