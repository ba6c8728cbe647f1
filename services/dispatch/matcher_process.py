"""The matcher in its own process, so batches never wait behind the API's requests.

The API process starts it (``common.children.ChildProcess``), restarts it if it dies, and it
dies with the API process. It has its own pool, producer, position index and outbox relay (the
only relay while it runs: it publishes the API's events too). Its view of the available workers
is loaded from Postgres at start and then follows ``polder.driver.events`` (see
``domain/availability``). Postgres stays the truth: a batch locks its orders ``searching`` and
its workers ``idle``, so a second matcher (another API replica's) could only find its choices
taken, never double-book; an advisory lock keeps all but one of them idle anyway.

Its metrics reach the API's ``/metrics`` through ``common.children``; its supply snapshots reach
every API replica's surge model (which prices quotes) through Postgres (``dispatch.supply``).

    python -m polder.dispatch.matcher_process   (settings from POLDER_* as for any service)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from polder.common import retention
from polder.common.bus import Received
from polder.common.children import child_main, run_until_stopped, write_metrics
from polder.common.db import Pool, leadership
from polder.common.geoindex import LocationIndex
from polder.common.outbox import OutboxRelay
from polder.common.positions import apply_pings
from polder.common.service import service_resources
from polder.common.settings import Settings
from polder.common.tasks import wait_for_start
from polder.common.topics import DRIVER_EVENTS, DRIVER_LOCATIONS
from polder.dispatch.domain.availability import Availability
from polder.dispatch.domain.matching import GreatCircleEta
from polder.dispatch.domain.surge import SurgeModel
from polder.dispatch.handlers import Handlers
from polder.dispatch.matcher import Matcher
from polder.dispatch.metrics import DispatchMetrics
from polder.dispatch.retention import DecisionRetention
from polder.dispatch.supply import SupplyWriter

log = structlog.get_logger(__name__)

SERVICE = "dispatch"
MIGRATIONS = "polder.dispatch.migrations"
# The relay here publishes every process's outbox rows: the API's are found by polling.
RELAY_POLL_S = 0.02
RELAY_BATCH = 2000


def build_matcher(
    settings: Settings,
    handlers: Handlers,
    metrics: DispatchMetrics,
    availability: Availability,
    surge: SurgeModel,
) -> Matcher:
    return Matcher(
        handlers=handlers,
        positions=LocationIndex(settings.index_resolution, settings.location_ttl_s),
        eta=GreatCircleEta(road_factor=settings.road_factor, speed_mps=settings.city_speed_mps),
        settings=settings,
        metrics=metrics,
        surge=surge,
        availability=availability,
    )


async def run(settings: Settings, share: Path | None, stop: asyncio.Event) -> None:
    """``share``: a folder the API process reads this one's metrics from."""
    metrics = DispatchMetrics(CollectorRegistry())
    # Three connections stay taken for good (the matcher's, the relay's and the retention job's
    # locks); a batch, the supply writer, a retention pass and the relay's pruning each take one
    # while they work.
    async with service_resources(settings, SERVICE, MIGRATIONS, metrics, pool_size=8) as res:
        relay = OutboxRelay(
            res.pool,
            res.bus,
            batch=RELAY_BATCH,
            idle_poll_s=RELAY_POLL_S,
            keep_sent_s=settings.outbox_keep_h * 3600,
        )
        availability = Availability()
        handlers = Handlers(res.pool, res.bus, relay, metrics, availability)
        matcher = build_matcher(settings, handlers, metrics, availability, SurgeModel())
        supply = SupplyWriter(res.pool, keep_s=2 * matcher.surge.config.window_s)
        matcher.on_supply = supply
        res.run(supply.run(res.stop), "dispatch-supply")

        async def track_positions(records: Sequence[Received]) -> None:
            apply_pings(matcher.positions, records)

        async def follow_workers(records: Sequence[Received]) -> None:
            for r in records:
                availability.apply_event(r.event.data, r.event.time.timestamp())

        started_ms = int(time.time() * 1000) - 1000
        positions = res.consumer(
            "dispatch-positions",
            [DRIVER_LOCATIONS],
            track_positions,
            group_id=None,
            start_at_ms=lambda: int((time.time() - settings.location_ttl_s) * 1000),
            prompt=False,  # positions arrive every few seconds; batches run each second
        )
        workers = res.consumer(
            "dispatch-workers",
            [DRIVER_EVENTS],
            follow_workers,
            group_id=None,
            # Every event committed after the snapshot below is published after it too; older
            # ones are ignored by their seq.
            start_at_ms=lambda: started_ms,
            prompt=False,  # the matcher follows its own commits at once; the API's can wait
        )
        await wait_for_start(positions.ready, res.tasks, "matcher position consumer")
        await wait_for_start(workers.ready, res.tasks, "matcher worker-state consumer")
        loaded = await matcher.load_availability()
        log.info("matcher started", workers=loaded, available=len(availability))
        res.run(relay.run(res.stop), "dispatch-outbox")
        retention.start(
            res, DecisionRetention(res.pool, metrics), retention_h=settings.decisions_keep_h
        )
        res.run(_lead(res.pool, settings, matcher, res.stop), "dispatch-matcher")
        if share is not None:
            res.run(write_metrics(metrics.registry, share, res.stop), "matcher-metrics")
        await run_until_stopped(res, stop)


async def _lead(pool: Pool, settings: Settings, matcher: Matcher, stop: asyncio.Event) -> None:
    """Match only while holding the schema's matcher lock (one matcher at a time)."""
    async with leadership(pool, f"matcher:{settings.db_schema(SERVICE)}", stop) as held:
        if held:
            await matcher.run(stop)


def main() -> None:
    child_main(run)


if __name__ == "__main__":
    main()
