"""Transactional outbox: events are written in the same transaction as the state they announce,
then a relay publishes them in order and marks them sent.

A relay that dies between publishing and marking publishes again on restart: consumers are
idempotent (they dedupe on the event id), so at-least-once is enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from polder.common.bus import Bus
from polder.common.db import Connection, Pool
from polder.common.deferred import Tx
from polder.common.envelope import Event
from polder.common.retention import delete_before
from polder.common.tasks import wait_for_event
from polder.common.topics import Topic

log = structlog.get_logger(__name__)

Outgoing = tuple[Topic, str, Event]


def outbox_insert(bus: Bus, events: Sequence[Outgoing]) -> tuple[str, list[Any]]:
    """The statement storing ``events`` (validated here) in the outbox, and its arguments."""
    topics, keys, docs = [], [], []
    for topic, key, event in events:
        checked = bus.registry.validate(event)
        topics.append(bus.settings.topic(topic.name))
        keys.append(key)
        docs.append(orjson.dumps(checked).decode())
    # One statement whatever the number of events (executemany costs a bind per row), in the
    # order given: the relay publishes by id.
    return (
        "INSERT INTO outbox (topic, key, event) "
        "SELECT t, k, e::json FROM unnest($1::text[], $2::text[], $3::text[]) "
        "WITH ORDINALITY AS u(t, k, e, n) ORDER BY n",
        [topics, keys, docs],
    )


async def add_to_outbox(conn: Connection | Tx, bus: Bus, events: Sequence[Outgoing]) -> None:
    """Validate and store events inside the caller's transaction (held with the transaction's
    other writes when it is a ``Tx``)."""
    if not events:
        return
    sql, args = outbox_insert(bus, events)
    if isinstance(conn, Tx):
        conn.defer(sql, *args)
    else:
        await conn.execute(sql, *args)


class OutboxRelay:
    """Publishes unsent outbox rows in id order. One relay publishes at a time (advisory lock),
    so a key's events reach their partition in the order they were written."""

    def __init__(
        self,
        pool: Pool,
        bus: Bus,
        *,
        batch: int = 500,
        idle_poll_s: float = 0.2,
        keep_sent_s: float | None = None,
        prune_every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``keep_sent_s``: sent rows older than this are deleted (``prune_once``), every
        ``prune_every_s``; None keeps them (tests that read the outbox back)."""
        self.pool = pool
        self.bus = bus
        self.batch = batch
        self.idle_poll_s = idle_poll_s
        self.keep_sent_s = keep_sent_s
        self.prune_every_s = prune_every_s
        self.clock = clock
        self.wake = asyncio.Event()
        self._holds = 0  # sessions of this relay holding the schema's relay lock (see leading)
        # Rounds begun; each reads the oldest ``batch`` unsent rows committed before it began.
        self._begun = 0
        self._handed: list[tuple[int, asyncio.Future[bool]]] = []  # see ``handed_over``
        self.published = 0
        self.pruned = 0

    def notify(self) -> None:
        """Call after committing outbox rows, so they go out now rather than at the next poll."""
        self.wake.set()

    @property
    def leading(self) -> bool:
        """Whether this relay holds the schema's relay lock (its rounds publish)."""
        return self._holds > 0

    async def handed_over(self, timeout_s: float) -> bool:
        """Wait until a round begun after this call has handed its rows to the producer (they
        are then stamped and queued for the broker), for at most ``timeout_s``; whether one
        did. After committing rows and ``notify``, a caller about to run a long stretch of
        CPU work on the same event loop waits here first: else the relay, woken but not yet
        run, waits for that stretch to end (the matcher's next batch part: ~10 ms under load)
        before it even reads the rows. Returns False at once if this relay is not leading
        (another replica's relay publishes), and as soon as it stops leading. A round reads
        the oldest ``batch`` unsent rows: behind a longer backlog, the caller's rows may be
        left for a later round than the one that releases it."""
        if not self.leading:
            return False
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (self._begun + 1, waiter)
        self._handed.append(entry)
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TimeoutError:
            return False
        finally:
            if entry in self._handed:
                self._handed.remove(entry)

    def _hand_over(self, round_no: int | None) -> None:
        """Release the ``handed_over`` waiters that round ``round_no`` satisfies; None: all of
        them, unsatisfied (the relay stopped leading)."""
        keep = []
        for want, waiter in self._handed:
            if round_no is not None and want > round_no:
                keep.append((want, waiter))
            elif not waiter.done():
                waiter.set_result(round_no is not None)
        self._handed = keep

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until stopped. The relay that takes the schema's relay lock keeps it (and its
        connection) while it runs, round after round: two round trips to Postgres a round (read,
        mark sent) instead of four, and every 20 ms poll of the matcher's relay one statement.
        Another relay (another replica) polls for the lock meanwhile and takes over when the
        first one's session ends. Sent rows are pruned beside it (``_prune``), on a connection
        of their own and without the lock, so a long prune never holds up publishing."""
        pruning = asyncio.create_task(self._prune(stop)) if self.keep_sent_s is not None else None
        try:
            while not stop.is_set():
                try:
                    async with self.pool.acquire() as conn, self._leading(conn) as leading:
                        if leading:
                            await self._rounds(conn, stop)
                    if not stop.is_set():
                        await wait_for_event(stop, self.idle_poll_s)  # another relay leads
                except Exception:  # broker or database hiccup: the rows stay unsent; try again
                    log.exception("outbox relay failed; retrying")
                    await asyncio.sleep(1.0)
        finally:
            if pruning is not None:
                pruning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruning

    async def _rounds(self, conn: Connection, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Cleared before the round reads, so a commit that wakes it during the round (after
            # its read) makes the wait below return at once instead of being forgotten.
            self.wake.clear()
            if await self._round(conn) < self.batch:
                await wait_for_event(self.wake, self.idle_poll_s)

    async def _prune(self, stop: asyncio.Event) -> None:
        """``prune_once`` at start, then every ``prune_every_s`` until stopped."""
        while not stop.is_set():
            try:
                await self.prune_once(self.clock())
            except Exception:  # the rows stay until the next pass
                log.exception("outbox pruning failed; retrying later")
            await wait_for_event(stop, self.prune_every_s)

    async def prune_once(self, now: float, chunk: int = 10_000) -> int:
        """Delete rows sent more than ``keep_sent_s`` before ``now``, oldest first, in id ranges
        of ``chunk``; returns how many went. Unsent rows are never deleted, whatever their age.

        The relay sends in id order, so sent rows are old below some id and recent above it:
        the pass never reads the rows it keeps (a day of them at 2 000 events a second is 170
        million; see ``retention.delete_before``)."""
        assert self.keep_sent_s is not None
        cut = datetime.fromtimestamp(now - self.keep_sent_s, UTC)
        deleted = await delete_before(self.pool, "outbox", "sent_at", cut, chunk=chunk)
        self.pruned += deleted
        return deleted

    async def relay_once(self) -> int:
        """Send one batch, taking the relay lock for it (0 if another relay holds it)."""
        async with self.pool.acquire() as conn, self._leading(conn) as leading:
            return await self._round(conn) if leading else 0

    @contextlib.asynccontextmanager
    async def _leading(self, conn: Connection) -> AsyncIterator[bool]:
        """Whether this connection took the schema's relay lock; released at the end. The lock
        is held for the session, not in a transaction, so no transaction stays open across the
        broker's round trip; if releasing fails the connection is closed, which releases it."""
        got_lock: bool = await conn.fetchval(
            "SELECT pg_try_advisory_lock(hashtext('outbox-relay:' || current_schema()))"
        )
        if got_lock:
            self._holds += 1
        try:
            yield got_lock
        finally:
            if got_lock:
                self._holds -= 1
                if not self._holds:
                    self._hand_over(None)  # no round will release them now
                try:
                    await conn.execute(
                        "SELECT pg_advisory_unlock(hashtext('outbox-relay:' || current_schema()))"
                    )
                except BaseException:
                    # The session ends, and the lock with it (a connection the pool has already
                    # let go, its session lost, refuses: the unlock's error is the one to tell).
                    with contextlib.suppress(Exception):
                        conn.terminate()
                    raise

    async def _round(self, conn: Connection) -> int:
        """Publish the oldest unsent rows (up to ``batch``), wait for every ack, mark them."""
        self._begun += 1
        round_no = self._begun
        # the event as stored text: no decoding to a dict and encoding it back
        rows = await conn.fetch(
            "SELECT id, topic, key, event::text AS event FROM outbox "
            "WHERE sent_at IS NULL ORDER BY id LIMIT $1",
            self.batch,
        )
        if rows:
            await self.bus.send_many(
                [(r["topic"], r["key"].encode(), r["event"].encode()) for r in rows],
                handed=functools.partial(self._hand_over, round_no),
            )
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                [r["id"] for r in rows],
            )
        else:
            self._hand_over(round_no)
        self.published += len(rows)
        return len(rows)
