"""Composition root of the billing service: settings → pool, producer → app + consumer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from polder.billing.api import router
from polder.billing.domain.policies_rates import load_rates
from polder.billing.ingest import CONSUMER, BillingIngest
from polder.billing.metrics import BillingMetrics
from polder.billing.periods import PeriodCloser
from polder.billing.pings import CONSUMER as PINGS_CONSUMER
from polder.billing.pings import PingKeeper
from polder.billing.runtime import BillingRuntime
from polder.billing.statements import Reports, Statements
from polder.common.bus import Bus, Consumer
from polder.common.db import create_pool, migrate
from polder.common.http import service_app
from polder.common.outbox import OutboxRelay
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.tasks import stop_tasks, tasks_alive
from polder.common.topics import DRIVER_EVENTS, DRIVER_LOCATIONS, ORDERS
from polder.fares.tariff import load_tariffs

SERVICE = "billing"
MIGRATIONS = "polder.billing.migrations"


def build_app(settings: Settings) -> FastAPI:
    metrics = BillingMetrics(CollectorRegistry())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        schema = settings.db_schema(SERVICE)
        pool = await create_pool(settings.database_url, schema, max_size=10)
        bus = Bus(settings, SchemaRegistry.load(), source=f"polder/{SERVICE}")
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            await migrate(pool, schema, MIGRATIONS)
            await bus.start()
            relay = OutboxRelay(pool, bus)
            tariffs = load_tariffs()
            ingest = BillingIngest(
                pool, bus, relay, tariffs, Decimal(str(settings.driver_share)), metrics
            )
            consumer = Consumer(
                name=CONSUMER,
                settings=settings,
                registry=bus.registry,
                bus=bus,
                metrics=metrics,
                topics=[DRIVER_EVENTS, ORDERS],
                handler=ingest,
                group_id=CONSUMER,
            )
            statements = Statements(pool, tariffs, load_rates(), settings)
            pings = Consumer(
                name=PINGS_CONSUMER,
                settings=settings,
                registry=bus.registry,
                bus=bus,
                metrics=metrics,
                topics=[DRIVER_LOCATIONS],
                handler=PingKeeper(pool, metrics, int(settings.billing_ping_spacing_s * 1000)),
                group_id=PINGS_CONSUMER,
            )
            closer = PeriodCloser(statements, bus, relay, metrics, policy=settings.default_policy)
            tasks = [
                asyncio.create_task(consumer.run(stop), name="billing-consumer"),
                asyncio.create_task(closer.run(stop), name="billing-periods"),
                asyncio.create_task(pings.run(stop), name="billing-pings"),
                asyncio.create_task(relay.run(stop), name="billing-outbox"),
            ]
            app.state.settings = settings
            app.state.runtime = BillingRuntime(
                settings=settings,
                statements=statements,
                reports=Reports(statements),
                closer=closer,
                metrics=metrics,
            )
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
        title="Polder billing service",
        lifespan=lifespan,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
    )
    app.state.settings = settings
    app.include_router(router)
    return app
