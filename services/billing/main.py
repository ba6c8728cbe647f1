"""Composition root of the billing service: settings → pool, producer → app + consumers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from polder.billing import fleet
from polder.billing.api import router
from polder.billing.domain.policies_rates import load_rates
from polder.billing.ingest import CONSUMER, BillingIngest
from polder.billing.metrics import BillingMetrics
from polder.billing.periods import PeriodCloser
from polder.billing.pings import CONSUMER as PINGS_CONSUMER
from polder.billing.pings import PingKeeper
from polder.billing.retention import PingRetention
from polder.billing.runtime import BillingRuntime
from polder.billing.statements import Reports, Statements
from polder.common import retention
from polder.common.http import service_app
from polder.common.outbox import OutboxRelay
from polder.common.service import service_resources
from polder.common.settings import Settings
from polder.common.topics import DISPATCH, DRIVER_EVENTS, DRIVER_LOCATIONS, ORDERS
from polder.fares.tariff import load_tariffs

SERVICE = "billing"
MIGRATIONS = "polder.billing.migrations"
BATCH_RECORDS = 10_000  # records per fetch, across the consumer's partitions


def build_app(settings: Settings) -> FastAPI:
    metrics = BillingMetrics(CollectorRegistry())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_resources(settings, SERVICE, MIGRATIONS, metrics) as res:
            relay = OutboxRelay(res.pool, res.bus, keep_sent_s=settings.outbox_keep_h * 3600)
            tariffs = load_tariffs()
            share = Decimal(str(settings.driver_share))
            ingest = BillingIngest(res.pool, res.bus, relay, tariffs, share, metrics)
            statements = Statements(res.pool, tariffs, load_rates(), settings)
            closer = PeriodCloser(
                statements, res.bus, relay, metrics, policy=settings.default_policy
            )
            spacing_ms = int(settings.billing_ping_spacing_s * 1000)
            keeper = PingKeeper(
                res.pool, metrics, spacing_ms, retention_s=settings.raw_ping_retention_h * 3600
            )
            for name, topics, handler in (
                (CONSUMER, [DRIVER_EVENTS, ORDERS, DISPATCH], ingest),
                (PINGS_CONSUMER, [DRIVER_LOCATIONS], keeper),
            ):
                # Larger fetches than the default: a batch costs a fixed number of statements
                # whatever its size, so fewer, fuller batches are the cheaper way through a lag.
                res.consumer(
                    name, topics, handler, group_id=name, max_records=BATCH_RECORDS, prompt=False
                )
            res.run(relay.run(res.stop), "billing-outbox")
            retention.start(
                res, PingRetention(res.pool, metrics), retention_h=settings.raw_ping_retention_h
            )
            res.run(closer.run(res.stop), "billing-periods")
            reports = Reports(statements)
            fleet_lock = f"fleet:{settings.db_schema(SERVICE)}"
            res.run(fleet.run(reports, metrics, res.stop, fleet_lock), "billing-fleet")
            app.state.runtime = BillingRuntime(
                settings=settings,
                statements=statements,
                reports=reports,
                closer=closer,
                metrics=metrics,
            )
            app.state.ready_checks = res.ready_checks()
            yield

    app = service_app(
        title="Polder billing service",
        settings=settings,
        lifespan=lifespan,
        metrics=metrics,
        routers=[router],
    )
    return app
