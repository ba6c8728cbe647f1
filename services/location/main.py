"""Composition root of the location service: settings → pool, producer → app + consumers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from polder.common.bus import Bus, Consumer
from polder.common.db import create_pool, migrate
from polder.common.geoindex import LocationIndex
from polder.common.http import document_models, service_app
from polder.common.ratelimit import RateLimiter
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.tasks import stop_tasks, tasks_alive, wait_for_start
from polder.common.topics import DRIVER_LOCATIONS
from polder.location.api import router
from polder.location.domain.pings import Limits
from polder.location.handlers import TRACE_CONSUMER, IndexUpdater, Ingest, TraceWriter
from polder.location.metrics import LocationMetrics
from polder.location.models import PingBatchIn
from polder.location.runtime import LocationRuntime

SERVICE = "location"
MIGRATIONS = "polder.location.migrations"


def build_app(settings: Settings) -> FastAPI:
    metrics = LocationMetrics(CollectorRegistry())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        schema = settings.db_schema(SERVICE)
        pool = await create_pool(settings.database_url, schema)
        bus = Bus(settings, SchemaRegistry.load(), source=f"polder/{SERVICE}")
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            await migrate(pool, schema, MIGRATIONS)
            await bus.start()
            index = LocationIndex(settings.index_resolution, settings.location_ttl_s)
            ingest = Ingest(
                bus, index, Limits(settings.max_future_skew_s, settings.max_speed_mps), metrics
            )
            rt = LocationRuntime(
                settings=settings,
                bus=bus,
                pool=pool,
                index=index,
                ingest=ingest,
                limiter=RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
                metrics=metrics,
            )
            indexer = Consumer(
                name="location-index",
                settings=settings,
                registry=bus.registry,
                bus=bus,
                metrics=metrics,
                topics=[DRIVER_LOCATIONS],
                handler=IndexUpdater(index, metrics),
                group_id=None,  # every replica holds the whole index
                start_at_ms=lambda: int((time.time() - settings.location_ttl_s) * 1000),
            )
            traces = Consumer(
                name=TRACE_CONSUMER,
                settings=settings,
                registry=bus.registry,
                bus=bus,
                metrics=metrics,
                topics=[DRIVER_LOCATIONS],
                handler=TraceWriter(pool, metrics, settings.index_resolution),
                group_id=TRACE_CONSUMER,
            )
            tasks = [
                asyncio.create_task(indexer.run(stop), name="location-index"),
                asyncio.create_task(traces.run(stop), name=TRACE_CONSUMER),
                asyncio.create_task(_expire_loop(rt, stop), name="location-expiry"),
            ]
            await wait_for_start(indexer.ready, tasks, "location index consumer")
            app.state.settings = settings
            app.state.runtime = rt
            app.state.ready_checks = {
                "database": lambda: pool.execute("SELECT 1"),
                "broker": bus.ping,
                "consumers": lambda: tasks_alive(tasks),
            }
            yield
        finally:
            stop.set()
            await stop_tasks(tasks)
            await bus.stop()
            await pool.close()

    app = service_app(
        title="Polder location service",
        lifespan=lifespan,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
    )
    app.state.settings = settings
    app.include_router(router)
    document_models(app, PingBatchIn)
    return app


async def _expire_loop(rt: LocationRuntime, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        rt.index.expire(time.time())
        rt.ingest.forget_expired()
        rt.metrics.indexed_drivers.set(len(rt.index))
