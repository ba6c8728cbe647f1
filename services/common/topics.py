"""Every Kafka topic Polder uses: name, partitions, key, retention and the event types it carries.

`schemas/asyncapi.yaml` documents the same list, and the production topic definitions in
deploy/ (compose, Strimzi) are checked against it; tests keep them all in step.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Topic:
    """``partitions`` is the production layout (deploy/ and the AsyncAPI document say the same);
    ``embedded_partitions``, where set, is the layout on the embedded broker (Tansu), which
    `polder up`, the tests and the benchmarks create.

    Why they differ: Tansu's memory engine keeps every batch a produce request writes as an
    object of its partition and lists all of a partition's objects on every fetch that finds
    data there (it has no retention and no index). A producer's request writes one object into
    each partition it touches, so a busy stream spread over more partitions makes every fetch
    list more objects, and a broker that has run for minutes answers ever more slowly. On
    Apache Kafka, whose segment index finds an offset directly, partitions cost nothing like
    that and are what lets a consumer group scale out."""

    name: str
    partitions: int
    key: str
    messages: tuple[str, ...]
    retention_ms: int
    why_retention: str
    embedded_partitions: int | None = None

    def partitions_on(self, *, embedded: bool) -> int:
        """How many partitions to create this topic with on that kind of broker."""
        if embedded and self.embedded_partitions is not None:
            return self.embedded_partitions
        return self.partitions


DRIVER_LOCATIONS = Topic(
    "polder.driver.locations",
    partitions=8,
    key="driver_id",
    messages=("polder.location.pings_recorded.v1",),
    retention_ms=3 * DAY_MS,
    why_retention="pings; billing keeps thinned copies, so this is recovery room, not an archive",
    # ~20 produce requests a second at full ingest, each touching every partition: with 8, a
    # 3-minute run at 51 000 pings/s took the ping→index p99 from 99 ms to 950 ms (the broker
    # 0.36 → 0.50 core); with 2 it stayed at 100 ms (loadtests/README.md, "8 Dec, 03:00").
    embedded_partitions=2,
)
DRIVER_EVENTS = Topic(
    "polder.driver.events",
    partitions=8,
    key="driver_id",
    messages=("polder.driver.state_changed.v1",),
    retention_ms=35 * DAY_MS,
    why_retention="worker status and trip steps; billing stores them: a pay period plus margin",
    # The outbox relays' requests touch every partition too: with 2 (and the rest at 2), the
    # broker's CPU in dispatch's rush went 0.20-0.22 -> 0.14 core (loadtests/README.md).
    embedded_partitions=2,
)
ORDERS = Topic(
    "polder.orders",
    partitions=4,
    key="order_id",
    messages=("polder.order.placed.v1", "polder.order.status_changed.v1"),
    retention_ms=35 * DAY_MS,
    why_retention="orders and their status changes, as long as the worker events",
    embedded_partitions=2,
)
DISPATCH = Topic(
    "polder.dispatch",
    partitions=4,
    key="order_id",
    messages=("polder.dispatch.offer_made.v1", "polder.dispatch.offer_resolved.v1"),
    retention_ms=35 * DAY_MS,
    why_retention="offers made and resolved, as long as the worker events",
    embedded_partitions=2,
)
BILLING = Topic(
    "polder.billing",
    partitions=4,
    key="driver_id",
    messages=("polder.billing.posted.v1",),
    retention_ms=35 * DAY_MS,
    why_retention="ledger postings for downstream payouts: a pay period plus margin",
    embedded_partitions=2,
)
DLQ = Topic(
    "polder.dlq",
    partitions=1,
    key="key of the original record",
    messages=("polder.dlq.dead_letter.v1",),
    retention_ms=14 * DAY_MS,
    why_retention="dead letters with their reason: two weeks to look at them",
)

TOPICS: tuple[Topic, ...] = (DRIVER_LOCATIONS, DRIVER_EVENTS, ORDERS, DISPATCH, BILLING, DLQ)
