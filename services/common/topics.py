"""Every Kafka topic Polder uses: name, partitions, key and the event types it carries.

`schemas/asyncapi.yaml` documents the same list; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    partitions: int
    key: str
    messages: tuple[str, ...]


DRIVER_LOCATIONS = Topic(
    "polder.driver.locations",
    partitions=8,
    key="driver_id",
    messages=("polder.location.pings_recorded.v1",),
)
DRIVER_EVENTS = Topic(
    "polder.driver.events",
    partitions=8,
    key="driver_id",
    messages=("polder.driver.state_changed.v1",),
)
ORDERS = Topic(
    "polder.orders",
    partitions=4,
    key="order_id",
    messages=("polder.order.placed.v1", "polder.order.status_changed.v1"),
)
DISPATCH = Topic(
    "polder.dispatch",
    partitions=4,
    key="order_id",
    messages=("polder.dispatch.offer_made.v1", "polder.dispatch.offer_resolved.v1"),
)
BILLING = Topic(
    "polder.billing",
    partitions=4,
    key="driver_id",
    messages=("polder.billing.posted.v1",),
)
DLQ = Topic(
    "polder.dlq",
    partitions=1,
    key="key of the original record",
    messages=("polder.dlq.dead_letter.v1",),
)

TOPICS: tuple[Topic, ...] = (DRIVER_LOCATIONS, DRIVER_EVENTS, ORDERS, DISPATCH, BILLING, DLQ)
