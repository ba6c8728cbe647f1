"""Every Kafka topic Polder uses: name, partitions, key, retention and the event types it carries.

`schemas/asyncapi.yaml` documents the same list, and the production topic definitions in
deploy/ (compose, Strimzi) are checked against it; tests keep them all in step.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    partitions: int
    key: str
    messages: tuple[str, ...]
    retention_ms: int
    why_retention: str


DRIVER_LOCATIONS = Topic(
    "polder.driver.locations",
    partitions=8,
    key="driver_id",
    messages=("polder.location.pings_recorded.v1",),
    retention_ms=3 * DAY_MS,
    why_retention="pings; billing keeps thinned copies, so this is recovery room, not an archive",
)
DRIVER_EVENTS = Topic(
    "polder.driver.events",
    partitions=8,
    key="driver_id",
    messages=("polder.driver.state_changed.v1",),
    retention_ms=35 * DAY_MS,
    why_retention="worker status and trip steps; billing stores them: a pay period plus margin",
)
ORDERS = Topic(
    "polder.orders",
    partitions=4,
    key="order_id",
    messages=("polder.order.placed.v1", "polder.order.status_changed.v1"),
    retention_ms=35 * DAY_MS,
    why_retention="orders and their status changes, as long as the worker events",
)
DISPATCH = Topic(
    "polder.dispatch",
    partitions=4,
    key="order_id",
    messages=("polder.dispatch.offer_made.v1", "polder.dispatch.offer_resolved.v1"),
    retention_ms=35 * DAY_MS,
    why_retention="offers made and resolved, as long as the worker events",
)
BILLING = Topic(
    "polder.billing",
    partitions=4,
    key="driver_id",
    messages=("polder.billing.posted.v1",),
    retention_ms=35 * DAY_MS,
    why_retention="ledger postings for downstream payouts: a pay period plus margin",
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
