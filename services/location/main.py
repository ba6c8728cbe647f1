"""Composition root of the location service: settings → pool, producer → app + consumers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from polder.common import retention
from polder.common.children import ChildProcess, MergedRegistry, share_folder
from polder.common.geoindex import LocationIndex
from polder.common.http import amend_openapi, document_models, service_app
from polder.common.idempotency import RecentAnswers
from polder.common.service import service_resources
from polder.common.settings import Settings
from polder.common.tasks import wait_for_event, wait_for_start
from polder.common.topics import DRIVER_EVENTS, DRIVER_LOCATIONS
from polder.location.api import router
from polder.location.domain.pings import Limits
from polder.location.domain.status import DriverStatuses
from polder.location.handlers import (
    STATUS_CONSUMER,
    IndexUpdater,
    Ingest,
    StatusFollower,
    StatusWriter,
    consume_traces,
)
from polder.location.metrics import LocationMetrics
from polder.location.models import PingBatchIn
from polder.location.retention import TraceRetention
from polder.location.runtime import LocationRuntime

SERVICE = "location"
MIGRATIONS = "polder.location.migrations"
INDEX_FETCH_RECORDS = 100
# Answers to keyed ingest requests: longer than any client's retry window, and bounded (an
# answer is ~100 bytes).
ANSWERS_KEPT_S = 600.0
ANSWERS_MAX = 200_000


def build_app(settings: Settings, *, traces: Literal["process", "inline"] = "process") -> FastAPI:
    """``traces``: the trace writer in a process of its own (as deployed: it no longer takes
    turns with ingest on this event loop) or as a task here."""
    own_registry = CollectorRegistry()
    metrics = LocationMetrics(own_registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with share_folder("polder-traces-", traces == "process") as share:
            async with serve(app, share):
                yield

    @contextlib.asynccontextmanager
    async def serve(app: FastAPI, share: Path | None) -> AsyncIterator[None]:
        async with service_resources(
            settings, SERVICE, MIGRATIONS, metrics, linger_ms=settings.kafka_ping_linger_ms
        ) as res:
            index = LocationIndex(settings.index_resolution, settings.location_ttl_s)
            limits = Limits(
                settings.max_future_skew_s, settings.max_speed_mps, settings.max_ping_age_s
            )
            statuses = DriverStatuses()
            rt = LocationRuntime(
                settings=settings,
                index=index,
                statuses=statuses,
                ingest=Ingest(
                    res.bus, index, limits, metrics, statuses, settings.publish_timeout_s
                ),
                throttle=app.state.throttle,
                metrics=metrics,
                pool=res.pool,
                answers=RecentAnswers(ANSWERS_KEPT_S, ANSWERS_MAX),
            )
            indexer = res.consumer(
                "location-index",
                [DRIVER_LOCATIONS],
                IndexUpdater(index, metrics),
                group_id=None,  # every replica holds the whole index
                # Small fetches: applying one runs on the request loop without a pause, and a
                # 2000-event fetch (100 000 pings) held ingest for ~100 ms; 100 events are ~5 ms.
                max_records=INDEX_FETCH_RECORDS,
                prompt=True,  # ping→index latency is a target
                start_at_ms=lambda: int((time.time() - settings.location_ttl_s) * 1000),
            )
            # Who is on shift: one group stores it, every replica follows it in memory from
            # the stored snapshot on (no replica reads dispatch's tables).
            res.consumer(
                STATUS_CONSUMER,
                [DRIVER_EVENTS],
                StatusWriter(res.pool),
                group_id=STATUS_CONSUMER,
                prompt=False,  # the table serves restarts; ingest reads the map below
            )
            follower = StatusFollower(statuses, metrics)
            statuses_followed = res.consumer(
                "location-status-map",
                [DRIVER_EVENTS],
                follower,
                group_id=None,
                start_offsets=lambda: follower.load(res.pool),
                prompt=True,  # a worker who just went online is waiting to be heard
            )
            if share is None:
                consume_traces(res, settings, metrics)
            else:
                process = ChildProcess("polder.location.trace_process", settings, share)
                metrics.registry = MergedRegistry(own_registry, process.metrics_file)
                res.run(process.run(res.stop), "location-trace-process")
                app.state.trace_process = process
            res.run(_expire_loop(rt, res.stop), "location-expiry")
            retention.start(
                res,
                TraceRetention(res.pool, metrics, settings.index_resolution),
                retention_h=settings.raw_ping_retention_h,
            )
            await wait_for_start(indexer.ready, res.tasks, "location index consumer")
            await wait_for_start(statuses_followed.ready, res.tasks, "location status consumer")
            app.state.runtime = rt
            app.state.ready_checks = res.ready_checks()
            yield

    app = service_app(
        title="Polder location service",
        settings=settings,
        lifespan=lifespan,
        metrics=metrics,
        routers=[router],
    )
    document_models(app, PingBatchIn)

    def supply_resolution(doc: dict[str, Any]) -> None:
        # the finest supply resolution is the index's, which settings choose
        for param in doc["paths"]["/v1/supply"]["get"]["parameters"]:
            if param["name"] == "res":
                param["schema"]["maximum"] = settings.index_resolution

    amend_openapi(app, supply_resolution)
    return app


async def _expire_loop(rt: LocationRuntime, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await wait_for_event(stop, 1.0)
        rt.index.expire(time.time())
        rt.ingest.forget_expired()
        rt.metrics.indexed_drivers.set(len(rt.index))
