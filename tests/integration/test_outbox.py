"""The transactional outbox: events leave only with their transaction, in order, at least once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from polder.common.bus import Bus, Received
from polder.common.db import Pool, create_pool, migrate
from polder.common.outbox import OutboxRelay, add_to_outbox
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DRIVER_EVENTS
from tests.conftest import eventually
from tests.support import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
async def outbox_env(settings: Settings) -> AsyncIterator[tuple[Pool, Bus]]:
    """Dispatch's schema migrated (its outbox), a pool on it and a started producer."""
    schema = settings.db_schema("dispatch")
    pool = await create_pool(settings.database_url, schema)
    bus = Bus(settings, SchemaRegistry.load(), source="test")
    await bus.start()
    try:
        await migrate(pool, schema, "polder.dispatch.migrations")
        yield pool, bus
    finally:
        await bus.stop()
        await pool.close()


def state_event(bus: Bus, driver: str, seq: int) -> tuple:  # type: ignore[type-arg]
    data = {
        "driver_id": driver,
        "seq": seq,
        "from": "offline",
        "to": "idle",
        "cause": "went_online",
    }
    return (
        DRIVER_EVENTS,
        driver,
        bus.event("polder.driver.state_changed.v1", driver, data, datetime.now(UTC)),
    )


async def read_all(settings: Settings, expected: int) -> list[Received]:
    """Everything on the topic once ``expected`` records are there, and nothing arrives after."""
    seen = await read_topic(settings, DRIVER_EVENTS, until=lambda s: len(s) >= expected)
    await asyncio.sleep(0.5)
    again = await read_topic(settings, DRIVER_EVENTS, until=lambda s: len(s) >= len(seen))
    assert len(again) == len(seen)
    return seen


async def test_rolled_back_events_never_leave_and_committed_ones_leave_in_order(
    settings: Settings, outbox_env: tuple[Pool, Bus]
) -> None:
    pool, bus = outbox_env
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, bus, [state_event(bus, "ghost", 1)])
            raise RuntimeError("the state change failed")
    async with pool.acquire() as conn, conn.transaction():
        await add_to_outbox(conn, bus, [state_event(bus, "d1", seq) for seq in range(1, 6)])
    relay = OutboxRelay(pool, bus)
    assert await relay.relay_once() == 5
    assert await relay.relay_once() == 0
    seen = await read_all(settings, 5)
    assert [r.key for r in seen] == ["d1"] * 5
    assert [r.event.data["seq"] for r in seen] == [1, 2, 3, 4, 5]
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def test_a_relay_killed_after_sending_sends_again_and_ids_let_consumers_dedupe(
    settings: Settings, outbox_env: tuple[Pool, Bus]
) -> None:
    pool, bus = outbox_env
    async with pool.acquire() as conn, conn.transaction():
        await add_to_outbox(conn, bus, [state_event(bus, "d2", 1), state_event(bus, "d2", 2)])

    class KilledAfterSend(OutboxRelay):
        async def relay_once(self) -> int:
            original = self.bus.send_many

            async def send_then_die(records, **kwargs):  # type: ignore[no-untyped-def]
                await original(records, **kwargs)
                raise ConnectionResetError("killed before marking sent")

            self.bus.send_many = send_then_die  # type: ignore[method-assign]
            try:
                return await super().relay_once()
            finally:
                self.bus.send_many = original  # type: ignore[method-assign]

    with pytest.raises(ConnectionResetError):
        await KilledAfterSend(pool, bus).relay_once()
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 2
    assert await OutboxRelay(pool, bus).relay_once() == 2
    seen = await read_all(settings, 4)
    ids = [r.event.id for r in seen]
    assert len(ids) == 4 and len(set(ids)) == 2  # each event twice, with the same id


async def test_rows_committed_while_the_relay_sends_go_out_without_waiting_for_its_poll(
    settings: Settings, outbox_env: tuple[Pool, Bus]
) -> None:
    """A commit that wakes the relay during its round is not lost: the relay goes again at
    once, not after its idle poll (an hour here)."""
    pool, bus = outbox_env
    stop = asyncio.Event()
    relay = OutboxRelay(pool, bus, idle_poll_s=3600)
    original = bus.send_many

    async def commit_while_sending(records, **kwargs):  # type: ignore[no-untyped-def]
        if len(records) == 1 and b'"seq":1' in records[0][2]:
            async with pool.acquire() as conn, conn.transaction():
                await add_to_outbox(conn, bus, [state_event(bus, "d-wake", 2)])
            relay.notify()
        await original(records, **kwargs)

    bus.send_many = commit_while_sending  # type: ignore[method-assign]
    async with pool.acquire() as conn, conn.transaction():
        await add_to_outbox(conn, bus, [state_event(bus, "d-wake", 1)])
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _published(relay), until=lambda n: n == 2, within=20)
    finally:
        stop.set()
        relay.notify()
        await task
    seen = await read_all(settings, 2)
    assert [r.event.data["seq"] for r in seen] == [1, 2]


async def test_the_relay_holding_the_lock_publishes_alone_until_it_stops(
    settings: Settings, outbox_env: tuple[Pool, Bus]
) -> None:
    """A running relay keeps the schema's relay lock round after round: a second one (another
    replica) publishes nothing meanwhile, then takes over once the first stops; every event
    goes out once, in order."""
    pool, bus = outbox_env
    first, second = OutboxRelay(pool, bus, idle_poll_s=0.02), OutboxRelay(pool, bus)
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def commit(seq: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, bus, [state_event(bus, "d-lead", seq)])

    try:
        await commit(1)
        tasks.append(asyncio.create_task(first.run(stop_first)))
        await eventually(lambda: _published(first), until=lambda n: n == 1, within=20)
        tasks.append(asyncio.create_task(second.run(stop_second)))
        for seq in (2, 3):
            await commit(seq)
            await eventually(lambda: _published(first), until=lambda n, s=seq: n == s, within=20)
        assert await second.relay_once() == 0  # the lock is taken
        assert second.published == 0
        stop_first.set()
        first.notify()
        await tasks[0]
        await commit(4)
        await eventually(lambda: _published(second), until=lambda n: n == 1, within=20)
        seen = await read_all(settings, 4)
        assert [r.event.data["seq"] for r in seen] == [1, 2, 3, 4]
    finally:
        stop_first.set()
        stop_second.set()
        first.notify()
        second.notify()
        await asyncio.gather(*tasks)


async def _published(relay: OutboxRelay) -> int:
    return relay.published


async def test_the_outbox_refuses_an_invalid_event(
    settings: Settings, outbox_env: tuple[Pool, Bus]
) -> None:
    pool, bus = outbox_env
    bad = bus.event("polder.driver.state_changed.v1", "d", {"driver_id": "d"}, datetime.now(UTC))
    async with pool.acquire() as conn:
        with pytest.raises(ValueError, match="seq"):
            await add_to_outbox(conn, bus, [(DRIVER_EVENTS, "d", bad)])


async def test_sent_rows_are_pruned_after_the_keep_time_and_unsent_ones_never(
    settings: Settings, outbox_env: tuple[Pool, Bus]
) -> None:
    """Rows sent before the cut go, in chunks; rows sent after it stay, and an unsent row stays
    whatever its age (it and everything after it wait for the relay)."""
    pool, bus = outbox_env
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    # ids 1-25 sent 30 h ago, 26-30 sent 1 h ago, 31 unsent, 32 sent 30 h ago (a straggler
    # behind the unsent one: it waits too)
    sent = [now - 30 * hour] * 25 + [now - hour] * 5 + [None] + [now - 30 * hour]
    await pool.executemany(
        "INSERT INTO outbox (topic, key, event, sent_at) VALUES ('t', 'k', '{}', $1)",
        [(at,) for at in sent],
    )
    relay = OutboxRelay(pool, bus, keep_sent_s=24 * 3600)
    assert await relay.prune_once(now.timestamp(), chunk=10) == 25  # three chunks
    left = await pool.fetch("SELECT sent_at FROM outbox ORDER BY id")
    assert [r["sent_at"] for r in left] == sent[25:]
    assert await relay.prune_once(now.timestamp(), chunk=10) == 0
    # once the unsent row is sent and everything is old, all of it goes
    await pool.execute("UPDATE outbox SET sent_at = $1 WHERE sent_at IS NULL", now - hour)
    later = (now + 2 * 24 * hour).timestamp()
    assert await relay.prune_once(later, chunk=10) == 7
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_relay_prunes_whether_or_not_it_holds_the_relay_lock(
    settings: Settings, outbox_env: tuple[Pool, Bus]
) -> None:
    """Pruning runs beside publishing, on a connection of its own and without the relay lock:
    a relay waiting for another to let go of the lock prunes all the same, and a long prune
    never holds up publishing."""
    pool, bus = outbox_env
    old = datetime.now(UTC) - timedelta(hours=30)
    await pool.executemany(
        "INSERT INTO outbox (topic, key, event, sent_at) VALUES ('t', 'k', '{}', $1)",
        [(old,)] * 5,
    )
    relay, stop = OutboxRelay(pool, bus, keep_sent_s=24 * 3600, idle_poll_s=0.02), asyncio.Event()
    async with pool.acquire() as holder:  # another relay leads
        assert await holder.fetchval(
            "SELECT pg_try_advisory_lock(hashtext('outbox-relay:' || current_schema()))"
        )
        task = asyncio.create_task(relay.run(stop))
        try:
            await eventually(lambda: _pruned(relay), until=lambda n: n == 5, within=20)
            assert relay.published == 0
        finally:
            stop.set()
            await task
            await holder.execute(
                "SELECT pg_advisory_unlock(hashtext('outbox-relay:' || current_schema()))"
            )
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def _pruned(relay: OutboxRelay) -> int:
    return relay.pruned


async def test_handed_over_waits_for_a_round_begun_after_it_not_the_one_in_flight(
    settings: Settings, outbox_env: tuple[Pool, Bus]
) -> None:
    """A caller that committed rows and woke the relay is released once a round that began
    after its call has handed its rows to the producer: not by the round already in flight
    (which read before the commit), and at once (False) when the relay is not leading."""
    pool, bus = outbox_env
    relay = OutboxRelay(pool, bus, idle_poll_s=3600)
    assert await relay.handed_over(5.0) is False  # not running: nothing to wait for
    log: list[object] = []
    in_flight, go_on = asyncio.Event(), asyncio.Event()
    original = bus.send_many

    async def send(records, handed=None):  # type: ignore[no-untyped-def]
        seqs = [orjson.loads(value)["data"]["seq"] for _, _, value in records]
        if seqs == [1]:  # the round in flight: it read seq 1 before seq 2 was committed
            in_flight.set()
            await go_on.wait()

        def mark() -> None:
            log.append(("handed", seqs))
            if handed is not None:
                handed()

        await original(records, handed=mark)

    async def commit(seq: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, bus, [state_event(bus, "d-hand", seq)])

    async def wait_for_hand_over() -> None:
        log.append(("released", await relay.handed_over(20.0)))

    bus.send_many = send  # type: ignore[method-assign]
    stop = asyncio.Event()
    await commit(1)
    task = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.wait_for(in_flight.wait(), 20)
        await commit(2)
        relay.notify()
        waiter = asyncio.create_task(wait_for_hand_over())
        await asyncio.sleep(0.05)
        go_on.set()  # round 1 hands seq 1 over now, after the call: it must not release it
        await asyncio.wait_for(waiter, 20)
        assert log == [("handed", [1]), ("handed", [2]), ("released", True)]
    finally:
        stop.set()
        relay.notify()
        go_on.set()
        await task
        bus.send_many = original  # type: ignore[method-assign]
    assert relay.leading is False  # it gave the lock back on stopping


async def test_handed_over_gives_up_as_soon_as_the_relay_stops_leading(
    outbox_env: tuple[Pool, Bus],
) -> None:
    """A caller waiting for a round is let go (False) when the relay stops, not at its timeout."""
    pool, bus = outbox_env
    relay = OutboxRelay(pool, bus, idle_poll_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _leading(relay), until=bool, within=20)
        waiter = asyncio.create_task(relay.handed_over(60.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # idle: no round begins until woken
        stop.set()
        relay.notify()
        assert await asyncio.wait_for(waiter, 10) is False
    finally:
        stop.set()
        relay.notify()
        await task
    assert not relay.leading


async def _leading(relay: OutboxRelay) -> bool:
    return relay.leading


class HeldAcks:
    """Wraps ``bus.send_many``: logs each round's handing over (by seq) and holds back the
    return of the rounds named in ``hold`` (their acks, so their marking) until released."""

    def __init__(self, bus: Bus, hold: set[int]) -> None:
        self.bus, self.hold = bus, hold
        self.original = bus.send_many
        self.log: list[tuple[str, list[int]]] = []
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.fail_first = False

    async def __call__(self, records, handed=None):  # type: ignore[no-untyped-def]
        seqs = [orjson.loads(value)["data"]["seq"] for _, _, value in records]

        def mark() -> None:
            self.log.append(("handed", seqs))
            if handed is not None:
                handed()

        await self.original(records, handed=mark)
        if self.hold & set(seqs):
            self.holding.set()
            await self.release.wait()
            self.log.append(("acked", seqs))
        if self.fail_first:
            self.fail_first = False
            raise ConnectionResetError("the broker went away before the acks")

    def __enter__(self) -> HeldAcks:
        self.bus.send_many = self  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.bus.send_many = self.original  # type: ignore[method-assign]


async def test_a_backlog_goes_out_a_batch_at_a_time(
    settings: Settings, outbox_env: tuple[Pool, Bus]
) -> None:
    """With a batch's worth of rows awaiting acks, the relay reads nothing more until they are
    acked; then the rest, in order."""
    pool, bus = outbox_env
    async with pool.acquire() as conn, conn.transaction():
        await add_to_outbox(conn, bus, [state_event(bus, "d-cap", s) for s in range(1, 6)])
    relay = OutboxRelay(pool, bus, batch=2, idle_poll_s=3600)
    stop = asyncio.Event()
    with HeldAcks(bus, hold={1}) as sends:
        task = asyncio.create_task(relay.run(stop))
        try:
            await asyncio.wait_for(sends.holding.wait(), 20)
            await asyncio.sleep(0.3)
            assert sends.log == [("handed", [1, 2])]
            sends.release.set()
            await eventually(lambda: _published(relay), until=lambda n: n == 5, within=20)
            assert [seqs for what, seqs in sends.log if what == "handed"] == [
                [1, 2],
                [3, 4],
                [5],
            ]
        finally:
            stop.set()
            relay.notify()
            sends.release.set()
            await task
    seen = await read_all(settings, 5)
    assert [r.event.data["seq"] for r in seen] == [1, 2, 3, 4, 5]


async def test_a_round_whose_acks_fail_is_sent_again_by_the_next_session(
    settings: Settings, outbox_env: tuple[Pool, Bus]
) -> None:
    """Acks lost after the rows were handed over: the rows stay unsent, the relay ends its
    session and the next one sends them again (the same event ids: consumers dedupe)."""
    pool, bus = outbox_env
    async with pool.acquire() as conn, conn.transaction():
        await add_to_outbox(conn, bus, [state_event(bus, "d-lost", 1)])
    relay = OutboxRelay(pool, bus, idle_poll_s=0.05)
    stop = asyncio.Event()
    with HeldAcks(bus, hold=set()) as sends:
        sends.fail_first = True
        task = asyncio.create_task(relay.run(stop))
        try:
            await eventually(lambda: _published(relay), until=lambda n: n == 1, within=20)
            assert sends.log == [("handed", [1]), ("handed", [1])]
        finally:
            stop.set()
            relay.notify()
            await task
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    seen = await read_all(settings, 2)
    assert [r.event.data["seq"] for r in seen] == [1, 1]
    assert seen[0].event.id == seen[1].event.id
