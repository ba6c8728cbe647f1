"""Joining held writes into one statement (common.deferred): pure, no database."""

from __future__ import annotations

import pytest

from polder.common.deferred import Tx, join


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
