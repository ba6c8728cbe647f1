"""Request and response bodies of the dispatch API (not the events, not the tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, Strict

# FastAPI validates the decoded JSON in Python mode, where strict mode would refuse RFC 3339
# strings for datetimes; so numbers are strict field by field ("52.3" is not a latitude).
STRICT = ConfigDict(extra="forbid", frozen=True)


class StatusIn(BaseModel):
    model_config = STRICT
    status: Literal["online", "offline", "break"]


class StatusOut(BaseModel):
    driver_id: str
    status: str


class Point(BaseModel):
    model_config = STRICT
    lat: Annotated[float, Strict()] = Field(ge=-90, le=90, allow_inf_nan=False)
    lng: Annotated[float, Strict()] = Field(ge=-180, le=180, allow_inf_nan=False)


class OrderIn(BaseModel):
    model_config = STRICT
    kind: Literal["ride", "delivery"]
    pickup: Point
    dropoff: Point
    ready_at: AwareDatetime | None = None
    scheduled_for: AwareDatetime | None = None


class QuoteOut(BaseModel):
    currency: str
    amount_minor: int
    surge: str


class OrderCreated(BaseModel):
    order_id: str
    status: str
    quote: QuoteOut


class OrderOut(BaseModel):
    order_id: str
    status: str
    kind: str
    pickup: Point
    dropoff: Point
    quote: QuoteOut
    created_at: datetime
    ready_at: datetime | None = None
    scheduled_for: datetime | None = None
    driver_id: str | None = None
    trip_id: str | None = None
    pickup_eta_s: float | None = None
    assigned_at: datetime | None = None


class Money(BaseModel):
    currency: str
    amount_minor: int


class OfferOut(BaseModel):
    offer_id: str
    order_id: str
    kind: str
    pickup: Point
    dropoff: Point
    expires_at: datetime
    pickup_eta_s: float
    pickup_distance_m: float
    estimated_pay: Money


class OffersOut(BaseModel):
    offers: list[OfferOut]


class AcceptOut(BaseModel):
    trip_id: str
    order_id: str


class DeclineOut(BaseModel):
    offer_id: str
    status: Literal["declined"]


class TripEventIn(BaseModel):
    model_config = STRICT
    type: Literal["arrived_pickup", "picked_up", "arrived_dropoff", "completed", "cancelled"]
    reason: str | None = Field(default=None, max_length=200)


class TripEventOut(BaseModel):
    trip_id: str
    order_id: str
    driver_status: str
    order_status: str


class CancelOut(BaseModel):
    order_id: str
    status: str


class DecisionOut(BaseModel):
    batch_id: str
    decided_at: datetime
    decision: dict[str, Any]


class DecisionsOut(BaseModel):
    order_id: str
    decisions: list[DecisionOut]
