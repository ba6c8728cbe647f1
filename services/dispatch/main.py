"""Composition root of the dispatch service: settings → pool, producer → app + background tasks.

The API process answers requests; matching runs in a process of its own (``matcher_process``),
started and watched by the API process, so batches do not queue behind requests. Tests run the
matcher inline (``matcher="inline"``) or drive its batches themselves (``matcher="none"``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Literal

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from polder.common import retention
from polder.common.bus import Received
from polder.common.children import ChildProcess, MergedRegistry, share_folder
from polder.common.http import service_app
from polder.common.outbox import OutboxRelay
from polder.common.positions import apply_pings
from polder.common.service import service_resources
from polder.common.settings import Settings
from polder.common.tasks import wait_for_start
from polder.common.topics import DISPATCH, DRIVER_LOCATIONS
from polder.dispatch.api import router
from polder.dispatch.domain.availability import Availability
from polder.dispatch.domain.surge import SurgeModel
from polder.dispatch.feed import Feed
from polder.dispatch.handlers import Handlers
from polder.dispatch.matcher_process import RELAY_BATCH, build_matcher
from polder.dispatch.metrics import DispatchMetrics, SurgeCollector
from polder.dispatch.orders import OrderDesk
from polder.dispatch.retention import DecisionRetention
from polder.dispatch.runtime import DispatchRuntime
from polder.dispatch.supply import SupplyFollower
from polder.fares.tariff import load_tariffs

SERVICE = "dispatch"
MIGRATIONS = "polder.dispatch.migrations"

MatcherMode = Literal["process", "inline", "none"]


def build_app(settings: Settings, *, matcher: MatcherMode = "process") -> FastAPI:
    """``matcher``: "process" (its own process, as deployed), "inline" (a task in this process)
    or "none" (the caller drives ``runtime.matcher.run_once``; the matcher's position consumer
    and view of the workers are kept current here)."""
    own_registry = CollectorRegistry()
    metrics = DispatchMetrics(own_registry)
    share: Path | None = None

    @contextlib.asynccontextmanager
    async def serve(app: FastAPI) -> AsyncIterator[None]:
        async with service_resources(settings, SERVICE, MIGRATIONS, metrics, pool_size=20) as res:
            separate = matcher == "process"
            # With a matcher process, it relays the outbox (this process's rows too).
            relay = (
                None
                if separate
                else OutboxRelay(
                    res.pool, res.bus, batch=RELAY_BATCH, keep_sent_s=settings.outbox_keep_h * 3600
                )
            )
            availability = Availability()
            handlers = Handlers(
                res.pool, res.bus, relay, metrics, None if separate else availability
            )
            surge = SurgeModel()
            inline = build_matcher(settings, handlers, metrics, availability, surge)
            desk = OrderDesk(res.bus, load_tariffs(), surge, settings)
            own_registry.register(SurgeCollector(surge))
            feed = Feed()
            # The feed reads each new offer's view; under load the main pool's connections all
            # serve requests, and a worker's offer must not wait behind them (it did, seconds).
            feed_pool = await res.side_pool("feed", max_size=2)

            async def fan_out(records: Sequence[Received]) -> None:
                await feed.fan_out(feed_pool, records)

            feeder = res.consumer(
                "dispatch-feed",
                [DISPATCH],
                fan_out,
                group_id=None,  # every replica serves its own connected drivers
                start_at_ms=lambda: int(time.time() * 1000),
                prompt=True,  # a worker is waiting for the offer
            )
            ready = [(feeder, "dispatch feed consumer")]
            if separate:
                assert share is not None
                process = ChildProcess("polder.dispatch.matcher_process", settings, share)
                metrics.registry = MergedRegistry(own_registry, process.metrics_file)
                res.run(SupplyFollower(res.pool, surge).run(res.stop), "dispatch-supply")
                res.run(process.run(res.stop), "dispatch-matcher-process")
                app.state.matcher_process = process
            else:
                assert relay is not None
                res.run(relay.run(res.stop), "dispatch-outbox")
                retention.start(
                    res,
                    DecisionRetention(res.pool, metrics),
                    retention_h=settings.decisions_keep_h,
                )

                async def track_positions(records: Sequence[Received]) -> None:
                    apply_pings(inline.positions, records)

                locations = res.consumer(
                    "dispatch-positions",
                    [DRIVER_LOCATIONS],
                    track_positions,
                    group_id=None,  # every replica needs every position
                    start_at_ms=lambda: int((time.time() - settings.location_ttl_s) * 1000),
                    prompt=False,  # positions arrive every few seconds; batches run each second
                )
                ready.append((locations, "dispatch position consumer"))
                await inline.load_availability()
                if matcher == "inline":
                    res.run(inline.run(res.stop), "dispatch-matcher")
            for consumer, name in ready:
                await wait_for_start(consumer.ready, res.tasks, name)
            app.state.runtime = DispatchRuntime(
                settings=settings,
                bus=res.bus,
                handlers=handlers,
                desk=desk,
                matcher=inline,
                feed=feed,
                metrics=metrics,
            )
            checks = res.ready_checks()
            if separate:

                async def matcher_running() -> None:
                    if not process.running or not process.metrics_file.exists():
                        raise RuntimeError("the matcher process is not running (yet)")

                checks["matcher"] = matcher_running
            app.state.ready_checks = checks
            yield

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal share
        with share_folder("polder-matcher-", matcher == "process") as share:
            async with serve(app):
                yield

    app = service_app(
        title="Polder dispatch service",
        settings=settings,
        lifespan=lifespan,
        metrics=metrics,
        routers=[router],
    )
    return app
