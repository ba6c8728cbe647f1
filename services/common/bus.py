"""Kafka on aiokafka: one long-lived producer per process, and one shape for every consumer.

Delivery is at least once everywhere (Tansu has no idempotent producer or transactions), so
consumers must be idempotent. A record that cannot be decoded or validated goes to the
dead-letter topic with the reason, and the consumer carries on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, IllegalStateError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from polder.common.envelope import DecodeError, Event
from polder.common.metrics import CommonMetrics
from polder.common.schemas import SchemaError, SchemaRegistry
from polder.common.settings import Settings
from polder.common.tasks import wait_for_event
from polder.common.topics import DLQ, TOPICS, Topic

log = structlog.get_logger(__name__)


MAX_RECORDS = 2000  # per fetch, across a consumer's partitions


class KeptHashPartitioner:
    """aiokafka's default partitioner (murmur2 of the key, as Kafka's Java client: the same
    partition for a key whatever the client), with each key's hash kept. aiokafka's murmur2 is
    pure Python, ~14 µs for an order's id, and keys come back (a driver's every event, an
    order's five or six): a batch's relay round of ~200 events spent ~2 ms hashing."""

    def __init__(self, keep: int = 1 << 16) -> None:
        self._murmur2 = functools.lru_cache(maxsize=keep)(murmur2)

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:  # no key: any partition, as aiokafka picks it
            chosen: int = DefaultPartitioner()(key, all_partitions, available)
            return chosen
        hashed: int = self._murmur2(key)
        return all_partitions[(hashed & 0x7FFFFFFF) % len(all_partitions)]


class Bus:
    """The process's producer. Validates every event against its schema before sending."""

    def __init__(
        self,
        settings: Settings,
        registry: SchemaRegistry,
        source: str,
        *,
        linger_ms: int | None = None,
    ) -> None:
        """``linger_ms``: the producer's linger, if not ``kafka_linger_ms``."""
        self.settings = settings
        self.registry = registry
        self.source = source
        self.linger_ms = settings.kafka_linger_ms if linger_ms is None else linger_ms
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        # Built here, not in __init__: an aiokafka client belongs to the running event loop.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=self.source,
            partitioner=KeptHashPartitioner(),
            acks="all",
            linger_ms=self.linger_ms,
            max_batch_size=512 * 1024,
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=15_000,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the bus is not started")
        return self._producer

    def event(self, type_: str, subject: str, data: dict[str, object], time: datetime) -> Event:
        return Event(type=type_, source=self.source, subject=subject, data=data, time=time)

    async def publish(self, topic: Topic, key: str, event: Event) -> None:
        """Send one event and wait until the broker has it (acks=all)."""
        value = self.registry.encode(event)
        await self.producer.send_and_wait(
            self.settings.topic(topic.name), value=value, key=key.encode()
        )

    async def publish_raw(self, topic: Topic, key: bytes | None, value: bytes) -> None:
        await self.producer.send_and_wait(self.settings.topic(topic.name), value=value, key=key)

    async def send_many(
        self,
        records: Sequence[tuple[str, bytes, bytes]],
        handed: Callable[[], None] | None = None,
    ) -> None:
        """Send already-encoded (topic, key, value) records in order; wait for every ack.
        ``handed``: called once every record is with the producer (stamped and queued for the
        broker), before the acks are awaited."""
        futures = [await self.producer.send(t, value=v, key=k) for t, k, v in records]
        if handed is not None:
            handed()
        await asyncio.gather(*futures)

    async def ping(self) -> None:
        """Raise unless the broker answers a metadata request."""
        await self.producer.client.fetch_all_metadata()


Handler = Callable[[Sequence["Received"]], Awaitable[None]]
# Where to start reading each (topic as named on the broker, partition); a partition not in the
# answer is read from its beginning.
StartOffsets = Callable[[], Awaitable[Mapping[tuple[str, int], int]]]


@dataclass(frozen=True, slots=True)
class Received:
    event: Event
    key: str | None
    topic: str
    partition: int
    offset: int


class Consumer:
    """start → loop → finally stop. Commits only after the handler has made the batch durable.

    With ``group_id`` it joins a consumer group and resumes from committed offsets. Without one
    (in-memory state such as the location index) it reads every partition itself, starting at
    ``start_at_ms`` (a timestamp) so the state can be rebuilt after a restart, or at
    ``start_offsets`` (asked once, when the partitions are assigned: state loaded from a
    snapshot that records the offsets it covers).
    """

    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        registry: SchemaRegistry,
        bus: Bus,
        metrics: CommonMetrics,
        topics: Sequence[Topic],
        handler: Handler,
        group_id: str | None,
        start_at_ms: Callable[[], int] | None = None,
        start_offsets: StartOffsets | None = None,
        max_records: int = MAX_RECORDS,
        retry_backoff_s: float = 1.0,
        prompt: bool = True,
    ) -> None:
        """``prompt``: someone waits on this consumer's delay (the location index, the offer
        feed): fetches wait at most ``kafka_fetch_max_wait_ms`` for data, else the longer
        ``kafka_background_fetch_max_wait_ms``, which costs the broker less."""
        self.name = name
        self.settings = settings
        self.registry = registry
        self.bus = bus
        self.metrics = metrics
        self.topics = [settings.topic(t.name) for t in topics]
        self.handler = handler
        self.group_id = settings.topic(group_id) if group_id else None
        self.start_at_ms = start_at_ms
        self.start_offsets = start_offsets
        self.max_records = max_records
        self.retry_backoff_s = retry_backoff_s
        self.ready = asyncio.Event()
        self._lag_checked = 0.0
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=self.group_id,
            client_id=f"{bus.source}-{name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest" if self.group_id else "latest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            fetch_max_wait_ms=(
                settings.kafka_fetch_max_wait_ms
                if prompt
                else settings.kafka_background_fetch_max_wait_ms
            ),
            heartbeat_interval_ms=settings.kafka_heartbeat_ms,
        )

    async def run(self, stop: asyncio.Event) -> None:
        await self._consumer.start()
        try:
            if self.group_id:
                self._consumer.subscribe(self.topics)
            else:
                await self._assign_all()
            self.ready.set()
            while not stop.is_set():
                batches = await self._consumer.getmany(timeout_ms=200, max_records=self.max_records)
                for tp, records in batches.items():
                    if not await self._process(tp, records, stop):
                        return  # stopping mid-retry: the batch stays uncommitted
                # getmany() answers from its buffer without yielding, and a handler that never
                # awaits (an in-memory index) would hold the event loop for everything fetched:
                # let the service's requests run between two takes of ``max_records``.
                await asyncio.sleep(0)
                await self._record_lag()
        finally:
            await self._consumer.stop()

    async def _assign_all(self) -> None:
        partitions = []
        for topic in self.topics:
            ids = await self._wait_for_partitions(topic)
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        self._consumer.assign(partitions)
        if self.start_offsets is not None:
            offsets = await self.start_offsets()
            first = await self._consumer.beginning_offsets(partitions)
            ends = await self._consumer.end_offsets(partitions)
            for tp in partitions:
                at = offsets.get((tp.topic, tp.partition))
                # Past the end: the log started over (a new in-memory broker); before the
                # beginning: retention took the rest. Either way, all that there is.
                if at is None or not first[tp] <= at <= ends[tp]:
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, at)
            return
        if self.start_at_ms is None:
            await self._consumer.seek_to_end(*partitions)
            return
        when = self.start_at_ms()
        found = await self._consumer.offsets_for_times(dict.fromkeys(partitions, when))
        for tp in partitions:
            hit = found.get(tp)
            if hit is None:
                await self._consumer.seek_to_end(tp)
            else:
                self._consumer.seek(tp, hit.offset)

    async def _wait_for_partitions(self, topic: str) -> set[int]:
        for _ in range(100):
            ids = self._consumer.partitions_for_topic(topic)
            if ids:
                return set(ids)
            await self._consumer._client.force_metadata_update()  # noqa: SLF001
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {topic} does not exist; run `polder up` or create the topics")

    async def _process(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]], stop: asyncio.Event
    ) -> bool:
        """Handle one partition's batch and commit it. False if stopped before it was durable."""
        good: list[Received] = []
        for record in records:
            try:
                event = self.registry.decode(record.value or b"")
            except (DecodeError, SchemaError) as exc:
                await self._dead_letter(record, exc)
                continue
            key = record.key.decode(errors="replace") if record.key is not None else None
            good.append(Received(event, key, record.topic, record.partition, record.offset))
        failures = 0
        while good:
            try:
                await self.handler(good)
                break
            except Exception:
                # The batch is not durable: keep its offsets uncommitted and try again.
                failures += 1
                self.metrics.handler_failures.labels(self.name).inc()
                log.exception("consumer handler failed; retrying batch", consumer=self.name)
                backoff = min(self.retry_backoff_s * 2 ** (failures - 1), 30.0)
                await wait_for_event(stop, backoff)
                if stop.is_set():
                    return False
        self.metrics.events_consumed.labels(self.name, tp.topic).inc(len(good))
        if self.group_id:
            try:
                await self._consumer.commit({tp: records[-1].offset + 1})
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance took the partition away: its new owner redelivers, idempotently.
                log.warning("commit refused after rebalance", consumer=self.name, error=str(exc))
        return True

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
        await dead_letter(
            self.bus,
            self.metrics,
            consumer=self.name,
            kind="decode" if isinstance(exc, DecodeError) else "schema",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") if record.key is not None else None,
            reason=str(exc),
            payload=record.value or b"",
            time=datetime.fromtimestamp(record.timestamp / 1000, tz=UTC),
        )

    async def _record_lag(self) -> None:
        """Lag against the log end, asked of the broker at most once a second (the high
        watermark seen at the last fetch would hide a slow consumer's delay)."""
        now = time.monotonic()
        if now - self._lag_checked < 1.0:
            return
        self._lag_checked = now
        assigned = list(self._consumer.assignment())
        if not assigned:
            return
        ends = await self._consumer.end_offsets(assigned)
        for tp in assigned:
            position = await self._consumer.position(tp)
            self.metrics.consumer_lag.labels(self.name, tp.topic, str(tp.partition)).set(
                max(0, ends[tp] - position)
            )


async def dead_letter(
    bus: Bus,
    metrics: CommonMetrics,
    *,
    consumer: str,
    kind: str,
    topic: str,
    partition: int,
    offset: int,
    key: str | None,
    reason: str,
    payload: bytes,
    time: datetime,
) -> None:
    """Put a record a consumer cannot process on polder.dlq with the reason (at least once: a
    retried batch may send it again, like every event), count it and log it."""
    letter = bus.event(
        "polder.dlq.dead_letter.v1",
        subject=f"{topic}/{partition}/{offset}",
        data={
            "consumer": consumer,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key,
            "reason": reason[:2000],
            "payload_b64": base64.b64encode(payload).decode(),
        },
        time=time,
    )
    await bus.publish(DLQ, key=key or letter.subject, event=letter)
    metrics.dead_letters.labels(consumer, kind).inc()
    log.warning("dead-lettered a record", consumer=consumer, reason=reason[:200])


async def create_topics(
    settings: Settings, topics: Sequence[Topic] = TOPICS, *, embedded: bool
) -> None:
    """Create the topics with their partition counts and retention (one replica: what `polder up`
    and the tests need; production creates them with deploy/'s definitions). ``embedded``: the
    broker is the embedded one, whose layout may have fewer partitions (``Topic.partitions_on``).
    Existing topics are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                settings.topic(t.name),
                num_partitions=t.partitions_on(embedded=embedded),
                replication_factor=1,
                topic_configs={"retention.ms": str(t.retention_ms)},
            )
            for t in topics
            if settings.topic(t.name) not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently
                await admin.create_topics(wanted)
    finally:
        await admin.close()
