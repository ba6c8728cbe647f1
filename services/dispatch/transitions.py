"""Row-level state changes inside a caller's transaction, each returning the new row and the
event it causes. The changes are held (``Tx.defer``) and go to Postgres with the transaction's
next read or at its end; the new rows are computed here, not read back.

Lock order: an order first; an offer, a trip or a worker is locked only while its order is held
(set_status locks the order of the worker's pending offer before the worker and the offer; a
trip is locked last, by the write that changes it), so concurrent accept / decline / expire /
cancel queue on the order, never deadlock, and exactly one of them wins.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from polder.common.bus import Bus
from polder.common.db import is_identifier
from polder.common.deferred import Tx
from polder.common.outbox import Outgoing
from polder.common.topics import DISPATCH, DRIVER_EVENTS, ORDERS
from polder.dispatch.domain.states import (
    NEW_WAIT_AFTER,
    Cause,
    OrderStatus,
    WorkerStatus,
    next_order_status,
    next_worker_status,
)

# A transaction whose writes are held until its next read (common.deferred): the changes
# below are held, and the rows they return are computed here, not read back.
Conn = Tx
Row: TypeAlias = Mapping[str, Any]


def _id(value: Any) -> str | None:
    return None if value is None else str(value)


async def lock_order(conn: Conn, order_id: uuid.UUID) -> Row | None:
    row: Row | None = await conn.fetchrow(
        "SELECT * FROM orders WHERE order_id = $1 FOR UPDATE", order_id
    )
    return row


async def lock_worker(conn: Conn, driver_id: str, now: datetime) -> Row:
    """Lock the worker's row, creating it (offline) on first sight (one round trip when it
    exists, which is every time but the first)."""
    row: Row | None = await conn.fetchrow(
        "SELECT * FROM workers WHERE driver_id = $1 FOR UPDATE", driver_id
    )
    if row is not None:
        return row
    await conn.execute(
        "INSERT INTO workers (driver_id, status, status_since) VALUES ($1, 'offline', $2) "
        "ON CONFLICT DO NOTHING",
        driver_id,
        now,
    )
    row = await conn.fetchrow("SELECT * FROM workers WHERE driver_id = $1 FOR UPDATE", driver_id)
    assert row is not None
    return row


async def lock_offer(conn: Conn, offer_id: uuid.UUID) -> Row | None:
    row: Row | None = await conn.fetchrow(
        "SELECT * FROM offers WHERE offer_id = $1 FOR UPDATE", offer_id
    )
    return row


# Separates the tables' columns in a joined lock's row (``lock_joined``).
_SEP = "__next_table__"


async def lock_joined(
    conn: Conn, tables: str, where: str, *args: Any, read: frozenset[str] = frozenset()
) -> list[Row] | None:
    """Lock one row of each of several joined tables in ONE round trip; each row's columns.

    ``tables`` is ``"orders o, offers f, workers w"``: alias order is lock order (Postgres
    locks a joined row's tables in the order of ``FOR UPDATE OF``), so list them as the module
    says (orders, offers and trips, workers). Aliases in ``read`` are read, not locked.
    ``where`` joins and selects them. None if no row matches."""
    aliases = [t.split()[1] for t in tables.split(",")]
    columns = f', NULL AS "{_SEP}", '.join(f"{a}.*" for a in aliases)
    locked = [a for a in aliases if a not in read]
    if conn.optimistic:
        return await _read_guarded(conn, tables, where, args, columns, locked)
    row = await conn.fetchrow(
        f"SELECT {columns} FROM {tables} WHERE {where} "  # noqa: S608
        f"FOR UPDATE OF {', '.join(locked)}",
        *args,
    )
    return None if row is None else _split(row.items())


async def _read_guarded(
    conn: Conn, tables: str, where: str, args: tuple[Any, ...], columns: str, locked: list[str]
) -> list[Row] | None:
    """``lock_joined`` in an optimistic step: read the rows without locks, with each locked
    table's row version (``xmin``), and guard the step's writes with a query that locks the
    same rows, in the same order, if and only if none has a new version (common.deferred)."""
    versions = ", ".join(f'{a}.xmin AS "{_XMIN}{a}"' for a in locked)
    row = await conn.fetchrow(
        f"SELECT {columns}, {versions} FROM {tables} WHERE {where}",  # noqa: S608
        *args,
    )
    if row is None:
        return None
    n = len(args)
    same = " AND ".join(f"{a}.xmin = ${n + i + 1}::xid" for i, a in enumerate(locked))
    conn.guard(
        f"SELECT rows_unchanged(EXISTS (SELECT 1 FROM {tables} WHERE ({where}) "  # noqa: S608
        f"AND {same} FOR UPDATE OF {', '.join(locked)})) AS ok",
        *args,
        *(row[f"{_XMIN}{a}"] for a in locked),
    )
    return _split((k, v) for k, v in row.items() if not k.startswith(_XMIN))


# The row versions an optimistic read selects after the tables' columns.
_XMIN = "__xmin_"


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows of one table for ``lock_many``: those whose ``key`` (of SQL type ``key_type``) is in
    ``keys`` and that ``where`` (SQL over the table's columns, no parameters) still selects."""

    table: str
    key: str
    key_type: str
    keys: Sequence[Any]
    where: str = "true"

    def __post_init__(self) -> None:
        for name in (self.table, self.key, self.key_type):
            if not is_identifier(name):
                raise ValueError(f"not a plain SQL name: {name!r}")

    def _select(self, extra: str = "") -> str:
        return (
            f"SELECT *{extra} FROM {self.table} "  # noqa: S608 (names checked above)
            f"WHERE {self.key} = ANY($1::{self.key_type}[]) AND ({self.where}) "
            f"ORDER BY {self.key}"
        )


async def lock_many(conn: Conn, *tables: Rows) -> list[dict[Any, Row]]:
    """Lock many rows of several tables, table after table in the order given and each table's
    by key (the module's lock order: orders before workers), in one round trip per table;
    each table's rows by key. A row ``where`` no longer selects is left out (and not locked).

    In an optimistic step the rows are read without locks, with their versions, and the step
    is guarded by ONE query that locks the same rows in the same order if and only if every
    one still has its version (common.deferred): a batch's part then costs three round trips
    (two reads, and its writes with the guard) instead of five (begin, two locks, the writes,
    commit)."""
    if not conn.optimistic:
        return [
            {r[t.key]: r for r in await conn.fetch(t._select() + " FOR UPDATE", list(t.keys))}
            for t in tables
        ]
    found: list[dict[Any, Row]] = []
    checks, args = [], []
    for i, t in enumerate(tables):
        rows = await conn.fetch(t._select(f', xmin AS "{_XMIN}"'), list(t.keys))
        found.append({r[t.key]: _without_version(r) for r in rows})
        n = len(args)
        checks.append(
            f"(SELECT count(*) FROM (SELECT 1 FROM {t.table} t "  # noqa: S608 (checked names)
            f"JOIN unnest(${n + 1}::{t.key_type}[], ${n + 2}::xid[]) AS v(k, x) "
            f"ON t.{t.key} = v.k AND t.xmin = v.x WHERE t.{t.key} = ANY(${n + 1}) "
            f"ORDER BY t.{t.key} FOR UPDATE OF t) "
            f"AS locked{i}) = ${n + 3}"
        )
        args += [[r[t.key] for r in rows], [r[_XMIN] for r in rows], len(rows)]
    # ``= ANY`` beside the join: with it Postgres finds the rows through the key's index (a
    # bitmap scan, 0.7 ms for 64 of 10 000 workers); joined to unnest alone it estimated the
    # whole table cheaper and read all of it (3.8 ms), inside the batch's critical statement.
    # Nested CASEs, not AND (whose terms Postgres may take in any order): the tables lock in
    # the order given, and none after the first whose rows changed.
    unchanged = "true"
    for check in reversed(checks):
        unchanged = f"CASE WHEN {check} THEN {unchanged} ELSE false END"
    conn.guard(f"SELECT rows_unchanged({unchanged}) AS ok", *args)
    return found


def _without_version(row: Row) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != _XMIN}


def _split(items: Iterable[tuple[str, Any]]) -> list[Row]:
    parts: list[dict[str, Any]] = [{}]
    for name, value in items:
        if name == _SEP:
            parts.append({})
        else:
            parts[-1][name] = value
    return parts


def not_before(now: datetime, previous: datetime | None) -> datetime:
    """``now``, or the time of the row's previous change if that is later."""
    return previous if previous is not None and previous > now else now


def settled(now: datetime, *rows: Row | None) -> datetime:
    """The time one transaction's changes take effect: ``now``, or the latest previous change of
    a locked row (a worker's ``status_since``, an order's ``updated_at``, an offer's
    ``created_at``) if later. One time for every stamp and event of the transaction."""
    for row in rows:
        if row is None:
            continue
        for column in ("status_since", "updated_at", "created_at"):
            if column in row.keys():  # noqa: SIM118 (asyncpg Records are not dicts)
                now = not_before(now, row[column])
    return now


def worker_event(
    bus: Bus,
    driver_id: str,
    seq: int,
    before: WorkerStatus,
    after: WorkerStatus,
    cause: Cause,
    now: datetime,
    *,
    offer_id: uuid.UUID | None = None,
    trip_id: uuid.UUID | None = None,
    order_id: uuid.UUID | None = None,
    kind: str | None = None,
) -> Outgoing:
    data = {
        "driver_id": driver_id,
        "seq": seq,
        "from": before.value,
        "to": after.value,
        "cause": cause.value,
        "order_id": _id(order_id),
        "trip_id": _id(trip_id),
        "offer_id": _id(offer_id),
        "kind": kind,
    }
    return (
        DRIVER_EVENTS,
        driver_id,
        bus.event("polder.driver.state_changed.v1", driver_id, data, now),
    )


def order_event(
    bus: Bus,
    order_id: uuid.UUID,
    before: OrderStatus,
    after: OrderStatus,
    cause: Cause,
    now: datetime,
    *,
    driver_id: str | None = None,
    trip_id: uuid.UUID | None = None,
    offer_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> Outgoing:
    data = {
        "order_id": str(order_id),
        "from": before.value,
        "to": after.value,
        "cause": cause.value,
        "driver_id": driver_id,
        "trip_id": _id(trip_id),
        "offer_id": _id(offer_id),
        "reason": reason,
    }
    key = str(order_id)
    return ORDERS, key, bus.event("polder.order.status_changed.v1", key, data, now)


def move_worker(
    conn: Conn,
    bus: Bus,
    worker: Row,
    cause: Cause,
    now: datetime,
    *,
    offer_id: uuid.UUID | None = None,
    trip_id: uuid.UUID | None = None,
    order_id: uuid.UUID | None = None,
    kind: str | None = None,
) -> tuple[Row, Outgoing]:
    """Apply ``cause`` to a locked worker row; returns the new row and its state event.

    The change takes effect no earlier than the worker's previous one: a request stamped when it
    arrived may have waited for the worker's lock behind a change stamped later (the matcher's
    offer), and billing orders a worker's changes by their server time."""
    now = not_before(now, worker["status_since"])
    before = WorkerStatus(worker["status"])
    after = next_worker_status(before, cause)
    if after is WorkerStatus.IDLE and cause in NEW_WAIT_AFTER:
        waiting_since = now
    elif after in (WorkerStatus.IDLE, WorkerStatus.OFFERED):
        waiting_since = worker["waiting_since"]
    else:
        waiting_since = None
    new = {
        **worker,
        "status": after.value,
        "status_since": now,
        "waiting_since": waiting_since,
        "offer_id": offer_id if after is WorkerStatus.OFFERED else None,
        "trip_id": trip_id if after in _ON_TRIP else None,
        "seq": worker["seq"] + 1,
    }
    conn.defer(
        "UPDATE workers SET status = $2, status_since = $3, waiting_since = $4, offer_id = $5, "
        "trip_id = $6, seq = $7 WHERE driver_id = $1",
        *(new[c] for c in _WORKER_WRITTEN),
        row=("workers", worker["driver_id"]),
    )
    event = worker_event(
        bus,
        worker["driver_id"],
        new["seq"],
        before,
        after,
        cause,
        now,
        offer_id=offer_id,
        trip_id=trip_id,
        order_id=order_id,
        kind=kind,
    )
    return new, event


_WORKER_WRITTEN = (
    "driver_id",
    "status",
    "status_since",
    "waiting_since",
    "offer_id",
    "trip_id",
    "seq",
)

_ON_TRIP = frozenset(
    {
        WorkerStatus.EN_ROUTE_PICKUP,
        WorkerStatus.AT_PICKUP,
        WorkerStatus.ON_TRIP,
        WorkerStatus.AT_DROPOFF,
    }
)


def move_order(
    conn: Conn,
    bus: Bus,
    order: Row,
    cause: Cause,
    now: datetime,
    *,
    reason: str | None = None,
    **columns: Any,
) -> tuple[Row, Outgoing]:
    """Apply ``cause`` to a locked order row, setting any extra ``columns``; returns its event.
    Like a worker's, an order's change takes effect no earlier than its previous one."""
    now = not_before(now, order["updated_at"])
    before = OrderStatus(order["status"])
    after = next_order_status(before, cause)
    names = ["status", "updated_at", *columns]
    values = [after.value, now, *columns.values()]
    assignments = ", ".join(f"{n} = ${i + 2}" for i, n in enumerate(names))
    conn.defer(
        f"UPDATE orders SET {assignments} WHERE order_id = $1",  # noqa: S608 (fixed names)
        order["order_id"],
        *values,
        row=("orders", order["order_id"]),
    )
    new = {**order, **dict(zip(names, values, strict=True))}
    event = order_event(
        bus,
        order["order_id"],
        before,
        after,
        cause,
        now,
        driver_id=new["driver_id"],
        trip_id=new["trip_id"],
        offer_id=new["offer_id"],
        reason=reason,
    )
    return new, event


def resolve_offer(
    conn: Conn,
    bus: Bus,
    offer: Row,
    outcome: str,
    now: datetime,
    trip_id: uuid.UUID | None = None,
) -> Outgoing:
    conn.defer(
        "UPDATE offers SET status = $2, answered_at = $3 WHERE offer_id = $1",
        offer["offer_id"],
        outcome,
        now,
        row=("offers", offer["offer_id"]),
    )
    data = {
        "offer_id": str(offer["offer_id"]),
        "order_id": str(offer["order_id"]),
        "driver_id": offer["driver_id"],
        "outcome": outcome,
        "trip_id": _id(trip_id),
    }
    event = bus.event("polder.dispatch.offer_resolved.v1", str(offer["order_id"]), data, now)
    return DISPATCH, str(offer["order_id"]), event


OFFER_OUTCOME_CAUSE = {"declined": Cause.OFFER_DECLINED, "expired": Cause.OFFER_EXPIRED}


def release_offer(
    conn: Conn, bus: Bus, order: Row, offer: Row, worker: Row, outcome: str, now: datetime
) -> tuple[Row, Row, list[Outgoing]]:
    """A declined or expired offer: the order searches again without that worker, who is idle
    again (still waiting since before the offer)."""
    cause = OFFER_OUTCOME_CAUSE[outcome]
    events = [resolve_offer(conn, bus, offer, outcome, now)]
    excluded = list(order["excluded"])
    if offer["driver_id"] not in excluded:
        excluded.append(offer["driver_id"])
    order, order_event = move_order(conn, bus, order, cause, now, offer_id=None, excluded=excluded)
    worker, worker_event = move_worker(
        conn, bus, worker, cause, now, order_id=order["order_id"], kind=order["kind"]
    )
    return order, worker, [*events, order_event, worker_event]
