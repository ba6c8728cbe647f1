"""Request and response bodies of the location API (not the events, not the tables)."""

from __future__ import annotations

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
