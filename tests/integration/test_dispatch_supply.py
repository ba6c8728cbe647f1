"""Supply snapshots travel from the active matcher to every API replica's surge model through
Postgres: a replica that never ran the matcher, or starts later, quotes from the same supply."""

from __future__ import annotations

import time
from decimal import Decimal

import h3.api.basic_int as h3

from polder.common.db import create_pool, migrate
from polder.common.settings import Settings
from polder.dispatch.domain.surge import SURGE_RESOLUTION, SurgeModel
from polder.dispatch.supply import SupplyFollower, SupplyWriter

CELL = h3.latlng_to_cell(52.3731, 4.8922, SURGE_RESOLUTION)


async def test_every_replica_sees_the_matchers_supply(settings: Settings) -> None:
    schema = settings.db_schema("dispatch")
    pool = await create_pool(settings.database_url, schema)
    try:
        await migrate(pool, schema, "polder.dispatch.migrations")
        now = time.time()
        writer = SupplyWriter(pool, keep_s=600)
        early = SupplyFollower(pool, SurgeModel())  # a replica already running
        assert await early.poll() == 0
        writer({CELL: 1}, now - 2)
        writer({CELL: 1}, now - 1)
        writer({CELL: 5}, now - 900)  # older than kept: deleted on flush
        await writer.flush(now)
        assert await early.poll() == 2
        assert await early.poll() == 0, "a snapshot is observed once"
        late = SupplyFollower(pool, SurgeModel())  # a replica started afterwards
        assert await late.poll() == 2
        for replica in (early, late):
            for t in range(8):
                replica.surge.record_demand(CELL, now - 1 + t * 0.01)
            pressure = replica.surge.pressure(CELL, now)
            assert pressure.supply == Decimal(1), "the same supply on every replica"
            assert pressure.multiplier > Decimal("1.0")
        left = await pool.fetchval("SELECT count(*) FROM supply_snapshots")
        assert left == 2
    finally:
        await pool.close()
