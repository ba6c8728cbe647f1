"""Helpers for tests that run a service app for real (uvicorn on a loopback port)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from polder.common.bus import Bus, Consumer, Received
from polder.common.db import Connection, migration_files
from polder.common.metrics import CommonMetrics
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DRIVER_EVENTS, Topic
from polder.runtime.infra import free_port
from tests.conftest import eventually


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run the app (lifespan included) on a free port; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped before it started")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


async def read_topic(
    settings: Settings,
    topic: Topic,
    until: Callable[[list[Received]], bool],
    within: float = 20,
) -> list[Received]:
    """Read a topic from the start until ``until(records)`` holds."""
    seen: list[Received] = []

    async def handler(records: Sequence[Received]) -> None:
        seen.extend(records)

    bus = Bus(settings, SchemaRegistry.load(), source="reader")
    await bus.start()
    stop = asyncio.Event()
    consumer = Consumer(
        name="reader",
        settings=settings,
        registry=bus.registry,
        bus=bus,
        metrics=CommonMetrics(CollectorRegistry()),
        topics=[topic],
        handler=handler,
        group_id=None,
        start_at_ms=lambda: 0,
    )
    task = asyncio.create_task(consumer.run(stop))
    try:

        async def probe() -> list[Received]:
            return seen

        await eventually(probe, until=until, within=within)
    finally:
        stop.set()
        await task
        await bus.stop()
    return seen


# Per-driver sequence numbers of the status events tests publish: later calls, higher numbers.
_SEQ = itertools.count(int(time.time() * 1000))
_CAUSE = {"idle": "went_online", "offline": "went_offline", "break": "took_break"}


async def publish_status(settings: Settings, *drivers: str, to: str = "idle") -> None:
    """Publish the state change dispatch would publish when each driver goes online (or
    ``to`` another state): for tests that run the location service without dispatch."""
    bus = Bus(settings, SchemaRegistry.load(), source="polder/dispatch")
    await bus.start()
    try:
        for driver in drivers:
            event = bus.event(
                "polder.driver.state_changed.v1",
                subject=driver,
                data={
                    "driver_id": driver,
                    "seq": next(_SEQ),
                    "from": "offline" if to != "offline" else "idle",
                    "to": to,
                    "cause": _CAUSE.get(to, "went_online"),
                },
                time=datetime.now(UTC),
            )
            await bus.publish(DRIVER_EVENTS, driver, event)
    finally:
        await bus.stop()


async def on_shift(app: FastAPI, *drivers: str, expected: bool = True) -> None:
    """Wait until the running location app knows each driver is on shift (or not)."""

    async def known() -> list[bool]:
        return [app.state.runtime.statuses.on_shift(d) for d in drivers]

    await eventually(known, until=lambda got: all(g == expected for g in got))


async def go_online(settings: Settings, app: FastAPI, *drivers: str) -> None:
    """The drivers go online as the location service sees it (no dispatch needed)."""
    await publish_status(settings, *drivers)
    await on_shift(app, *drivers)


async def migrate_before(conn: Connection, schema: str, package: str, version: str) -> None:
    """Apply ``package``'s migrations older than ``version`` into ``schema`` (created), as an
    installation that stopped there would have them: for tests of the migration ``version``."""
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(
        "CREATE TABLE schema_migrations "
        "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for name, sql in migration_files(package):
        if name >= version:
            break
        await conn.execute(sql)
        await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", name)
