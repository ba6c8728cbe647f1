"""The Kafka bus against the real broker: delivery, dead letters, retries and commits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry

from polder.common.bus import Bus, Consumer, Handler, Received, create_topics
from polder.common.metrics import CommonMetrics
from polder.common.schemas import SchemaError, SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DLQ, DRIVER_LOCATIONS, TOPICS
from tests.conftest import Infra, eventually, isolated_settings

pytestmark = pytest.mark.integration


def pings_data(driver: str = "d1") -> dict[str, object]:
    return {
        "driver_id": driver,
        "received_at": "2026-11-29T12:00:00.000Z",
        "pings": [
            {
                "lat": 52.37,
                "lng": 4.89,
                "recorded_at_ms": 1_795_996_799_000,
            }
        ],
    }


@contextlib.asynccontextmanager
async def running_bus(settings: Settings) -> AsyncIterator[Bus]:
    bus = Bus(settings, SchemaRegistry.load(), source="test")
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop()


@contextlib.asynccontextmanager
async def consuming(
    settings: Settings, bus: Bus, handler: Handler, *, group: str | None, topic=DRIVER_LOCATIONS
) -> AsyncIterator[tuple[Consumer, CommonMetrics]]:
    metrics = CommonMetrics(CollectorRegistry())
    consumer = Consumer(
        name=group or "reader",
        settings=settings,
        registry=bus.registry,
        bus=bus,
        metrics=metrics,
        topics=[topic],
        handler=handler,
        group_id=group,
        start_at_ms=(lambda: 0) if group is None else None,
        retry_backoff_s=0.05,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer, metrics
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def test_topics_take_the_embedded_layout_only_on_the_embedded_broker(infra: Infra) -> None:
    """`polder up` on the embedded broker creates the ping stream in fewer partitions; on a
    broker of the user's (``embedded=False``) every topic gets the production layout."""
    for embedded in (True, False):
        s = isolated_settings(infra)
        await create_topics(s, embedded=embedded)
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics([s.topic(t.name) for t in TOPICS])
        finally:
            await admin.close()
        created = {d["topic"]: len(d["partitions"]) for d in described}
        assert created == {s.topic(t.name): t.partitions_on(embedded=embedded) for t in TOPICS}
        wanted = DRIVER_LOCATIONS.embedded_partitions if embedded else DRIVER_LOCATIONS.partitions
        assert created[s.topic(DRIVER_LOCATIONS.name)] == wanted


class Collect:
    def __init__(self) -> None:
        self.seen: list[Received] = []

    async def __call__(self, records: Sequence[Received]) -> None:
        self.seen.extend(records)

    async def ids(self) -> list[str]:
        return [r.event.id for r in self.seen]


async def test_published_events_reach_a_group_consumer_keyed_and_valid(settings: Settings) -> None:
    async with running_bus(settings) as bus:
        sent = [
            bus.event(
                "polder.location.pings_recorded.v1", f"d{i}", pings_data(f"d{i}"), datetime.now(UTC)
            )
            for i in range(5)
        ]
        for e in sent:
            await bus.publish(DRIVER_LOCATIONS, e.subject, e)
        got = Collect()
        async with consuming(settings, bus, got, group="g1"):
            await eventually(got.ids, until=lambda ids: len(ids) == 5)
        assert sorted(await got.ids()) == sorted(e.id for e in sent)
        assert {r.key for r in got.seen} == {f"d{i}" for i in range(5)}
        assert all(r.topic == settings.topic(DRIVER_LOCATIONS.name) for r in got.seen)


async def test_producer_refuses_an_event_that_breaks_its_schema(settings: Settings) -> None:
    async with running_bus(settings) as bus:
        bad = bus.event(
            "polder.location.pings_recorded.v1", "d1", {"driver_id": "d1"}, datetime.now(UTC)
        )
        with pytest.raises(SchemaError):
            await bus.publish(DRIVER_LOCATIONS, "d1", bad)


async def test_undecodable_and_invalid_records_go_to_the_dlq_and_the_consumer_carries_on(
    settings: Settings,
) -> None:
    async with running_bus(settings) as bus:
        await bus.publish_raw(DRIVER_LOCATIONS, b"d1", b"\x00not json")
        wrong = bus.event(
            "polder.location.pings_recorded.v1", "d1", pings_data(), datetime.now(UTC)
        )
        doc = wrong.to_dict()
        doc["data"] = {"driver_id": "d1"}
        import orjson

        await bus.publish_raw(DRIVER_LOCATIONS, b"d1", orjson.dumps(doc))
        good = bus.event("polder.location.pings_recorded.v1", "d1", pings_data(), datetime.now(UTC))
        await bus.publish(DRIVER_LOCATIONS, "d1", good)

        got = Collect()
        letters = Collect()
        async with (
            consuming(settings, bus, got, group="g2") as (_, metrics),
            consuming(settings, bus, letters, group="dlq-reader", topic=DLQ),
        ):
            await eventually(got.ids, until=lambda ids: ids == [good.id])
            await eventually(letters.ids, until=lambda ids: len(ids) == 2)
        reasons = [r.event.data["reason"] for r in letters.seen]
        assert "not JSON" in reasons[0]
        assert "pings" in reasons[1] and "required" in reasons[1]
        first = letters.seen[0].event.data
        assert base64.b64decode(first["payload_b64"]) == b"\x00not json"
        assert first["topic"] == settings.topic(DRIVER_LOCATIONS.name) and first["key"] == "d1"
        assert letters.seen[0].key == "d1"
        dead = metrics.dead_letters
        assert dead.labels("g2", "decode")._value.get() == 1
        assert dead.labels("g2", "schema")._value.get() == 1


async def test_a_failing_handler_is_retried_and_nothing_is_committed_before_it_succeeds(
    settings: Settings,
) -> None:
    attempts = 0
    done: list[str] = []

    async def flaky(records: Sequence[Received]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("database down")
        done.extend(r.event.id for r in records)

    async with running_bus(settings) as bus:
        e = bus.event("polder.location.pings_recorded.v1", "d1", pings_data(), datetime.now(UTC))
        await bus.publish(DRIVER_LOCATIONS, "d1", e)
        async with consuming(settings, bus, flaky, group="g3") as (_, metrics):

            async def ids() -> list[str]:
                return done

            await eventually(ids, until=lambda d: d == [e.id])
        assert attempts == 3
        assert metrics.handler_failures.labels("g3")._value.get() == 2

        # Committed after success: the same group does not see it again; a new group does.
        again = Collect()
        async with consuming(settings, bus, again, group="g3"):
            await asyncio.sleep(3)
        assert await again.ids() == []
        fresh = Collect()
        async with consuming(settings, bus, fresh, group="g3-new"):
            await eventually(fresh.ids, until=lambda ids: ids == [e.id])


async def test_an_uncommitted_batch_is_redelivered_after_a_crash(settings: Settings) -> None:
    async def crash(records: Sequence[Received]) -> None:
        raise RuntimeError("killed before commit")

    async with running_bus(settings) as bus:
        e = bus.event("polder.location.pings_recorded.v1", "d1", pings_data(), datetime.now(UTC))
        await bus.publish(DRIVER_LOCATIONS, "d1", e)
        async with consuming(settings, bus, crash, group="g4") as (_, metrics):
            await eventually(
                lambda: asyncio.sleep(0, metrics.handler_failures.labels("g4")._value.get()),
                until=lambda n: n >= 1,
            )
        later = Collect()
        async with consuming(settings, bus, later, group="g4"):
            await eventually(later.ids, until=lambda ids: ids == [e.id])
