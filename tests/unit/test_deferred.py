"""Joining held writes into one statement (common.deferred): pure, no database."""

from __future__ import annotations

import pytest

from polder.common.deferred import Pessimize, Tx, join


def test_join_renumbers_parameters_in_order() -> None:
    tx = Tx(conn=None)  # type: ignore[arg-type]  # join needs no connection
    tx.defer("UPDATE a SET x = $2 WHERE id = $1", 1, "x")
    tx.defer("UPDATE b SET y = $1, z = $2 WHERE id = $3", "y", "z", 3)
    sql, args = join(tx._next_group(), final=("SELECT $1::int + $2", (10, 11)))
    assert sql == (
        "WITH _w0 AS (UPDATE a SET x = $2 WHERE id = $1), "
        "_w1 AS (UPDATE b SET y = $3, z = $4 WHERE id = $5) SELECT $6::int + $7"
    )
    assert args == [1, "x", "y", "z", 3, 10, 11]


def test_dollar_quoting_is_refused() -> None:
    tx = Tx(conn=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dollar quoting"):
        tx.defer("DO $$ BEGIN END $$")


def test_a_guarded_join_leads_with_the_guard_and_gates_updates_on_it() -> None:
    tx = Tx(conn=None)  # type: ignore[arg-type]
    tx.defer("update a set x = $2\n where id = $1 or id = $3", 1, "x", 3)
    tx.defer("INSERT INTO log (what) VALUES ($1)", "x")
    guard = ("SELECT rows_unchanged(EXISTS (SELECT 1 FROM a WHERE id = $1)) AS ok", (1,))
    sql, args = join(tx._next_group(), guard=guard)
    assert sql == (
        "WITH _g AS (SELECT rows_unchanged(EXISTS (SELECT 1 FROM a WHERE id = $1)) AS ok), "
        "_w0 AS (update a set x = $3\n WHERE (id = $2 or id = $4) AND (SELECT ok FROM _g)), "
        "_w1 AS (INSERT INTO log (what) VALUES ($5)) SELECT (SELECT ok FROM _g)"
    )
    assert args == [1, 1, "x", 3, "x"]
    sql, _ = join([], final=("INSERT INTO k VALUES ($1) RETURNING 1", (7,)), guard=guard)
    assert sql.endswith(
        "_f AS (INSERT INTO k VALUES ($2) RETURNING 1) SELECT (SELECT * FROM _f) FROM _g"
    )


@pytest.mark.parametrize(
    "read",
    [
        "SELECT 1 FOR UPDATE",
        "select 1 for share",
        "SELECT 1 FOR NO KEY UPDATE",
        "SELECT 1\nFOR KEY SHARE",
    ],
)
async def test_an_optimistic_locking_read_is_refused(read: str) -> None:
    tx = Tx(conn=None, optimistic=True)  # type: ignore[arg-type]  # refused before any I/O
    with pytest.raises(Pessimize):
        await tx.fetchval(read)
