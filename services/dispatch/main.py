"""Composition root of the dispatch service: settings → pool, producer → app + background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from polder.common.bus import Bus, Consumer, Received
from polder.common.db import create_pool, migrate
from polder.common.geoindex import LocationIndex
from polder.common.http import service_app
from polder.common.outbox import OutboxRelay
from polder.common.positions import apply_pings
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.tasks import stop_tasks, tasks_alive, wait_for_start
from polder.common.topics import DRIVER_LOCATIONS
from polder.dispatch.api import router
from polder.dispatch.domain.matching import GreatCircleEta
from polder.dispatch.domain.surge import SurgeModel
from polder.dispatch.feed import Feed
from polder.dispatch.handlers import Handlers
from polder.dispatch.matcher import Matcher
from polder.dispatch.metrics import DispatchMetrics
from polder.dispatch.orders import OrderDesk
from polder.dispatch.runtime import DispatchRuntime
from polder.fares.tariff import load_tariffs

SERVICE = "dispatch"
MIGRATIONS = "polder.dispatch.migrations"


def build_app(settings: Settings, *, run_matcher: bool = True) -> FastAPI:
    """``run_matcher=False`` leaves batches to the caller (tests drive ``matcher.run_once``)."""
    metrics = DispatchMetrics(CollectorRegistry())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        schema = settings.db_schema(SERVICE)
        pool = await create_pool(settings.database_url, schema, max_size=20)
        bus = Bus(settings, SchemaRegistry.load(), source=f"polder/{SERVICE}")
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            await migrate(pool, schema, MIGRATIONS)
            await bus.start()
            relay = OutboxRelay(pool, bus)
            feed = Feed()
            handlers = Handlers(pool, bus, relay, feed)
            positions = LocationIndex(settings.index_resolution, settings.location_ttl_s)
            eta = GreatCircleEta(
                road_factor=settings.road_factor, speed_mps=settings.city_speed_mps
            )
            surge = SurgeModel()
            matcher = Matcher(
                handlers=handlers,
                positions=positions,
                eta=eta,
                settings=settings,
                metrics=metrics,
                feed=feed,
                surge=surge,
            )
            rt = DispatchRuntime(
                settings=settings,
                bus=bus,
                handlers=handlers,
                desk=OrderDesk(bus, load_tariffs(), surge, settings),
                matcher=matcher,
                feed=feed,
                metrics=metrics,
            )

            async def track_positions(records: Sequence[Received]) -> None:
                apply_pings(positions, records)

            locations = Consumer(
                name="dispatch-positions",
                settings=settings,
                registry=bus.registry,
                bus=bus,
                metrics=metrics,
                topics=[DRIVER_LOCATIONS],
                handler=track_positions,
                group_id=None,  # every replica needs every position
                start_at_ms=lambda: int((time.time() - settings.location_ttl_s) * 1000),
            )
            tasks = [
                asyncio.create_task(locations.run(stop), name="dispatch-positions"),
                asyncio.create_task(relay.run(stop), name="dispatch-outbox"),
            ]
            if run_matcher:
                tasks.append(asyncio.create_task(matcher.run(stop), name="dispatch-matcher"))
            await wait_for_start(locations.ready, tasks, "dispatch position consumer")
            app.state.settings = settings
            app.state.runtime = rt
            app.state.ready_checks = {
                "database": lambda: pool.execute("SELECT 1"),
                "broker": bus.ping,
                "tasks": lambda: tasks_alive(tasks),
            }
            yield
        finally:
            stop.set()
            await stop_tasks(tasks)
            await bus.stop()
            await pool.close()

    app = service_app(
        title="Polder dispatch service",
        lifespan=lifespan,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
    )
    app.state.settings = settings
    app.include_router(router)
    return app
