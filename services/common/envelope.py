"""CloudEvents 1.0 envelope in structured JSON mode, encoded with orjson."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import uuid_utils

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"


class DecodeError(ValueError):
    """Bytes that are not a CloudEvents JSON envelope."""


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    source: str
    subject: str
    data: Mapping[str, Any]
    id: str = field(default_factory=lambda: str(uuid_utils.uuid7()))
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        return {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": format_time(self.time),
            "subject": self.subject,
            "datacontenttype": CONTENT_TYPE,
            "data": self.data,
        }


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision and a ``Z``, the one form Polder writes."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(s: str) -> datetime:
    t = datetime.fromisoformat(s)
    if t.tzinfo is None:
        raise ValueError(f"timestamp without offset: {s!r}")
    return t.astimezone(UTC)


def encode(event: Event) -> bytes:
    return orjson.dumps(event.to_dict())


def decode_dict(raw: bytes) -> dict[str, Any]:
    """Parse bytes into a JSON object; the schema registry checks its shape."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DecodeError("envelope is not a JSON object")
    return doc


def from_dict(doc: Mapping[str, Any]) -> Event:
    """Build an Event from an envelope already validated against the envelope schema."""
    try:
        return Event(
            type=doc["type"],
            source=doc["source"],
            subject=doc["subject"],
            data=doc["data"],
            id=doc["id"],
            time=parse_time(doc["time"]),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise DecodeError(f"bad envelope: {exc}") from exc
