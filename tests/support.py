"""Helpers for tests that run a service app for real (uvicorn on a loopback port)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from polder.common.bus import Bus, Consumer, Received
from polder.common.metrics import CommonMetrics
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import Topic
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
