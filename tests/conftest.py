"""Shared fixtures. Integration tests run against a real embedded Postgres and a real broker,
started once per session; each test gets its own namespace (topics and schemas)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from polder.common.bus import create_topics
from polder.common.db import Pool, create_pool, migrate
from polder.common.logging import configure_logging
from polder.common.settings import Settings
from polder.runtime.infra import EmbeddedBroker, EmbeddedPostgres, ensure_database, free_port

T = TypeVar("T")


@dataclass(frozen=True)
class Infra:
    database_url: str
    kafka_bootstrap: str


@pytest.fixture(scope="session", autouse=True)
def service_logging() -> None:
    """Log as the services do when started by ``polder`` (readable lines, plain tracebacks),
    whatever test runs first. Left to structlog's defaults, an exception logged by a service
    running in the test's event loop (a relay retrying while Postgres is down) renders a rich
    traceback with every frame's locals: a second or two of the loop each time on a slow
    host, enough to starve the requests a test makes meanwhile."""
    configure_logging("INFO", json=False)


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    root: Path = tmp_path_factory.mktemp("infra")
    postgres = EmbeddedPostgres(root / "pgdata")
    broker = EmbeddedBroker(port=free_port(), log_path=root / "broker.log")
    try:
        admin_url = postgres.start()
        database_url = asyncio.run(ensure_database(admin_url, "polder_test"))
        bootstrap = broker.start()
        yield Infra(database_url, bootstrap)
    finally:
        broker.stop()
        postgres.stop()


def isolated_settings(infra: Infra, **overrides: Any) -> Settings:
    """Settings on the session's infrastructure with a namespace of their own (topics and
    schemas apart from every other test) and short consumer-group timeouts."""
    values: dict[str, Any] = {
        "database_url": infra.database_url,
        "kafka_bootstrap": infra.kafka_bootstrap,
        "namespace": f"t{uuid.uuid4().hex[:12]}",
        "log_json": False,
        "kafka_session_timeout_ms": 1500,
        "kafka_heartbeat_ms": 300,
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
async def settings(infra: Infra) -> Settings:
    """Settings with a namespace of their own; the topics exist."""
    s = isolated_settings(infra)
    await create_topics(s, embedded=True)
    return s


@pytest.fixture
async def location_pool(settings: Settings) -> AsyncIterator[Pool]:
    """A pool on this test's location schema, migrated."""
    schema = settings.db_schema("location")
    pool = await create_pool(settings.database_url, schema)
    try:
        await migrate(pool, schema, "polder.location.migrations")
        yield pool
    finally:
        await pool.close()


async def eventually(
    probe: Callable[[], Awaitable[T]], *, until: Callable[[T], bool], within: float = 15.0
) -> T:
    """Poll ``probe`` until ``until(result)`` holds; fail with the last result at the deadline."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s; last result: {result!r}")
        await asyncio.sleep(0.05)


@pytest.fixture
def unused_port() -> int:
    return free_port()
