"""What every service's lifespan opens and closes: its pool (migrated), its producer, a stop
event for its background tasks, and the readiness checks over them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from polder.common.bus import MAX_RECORDS, Bus, Consumer, Handler, StartOffsets
from polder.common.db import Pool, create_pool, migrate
from polder.common.http import ReadyCheck
from polder.common.metrics import CommonMetrics, PoolCollector
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.tasks import stop_tasks, tasks_alive, watch_loop_lag
from polder.common.topics import Topic


@dataclass
class Resources:
    settings: Settings
    service: str
    pool: Pool
    bus: Bus
    metrics: CommonMetrics
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    side_pools: dict[str, Pool] = field(default_factory=dict)

    def run(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Start a background task; it is stopped (then cancelled) when the service stops."""
        self.tasks.append(asyncio.create_task(coro, name=name))

    async def side_pool(self, name: str, max_size: int) -> Pool:
        """A small pool of the service's schema for work that must not queue behind requests
        for a connection of the main pool (closed with it; ``name`` labels its metrics)."""
        pool = await create_pool(
            self.settings.database_url, self.settings.db_schema(self.service), max_size=max_size
        )
        self.side_pools[name] = pool
        return pool

    def pools(self) -> dict[str, Pool]:
        return {"main": self.pool, **self.side_pools}

    def consumer(
        self,
        name: str,
        topics: Sequence[Topic],
        handler: Handler,
        *,
        group_id: str | None,
        start_at_ms: Callable[[], int] | None = None,
        start_offsets: StartOffsets | None = None,
        prompt: bool,
        max_records: int = MAX_RECORDS,
    ) -> Consumer:
        """``prompt``: someone waits on this consumer's delay, so it fetches with the short wait
        (see ``Consumer``); each consumer says which it is."""
        consumer = Consumer(
            name=name,
            settings=self.settings,
            registry=self.bus.registry,
            bus=self.bus,
            metrics=self.metrics,
            topics=topics,
            handler=handler,
            group_id=group_id,
            start_at_ms=start_at_ms,
            start_offsets=start_offsets,
            max_records=max_records,
            prompt=prompt,
        )
        self.run(consumer.run(self.stop), name)
        return consumer

    def ready_checks(self) -> dict[str, ReadyCheck]:
        async def database() -> None:
            await self.pool.execute("SELECT 1")

        async def tasks() -> None:
            await tasks_alive(self.tasks)

        return {"database": database, "broker": self.bus.ping, "tasks": tasks}


@contextlib.asynccontextmanager
async def service_resources(
    settings: Settings,
    service: str,
    migrations: str,
    metrics: CommonMetrics,
    *,
    pool_size: int = 10,
    linger_ms: int | None = None,
) -> AsyncIterator[Resources]:
    """``linger_ms``: the producer's, if not ``kafka_linger_ms`` (see ``Bus``)."""
    schema = settings.db_schema(service)
    size = settings.db_pool_size or pool_size
    pool = await create_pool(settings.database_url, schema, max_size=size)
    bus = Bus(settings, SchemaRegistry.load(), source=f"polder/{service}", linger_ms=linger_ms)
    resources = Resources(settings, service, pool, bus, metrics)
    pool_metrics, registry = PoolCollector(resources.pools), metrics.registry
    registry.register(pool_metrics)
    try:
        await migrate(pool, schema, migrations)
        await bus.start()
        resources.run(watch_loop_lag(metrics.loop_lag.observe, resources.stop), "loop-lag")
        yield resources
    finally:
        resources.stop.set()
        await stop_tasks(resources.tasks)
        await bus.stop()
        for side in resources.side_pools.values():
            await side.close()
        await pool.close()
        registry.unregister(pool_metrics)
