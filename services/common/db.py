"""PostgreSQL on asyncpg: a pool per service with an orjson jsonb codec, and SQL migrations.

Each service owns one schema (``location``, ``dispatch``, ``billing``, plus the namespace suffix
in tests) and its migrations are plain ``NNN_name.sql`` files in ``polder.<service>.migrations``,
applied in order at start-up under an advisory lock, each in its own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, TypeAlias

import asyncpg
import orjson
import structlog

from polder.common.tasks import wait_for_event

log = structlog.get_logger(__name__)

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
# What handlers get: a pooled connection (or a plain one in scripts).
Connection: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)
# Names interpolated into SQL (identifiers cannot be bound) are checked against this.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def is_identifier(name: str) -> bool:
    """Whether ``name`` is a plain SQL identifier (unquoted, lower case, at most 63 characters):
    safe to put into a statement's text (schema, table and column names)."""
    return _IDENTIFIER.fullmatch(name) is not None


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_ in ("jsonb", "json"):  # json: stored as text, e.g. outbox events (no jsonb parse)
        await conn.set_type_codec(
            type_,
            schema="pg_catalog",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            format="text",
        )


async def _no_session_reset(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN,
    RESET ALL: a round trip on every release). Services keep no session state: their advisory
    locks are transaction-scoped or released explicitly, and asyncpg still rolls back an open
    transaction on release."""


class DatabaseUnavailable(Exception):
    """The database server cannot be reached (down, restarting, unreachable)."""


async def _connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(*args, **kwargs)
    except OSError as exc:  # refused, no socket, unreachable, timed out: the server is not there
        raise DatabaseUnavailable(f"cannot reach the database: {exc}") from exc


async def create_pool(
    database_url: str, schema: str, *, min_size: int = 1, max_size: int = 10
) -> Pool:
    pool = await asyncpg.create_pool(
        database_url,
        connect=_connect,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_no_session_reset,
        server_settings={"search_path": f'"{schema}",public', "application_name": schema},
        command_timeout=30,
    )
    assert pool is not None
    return pool


def migration_files(package: str) -> list[tuple[str, str]]:
    folder = resources.files(package)
    files = sorted(e.name for e in folder.iterdir() if e.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text()) for name in files]


MIGRATION_TIMEOUT_S = 6 * 3600.0


async def migrate(pool: Pool, schema: str, package: str) -> list[str]:
    """Apply the package's migrations not yet recorded in ``<schema>.schema_migrations``."""
    if not is_identifier(schema):
        raise ValueError(f"not a schema name: {schema!r}")
    applied_now: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        # Several processes may start at once: one migrates, the others wait and see it done.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            f"migrate:{schema}",
            timeout=MIGRATION_TIMEOUT_S,  # another replica may be migrating
        )
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in migration_files(package):
            if version in done:
                continue
            # A migration may move a large table (location 005): not the pool's 30 s limit.
            await conn.execute(sql, timeout=MIGRATION_TIMEOUT_S)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied_now.append(version)
    if applied_now:
        log.info("migrations applied", schema=schema, versions=applied_now)
    return applied_now


@contextlib.asynccontextmanager
async def leadership(
    pool: Pool, key: str, stop: asyncio.Event, poll_s: float = 1.0
) -> AsyncIterator[bool]:
    """One holder of ``key`` across every replica on this database: wait until this process
    holds the advisory lock (True) or ``stop`` is set first (False). The lock lives on one
    pooled connection kept for the whole block; if the process dies, Postgres releases it
    and a waiting replica takes over within ``poll_s``."""
    async with pool.acquire() as conn:
        held = False
        while not stop.is_set():
            if await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
                held = True
                break
            await wait_for_event(stop, poll_s)
        try:
            yield held
        finally:
            if held:
                with contextlib.suppress(Exception):  # the connection may be gone already
                    await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
