"""Request and response bodies of the location API (not the events, not the tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter


class PingIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    lat: float
    lng: float
    recorded_at: AwareDatetime
    accuracy_m: float | None = None
    speed_mps: float | None = None
    heading_deg: float | None = None


class PingBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    pings: list[PingIn] = Field(min_length=1, max_length=500)


class Rejection(BaseModel):
    index: int
    reason: str


class IngestResult(BaseModel):
    accepted: int
    rejected: list[Rejection]


class NearbyDriver(BaseModel):
    driver_id: str
    lat: float
    lng: float
    distance_m: float
    cell: str
    age_s: float


class NearbyOut(BaseModel):
    drivers: list[NearbyDriver]


class SupplyCell(BaseModel):
    cell: str
    drivers: int


class SupplyOut(BaseModel):
    cells: list[SupplyCell]


BATCH = TypeAdapter(PingBatchIn)
ONE_PING = TypeAdapter(PingIn)
PING_LIST = TypeAdapter(list[PingIn])


# --- the ingest fast path ---------------------------------------------------------------------
# At 50 000 pings/s, parsing with the pydantic models above took a fifth of the location
# service's CPU. msgspec decodes the same shapes about four times faster. It accepts a subset of
# what the models accept (checked by tests/unit/test_location_parse.py): JSON with NaN or
# Infinity, numbers beyond float range, times without seconds or with a decimal comma fail here
# and go to the models, which either accept them too or say precisely why not. The one
# difference in what both accept: a time with more than six fractional digits is rounded to the
# microsecond here and truncated by pydantic (sub-microsecond; pings are kept in milliseconds).
# gc=False: these hold numbers, a datetime and a list of pings, never a cycle, so the collector
# need not track them (50 000 fewer tracked objects a second; see common.gctune).


class FastPing(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    lat: float
    lng: float
    recorded_at: Annotated[datetime, msgspec.Meta(tz=True)]
    accuracy_m: float | None = None
    speed_mps: float | None = None
    heading_deg: float | None = None


class FastBatch(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    pings: Annotated[list[FastPing], msgspec.Meta(min_length=1, max_length=500)]


_FAST_BATCH = msgspec.json.Decoder(FastBatch)
_FAST_LIST = msgspec.json.Decoder(list[FastPing])
_FAST_ONE = msgspec.json.Decoder(FastPing)


def parse_batch(raw: bytes | str) -> list[FastPing] | list[PingIn]:
    """A request body ``{"pings": [...]}``; pydantic's ValidationError says what is wrong."""
    try:
        return _FAST_BATCH.decode(raw).pings
    except msgspec.DecodeError:
        return BATCH.validate_json(raw).pings


def parse_frame(frame: str) -> list[FastPing] | list[PingIn]:
    """A WebSocket frame: one ping object or an array of them (ValidationError as above)."""
    many = frame.lstrip().startswith("[")
    try:
        return _FAST_LIST.decode(frame) if many else [_FAST_ONE.decode(frame)]
    except msgspec.DecodeError:
        # One adapter per shape: a union adapter costs ~40 % more per frame.
        return PING_LIST.validate_json(frame) if many else [ONE_PING.validate_json(frame)]
