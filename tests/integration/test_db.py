"""Migrations and the pool against the real embedded Postgres."""

from __future__ import annotations

import asyncio

import pytest

from polder.common.db import create_pool, migrate, migration_files
from polder.common.settings import Settings

pytestmark = pytest.mark.integration

PACKAGE = "polder.location.migrations"


async def test_migrations_apply_once_even_when_started_concurrently(settings: Settings) -> None:
    schema = settings.db_schema("location")
    pools = [await create_pool(settings.database_url, schema, max_size=2) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(p, schema, PACKAGE) for p in pools))
        versions = [v for v, _ in migration_files(PACKAGE)]
        assert sorted(results, key=len) == [[], [], versions]
        assert await migrate(pools[0], schema, PACKAGE) == []
        recorded = await pools[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in recorded] == versions
        tables = await pools[0].fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
        assert {"pings", "trace_batches", "schema_migrations"} <= {t["table_name"] for t in tables}
    finally:
        for p in pools:
            await p.close()


async def test_pool_speaks_jsonb_with_orjson_and_uses_the_service_schema(
    settings: Settings,
) -> None:
    schema = settings.db_schema("location")
    pool = await create_pool(settings.database_url, schema)
    try:
        await migrate(pool, schema, PACKAGE)
        assert await pool.fetchval("SELECT current_schema()") == schema
        doc = {"a": [1, 2.5, None], "b": {"c": "é"}}
        assert await pool.fetchval("SELECT $1::jsonb", doc) == doc
    finally:
        await pool.close()


async def test_schema_names_are_checked_before_they_reach_sql(settings: Settings) -> None:
    pool = await create_pool(settings.database_url, "public", max_size=1)
    try:
        with pytest.raises(ValueError):
            await migrate(pool, 'x"; DROP TABLE y; --', PACKAGE)
    finally:
        await pool.close()
