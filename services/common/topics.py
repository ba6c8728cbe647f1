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
DLQ = Topic(
    "polder.dlq",
    partitions=1,
    key="key of the original record",
    messages=("polder.dlq.dead_letter.v1",),
)

TOPICS: tuple[Topic, ...] = (DRIVER_LOCATIONS, DLQ)
