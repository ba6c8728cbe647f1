"""Composition root of the dispatch service: settings → pool, producer → app + background tasks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from polder.common.bus import Received
from polder.common.geoindex import LocationIndex
from polder.common.http import service_app
from polder.common.outbox import OutboxRelay
from polder.common.positions import apply_pings
from polder.common.service import service_resources
from polder.common.settings import Settings
from polder.common.tasks import wait_for_start
from polder.common.topics import DRIVER_LOCATIONS
from polder.dispatch.api import router
from polder.dispatch.domain.availability import Availability
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
        async with service_resources(settings, SERVICE, MIGRATIONS, metrics, pool_size=20) as res:
            relay = OutboxRelay(res.pool, res.bus)
            feed = Feed()
            availability = Availability()
            handlers = Handlers(res.pool, res.bus, relay, feed, metrics, availability)
            positions = LocationIndex(settings.index_resolution, settings.location_ttl_s)
            surge = SurgeModel()
            matcher = Matcher(
                handlers=handlers,
                positions=positions,
                eta=GreatCircleEta(
                    road_factor=settings.road_factor, speed_mps=settings.city_speed_mps
                ),
                settings=settings,
                metrics=metrics,
                feed=feed,
                surge=surge,
                availability=availability,
            )
            await matcher.load_availability()

            async def track_positions(records: Sequence[Received]) -> None:
                apply_pings(positions, records)

            locations = res.consumer(
                "dispatch-positions",
                [DRIVER_LOCATIONS],
                track_positions,
                group_id=None,  # every replica needs every position
                start_at_ms=lambda: int((time.time() - settings.location_ttl_s) * 1000),
            )
            res.run(relay.run(res.stop), "dispatch-outbox")
            if run_matcher:
                res.run(matcher.run(res.stop), "dispatch-matcher")
            await wait_for_start(locations.ready, res.tasks, "dispatch position consumer")
            app.state.runtime = DispatchRuntime(
                settings=settings,
                bus=res.bus,
                handlers=handlers,
                desk=OrderDesk(res.bus, load_tariffs(), surge, settings),
                matcher=matcher,
                feed=feed,
                metrics=metrics,
            )
            app.state.ready_checks = res.ready_checks()
            yield

    app = service_app(
        title="Polder dispatch service", settings=settings, lifespan=lifespan, metrics=metrics
    )
    app.include_router(router)
    return app
