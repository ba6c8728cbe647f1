"""A transaction whose writes travel together: each write is held until the transaction next reads
or finishes, then the held writes go to Postgres as ONE statement (each a data-modifying CTE).

A request that locks three rows and writes five (trip step: worker, order, trip, outbox, the
Idempotency-Key's answer) spent most of its time, and most of the service's CPU, in round
trips: one per statement. Held writes cost one round trip together, or none when they ride
along with the transaction's last statement (``finish``).

Safety rules:

* every read (``fetch``, ``fetchrow``, ``fetchval``, ``execute``) sends the held writes first, so
  a read sees every write made before it, as if each had been sent at once;
* two held writes of the same row (the same ``row`` key) are never put in one statement: CTEs
  of one statement see one snapshot, and Postgres applies only one of two updates of a row;
* reads (``fetch*``) must not write: ``wrote`` (whether ``discard`` can still undo everything)
  counts held writes and ``execute`` only;
* the statements in one batch must not depend on each other's effects (they share a snapshot):
  ``row`` keys are how a caller says which rows a write touches; writes of different rows, and
  inserts that no other held write reads, are independent.

Parameters are renumbered when statements are joined, so a held statement is written as it
would be sent alone (``$1``, ``$2``…). Statements must not use dollar quoting.

Optimistic mode (``Tx(conn, optimistic=True)``, no transaction around it): a step reads its rows
without locking them and registers a ``guard``, a query that locks them again and raises
(SQLSTATE 40001, ``asyncpg.SerializationError``) if any changed since the read. All its writes
then go in ONE statement led by the guard (updates wait for it), so they apply together or not
at all: a read and a write, two round trips, where a transaction takes four (BEGIN, the locking
read, the writes, COMMIT). A step that read nothing needs no guard: its one statement is the
whole step. The guard must cover every row the step's decision rests on (dispatch's
``lock_joined`` guards the rows it would lock in a transaction; those it only reads are read
unlocked either way).
Anything only a transaction can give (a locking read, an immediate write, a read after a held
write, two writes of one row, a read with no guard) raises ``Pessimize``: the caller runs the
step again in a transaction, as it does when the guard raises.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from polder.common.db import Connection

_PARAM = re.compile(r"\$(\d+)")
# A row-locking read: without a transaction its locks would end with the statement.
_LOCKING = re.compile(r"\bFOR\s+(UPDATE|SHARE|NO\s+KEY\s+UPDATE|KEY\s+SHARE)\b", re.IGNORECASE)
# The WHERE an optimistic update or delete is gated on: its last one.
_WHERE = re.compile(r"\sWHERE\s", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Write:
    sql: str
    args: tuple[Any, ...]
    row: Hashable | None


class Pessimize(Exception):
    """An optimistic step needs a transaction (see module): run it again in one."""


# What sends an optimistic step back to a transaction: it needed one, or a row it read changed.
RUN_LOCKED = (Pessimize, asyncpg.SerializationError)


def why_locked(exc: BaseException) -> str:
    """The reason, as metrics name it, an optimistic step ran again in a transaction."""
    return "changed" if isinstance(exc, asyncpg.SerializationError) else "needs_lock"


class Tx:
    """A connection inside a transaction, with writes held until the next read (see module)."""

    def __init__(self, conn: Connection, *, optimistic: bool = False) -> None:
        self.conn = conn
        self.optimistic = optimistic
        self._guard: tuple[str, tuple[Any, ...]] | None = None
        self._read = False  # optimistic: whether the step read anything (then it needs a guard)
        self._held: list[_Write] = []
        self.round_trips = 0  # statements sent: what this class exists to keep low
        # Whether anything that may have written was sent (held writes, ``execute``): until
        # then, ``discard`` leaves the transaction as if no write had been asked for.
        self.wrote = False

    def defer(self, sql: str, *args: Any, row: Hashable | None = None) -> None:
        """Hold a write (an INSERT, UPDATE or DELETE without RETURNING) until the next read.
        ``row``: a key of the row it changes (e.g. ``("workers", driver_id)``); None for an
        insert of new rows that no other held write touches. Optimistic mode waits an update
        or delete for the guard through its last WHERE: keep subqueries out of that clause."""
        if "$$" in sql:
            raise ValueError("held statements must not use dollar quoting")
        self._held.append(_Write(sql, args, row))

    @property
    def held(self) -> int:
        return len(self._held)

    def discard(self) -> None:
        """Drop the held writes (a step that refused after asking for them)."""
        self._held.clear()

    def guard(self, sql: str, *args: Any) -> None:
        """Optimistic mode: ``sql`` selects one row with a boolean column ``ok`` and raises if
        the rows the step read have changed, locking them in the module's lock order."""
        if not self.optimistic or self._guard is not None:
            raise Pessimize("one guard per optimistic step")
        self._guard = (sql, args)

    async def flush(self) -> None:
        """Send the held writes (one statement per group of distinct rows). Optimistic mode:
        only ``send`` at the step's end may (what it sends commits at once)."""
        if self.optimistic:
            if self._held:
                raise Pessimize("writes sent before the step's end")
            return
        while self._held:
            group = self._next_group()
            sql, args = join(group)
            self.round_trips += 1
            self.wrote = True
            await self.conn.execute(sql, *args)

    async def finish(self, sql: str, *args: Any) -> Any:
        """Send ``sql`` (a write or read that needs no held write's effect, e.g. storing an
        Idempotency-Key's answer) with the held writes in front of it, in one round trip where
        the rows allow it; returns its first value, like ``fetchval``. Optimistic mode: always
        one statement, with the guard (see module)."""
        if self.optimistic:
            return await self._send_guarded((sql, args))
        while self._held:
            group = self._next_group()
            self.wrote = True
            if self._held:  # rows repeat: the earlier group goes alone
                joined, joined_args = join(group)
                self.round_trips += 1
                await self.conn.execute(joined, *joined_args)
                continue
            joined, joined_args = join(group, final=(sql, args))
            self.round_trips += 1
            return await self.conn.fetchval(joined, *joined_args)
        self.round_trips += 1
        self.wrote = True
        return await self.conn.fetchval(sql, *args)

    async def send(self) -> None:
        """The step's end: send what is held (optimistic mode: as its one statement, after
        the guard)."""
        if self.optimistic:
            await self._send_guarded()
        else:
            await self.flush()

    async def _send_guarded(self, final: tuple[str, tuple[Any, ...]] | None = None) -> Any:
        """Optimistic mode: every held write (and ``final``, whose first value it returns) in
        one statement, after the guard if the step read anything."""
        if not self._held and final is None:
            return None
        group = self._next_group()
        if self._held or (self._read and self._guard is None):
            raise Pessimize("two writes of one row, or a read with no guard")
        sql, args = join(group, final=final, guard=self._guard)
        self.round_trips += 1
        self.wrote = True
        if final is None:
            await self.conn.execute(sql, *args)
            return None
        return await self.conn.fetchval(sql, *args)

    def _pessimize(self) -> None:
        if self.optimistic:
            raise Pessimize("an immediate write")

    def _check_read(self, sql: str) -> None:
        if self.optimistic:
            if self._held or _LOCKING.search(sql):
                raise Pessimize("a locking read, or a read after a held write")
            self._read = True

    def _next_group(self) -> list[_Write]:
        """The longest prefix of held writes that touches no row twice; removed from held."""
        seen: set[Hashable] = set()
        n = 0
        for w in self._held:
            if w.row is not None:
                if w.row in seen:
                    break
                seen.add(w.row)
            n += 1
        group, self._held = self._held[:n], self._held[n:]
        return group

    # --- reads (and immediate writes): the held writes go first ------------------------------

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self._check_read(sql)
        await self.flush()
        self.round_trips += 1
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        self._check_read(sql)
        await self.flush()
        self.round_trips += 1
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self._check_read(sql)
        await self.flush()
        self.round_trips += 1
        return await self.conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        self._pessimize()
        await self.flush()
        self.round_trips += 1
        self.wrote = True
        return await self.conn.execute(sql, *args)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        self._pessimize()
        await self.flush()
        self.round_trips += 1
        self.wrote = True
        await self.conn.executemany(sql, args)


def join(
    writes: Sequence[_Write],
    final: tuple[str, Sequence[Any]] | None = None,
    guard: tuple[str, Sequence[Any]] | None = None,
) -> tuple[str, list[Any]]:
    """One statement doing ``writes`` (and ``final``, whose result it returns), parameters
    renumbered in order. A single write without ``final`` is sent as it is. With a ``guard``
    (optimistic mode) it leads as ``_g``; updates and deletes wait for it, and so does the
    statement's result (which is the guard's when there is no ``final``)."""
    if final is None and guard is None and len(writes) == 1:
        return writes[0].sql, list(writes[0].args)
    args: list[Any] = []
    ctes = []
    if guard is not None:
        ctes.append(f"_g AS ({guard[0]})")
        args.extend(guard[1])
    for i, w in enumerate(writes):
        sql = _after_guard(w.sql) if guard is not None else w.sql
        ctes.append(f"_w{i} AS ({_shift(sql, len(args))})")
        args.extend(w.args)
    if guard is not None and final is not None:
        # The final statement goes in a CTE too, so the result can wait for the guard.
        ctes.append(f"_f AS ({_shift(final[0], len(args))})")
        args.extend(final[1])
        tail = "SELECT (SELECT * FROM _f) FROM _g"
    elif final is None:
        tail = "SELECT (SELECT ok FROM _g)" if guard is not None else "SELECT 1"
    else:
        tail = _shift(final[0], len(args))
        args.extend(final[1])
    return ("WITH " + ", ".join(ctes) + " " + tail if ctes else tail), args


# The statements are the code's own, a few dozen shapes: their rewritten text is remembered (a
# regular-expression pass over each held statement was ~13 % of an accept's CPU in the API).
@functools.lru_cache(maxsize=1024)
def _after_guard(sql: str) -> str:
    """An update or delete that changes nothing before the guard has passed: an uncorrelated
    subquery of its WHERE is evaluated once, before any row (inserts need no such wait: if the
    guard raises, the whole statement is undone)."""
    found = list(_WHERE.finditer(sql))
    if not found or sql.lstrip()[:6].upper() not in ("UPDATE", "DELETE"):
        return sql
    head, condition = sql[: found[-1].start()], sql[found[-1].end() :]
    return f"{head} WHERE ({condition}) AND (SELECT ok FROM _g)"  # noqa: S608 (our own SQL)


@functools.lru_cache(maxsize=1024)
def _shift(sql: str, offset: int) -> str:
    if offset == 0:
        return sql
    return _PARAM.sub(lambda m: f"${int(m.group(1)) + offset}", sql)
