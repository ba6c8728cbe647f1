"""Held writes (common.deferred.Tx) against the real embedded Postgres: fewer round trips, the
same results as sending each statement at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from polder.common.db import Pool, create_pool
from polder.common.deferred import Pessimize, Tx
from polder.common.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[Pool]:
    schema = settings.db_schema("deferred")
    admin = await create_pool(settings.database_url, "public", max_size=1)
    await admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await admin.close()
    p = await create_pool(settings.database_url, schema, max_size=2)
    await p.execute("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, note text)")
    await p.execute("CREATE TABLE log (id bigserial PRIMARY KEY, item int, what text)")
    await p.execute("INSERT INTO items VALUES (1, 0, NULL), (2, 0, NULL)")
    try:
        yield p
    finally:
        await p.close()


async def test_held_writes_go_in_one_round_trip_and_all_take_effect(pool: Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        tx = Tx(conn)
        tx.defer("UPDATE items SET n = $2 WHERE id = $1", 1, 10, row=("items", 1))
        tx.defer("UPDATE items SET n = $2, note = $3 WHERE id = $1", 2, 20, "b", row=("items", 2))
        tx.defer("INSERT INTO log (item, what) VALUES ($1, $2)", 1, "ten")
        assert tx.round_trips == 0 and tx.held == 3
        await tx.flush()
        assert tx.round_trips == 1 and tx.held == 0
    rows = await pool.fetch("SELECT id, n, note FROM items ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, 10, None), (2, 20, "b")]
    assert await pool.fetchval("SELECT what FROM log WHERE item = 1") == "ten"


async def test_a_read_sees_every_write_held_before_it(pool: Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        tx = Tx(conn)
        tx.defer("UPDATE items SET n = n + 5 WHERE id = $1", 1, row=("items", 1))
        assert await tx.fetchval("SELECT n FROM items WHERE id = $1", 1) == 5
        assert tx.round_trips == 2  # the held write, then the read


async def test_two_writes_of_one_row_are_not_joined_and_apply_in_order(pool: Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        tx = Tx(conn)
        tx.defer("UPDATE items SET n = n + 1 WHERE id = $1", 1, row=("items", 1))
        tx.defer("UPDATE items SET n = n * 10 WHERE id = $1", 1, row=("items", 1))
        tx.defer("UPDATE items SET n = 7 WHERE id = $1", 2, row=("items", 2))
        await tx.flush()
        assert tx.round_trips == 2  # (1 once, 2) could not go in one statement
    # (0 + 1) * 10: both applied, in the order they were held
    assert await pool.fetchval("SELECT n FROM items WHERE id = 1") == 10
    assert await pool.fetchval("SELECT n FROM items WHERE id = 2") == 7


async def test_finish_sends_the_held_writes_with_the_last_statement(pool: Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        tx = Tx(conn)
        tx.defer("UPDATE items SET n = $2 WHERE id = $1", 1, 3, row=("items", 1))
        tx.defer("INSERT INTO log (item, what) VALUES ($1, $2)", 1, "three")
        got = await tx.finish("INSERT INTO log (item, what) VALUES ($1, $2) RETURNING item", 2, "x")
        assert got == 2 and tx.round_trips == 1
    assert await pool.fetchval("SELECT n FROM items WHERE id = 1") == 3
    assert await pool.fetchval("SELECT count(*) FROM log") == 2


async def test_a_failing_held_write_fails_the_transaction_and_nothing_stays(pool: Pool) -> None:
    with pytest.raises(asyncpg.UniqueViolationError):
        async with pool.acquire() as conn, conn.transaction():
            tx = Tx(conn)
            tx.defer("UPDATE items SET n = 99 WHERE id = $1", 2, row=("items", 2))
            tx.defer("INSERT INTO items (id, n) VALUES ($1, $2)", 1, 0)  # id 1 exists
            await tx.flush()
    assert await pool.fetchval("SELECT n FROM items WHERE id = 2") == 0


async def test_discard_drops_held_writes_until_one_was_sent(pool: Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        tx = Tx(conn)
        tx.defer("UPDATE items SET n = 1 WHERE id = $1", 1, row=("items", 1))
        assert await tx.fetchval("SELECT n FROM items WHERE id = 1") == 1  # flushed: sent
        assert tx.wrote
    async with pool.acquire() as conn, conn.transaction():
        tx = Tx(conn)
        assert await tx.fetchval("SELECT n FROM items WHERE id = 2") == 0
        tx.defer("UPDATE items SET n = 5 WHERE id = $1", 2, row=("items", 2))
        assert not tx.wrote  # reads alone, and a write still held
        tx.discard()
        await tx.flush()
    assert await pool.fetchval("SELECT n FROM items WHERE id = 2") == 0


# --- optimistic mode ---------------------------------------------------------------------------

_UNCHANGED = (
    Path(__file__).parents[2] / "services/dispatch/migrations/003_rows_unchanged.sql"
).read_text()


async def _read_guarded(tx: Tx, item: int) -> int:
    """Read an item unlocked and guard the step's writes on its version (as dispatch's
    ``lock_joined`` does)."""
    row = await tx.fetchrow("SELECT n, xmin FROM items WHERE id = $1", item)
    assert row is not None
    tx.guard(
        "SELECT rows_unchanged(EXISTS (SELECT 1 FROM items WHERE id = $1 AND xmin = $2::xid "
        "FOR UPDATE)) AS ok",
        item,
        row["xmin"],
    )
    return int(row["n"])


async def test_optimistic_writes_go_in_one_statement_after_their_guard(pool: Pool) -> None:
    await pool.execute(_UNCHANGED)
    async with pool.acquire() as conn:
        tx = Tx(conn, optimistic=True)
        n = await _read_guarded(tx, 1)
        tx.defer("UPDATE items SET n = $2 WHERE id = $1", 1, n + 1, row=("items", 1))
        tx.defer("UPDATE items SET note = $2 WHERE id = $1", 2, "b", row=("items", 2))
        tx.defer("INSERT INTO log (item, what) VALUES ($1, $2)", 1, "plus one")
        await tx.send()
        assert tx.round_trips == 2  # the read, then the writes with their guard
    assert [tuple(r) for r in await pool.fetch("SELECT n, note FROM items ORDER BY id")] == [
        (1, None),
        (0, "b"),
    ]
    assert await pool.fetchval("SELECT count(*) FROM log") == 1


async def test_optimistic_writes_are_all_undone_when_a_row_read_has_changed(pool: Pool) -> None:
    await pool.execute(_UNCHANGED)
    async with pool.acquire() as conn:
        tx = Tx(conn, optimistic=True)
        await _read_guarded(tx, 1)
        tx.defer("INSERT INTO log (item, what) VALUES ($1, $2)", 1, "first")
        tx.defer("UPDATE items SET note = $2 WHERE id = $1", 2, "b", row=("items", 2))
        tx.defer("UPDATE items SET n = 5 WHERE id = $1", 1, row=("items", 1))
        await pool.execute("UPDATE items SET n = n WHERE id = 1")  # a new version, same values
        with pytest.raises(asyncpg.SerializationError):
            await tx.send()
    assert await pool.fetchval("SELECT count(*) FROM log") == 0
    assert [tuple(r) for r in await pool.fetch("SELECT n, note FROM items ORDER BY id")] == [
        (0, None),
        (0, None),
    ]


async def test_an_optimistic_write_waits_for_a_concurrent_writer_then_fails(pool: Pool) -> None:
    """The guard locks the rows it checks: a write in progress is waited for, and when it
    commits the guard sees the new version."""
    await pool.execute(_UNCHANGED)
    async with pool.acquire() as conn, pool.acquire() as other:
        tx = Tx(conn, optimistic=True)
        await _read_guarded(tx, 1)
        tx.defer("UPDATE items SET n = 7 WHERE id = $1", 1, row=("items", 1))
        writer = other.transaction()
        await writer.start()
        await other.execute("UPDATE items SET n = 3 WHERE id = 1")
        flushing = asyncio.create_task(tx.send())
        await asyncio.sleep(0.2)
        assert not flushing.done()  # waiting for the other writer's lock
        await writer.commit()
        with pytest.raises(asyncpg.SerializationError):
            await flushing
    assert await pool.fetchval("SELECT n FROM items WHERE id = 1") == 3


async def test_what_needs_a_transaction_is_refused_in_optimistic_mode(pool: Pool) -> None:
    await pool.execute(_UNCHANGED)
    async with pool.acquire() as conn:
        tx = Tx(conn, optimistic=True)
        with pytest.raises(Pessimize):  # a lock would end with its statement
            await tx.fetchrow("SELECT * FROM items WHERE id = 1 FOR UPDATE")
        with pytest.raises(Pessimize):
            await tx.execute("UPDATE items SET n = 1 WHERE id = 1")
        await tx.fetchval("SELECT n FROM items WHERE id = 1")
        tx.defer("UPDATE items SET n = 1 WHERE id = $1", 1, row=("items", 1))
        with pytest.raises(Pessimize):  # sent mid-step, it would commit at once
            await tx.flush()
        with pytest.raises(Pessimize):  # no guard: nothing says the row read is unchanged
            await tx.send()
        tx = Tx(conn, optimistic=True)
        await _read_guarded(tx, 1)
        tx.defer("UPDATE items SET n = 1 WHERE id = $1", 1, row=("items", 1))
        with pytest.raises(Pessimize):  # it would not see the held write
            await tx.fetchval("SELECT n FROM items WHERE id = 1")
        with pytest.raises(Pessimize):
            tx.guard("SELECT true AS ok")  # one guard a step
        tx.defer("UPDATE items SET n = 2 WHERE id = $1", 1, row=("items", 1))
        with pytest.raises(Pessimize):  # two writes of one row cannot share a statement
            await tx.send()
    assert await pool.fetchval("SELECT n FROM items WHERE id = 1") == 0


async def test_an_optimistic_step_that_read_nothing_is_one_statement(pool: Pool) -> None:
    """No read, no guard: its one statement is the whole step (and a final statement, as for an
    Idempotency-Key's answer, rides along; when it fails, nothing of the step stays)."""
    async with pool.acquire() as conn:
        tx = Tx(conn, optimistic=True)
        tx.defer("UPDATE items SET n = n + 1 WHERE id = $1", 1, row=("items", 1))
        tx.defer("INSERT INTO log (item, what) VALUES ($1, $2)", 1, "plus one")
        got = await tx.finish("INSERT INTO log (item, what) VALUES ($1, $2) RETURNING id", 2, "k")
        assert got is not None and tx.round_trips == 1
        tx = Tx(conn, optimistic=True)
        tx.defer("UPDATE items SET n = n + 1 WHERE id = $1", 1, row=("items", 1))
        with pytest.raises(asyncpg.UniqueViolationError):
            await tx.finish("INSERT INTO items VALUES ($1, 0, NULL)", 2)
    assert await pool.fetchval("SELECT n FROM items WHERE id = 1") == 1
    assert await pool.fetchval("SELECT count(*) FROM log") == 2
