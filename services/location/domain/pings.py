"""Screening of incoming GPS pings: each is accepted or rejected with a reason, never silently."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

import h3


class Reason(StrEnum):
    NOT_FINITE = "not_finite"
    LAT_OUT_OF_RANGE = "lat_out_of_range"
    LNG_OUT_OF_RANGE = "lng_out_of_range"
    INVALID_ACCURACY = "invalid_accuracy"
    INVALID_SPEED = "invalid_speed"
    INVALID_HEADING = "invalid_heading"
    FUTURE = "recorded_in_future"
    STALE = "stale"
    IMPOSSIBLE_JUMP = "impossible_jump"


class PingLike(Protocol):
    """What screening reads of a ping. The API's parsed bodies satisfy it as they are, so the
    hot path builds no second object per ping."""

    @property
    def lat(self) -> float: ...
    @property
    def lng(self) -> float: ...
    @property
    def recorded_at(self) -> datetime: ...
    @property
    def accuracy_m(self) -> float | None: ...
    @property
    def speed_mps(self) -> float | None: ...
    @property
    def heading_deg(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Ping:
    lat: float
    lng: float
    recorded_at: datetime
    accuracy_m: float | None = None
    speed_mps: float | None = None
    heading_deg: float | None = None


@dataclass(frozen=True, slots=True)
class Fix:
    """The last accepted position of a driver: what the next ping is checked against."""

    lat: float
    lng: float
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class Limits:
    max_future_skew_s: float
    max_speed_mps: float
    # A ping recorded longer ago than this is stale even for a driver never seen: a phone's
    # buffer from a tunnel is minutes old, a date in 1970 or 1621 is a broken clock.
    max_age_s: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Screened:
    accepted: list[tuple[int, PingLike]]
    rejected: list[tuple[int, Reason]]
    last: Fix | None


def _shape_problem(p: PingLike) -> Reason | None:
    numbers = (p.lat, p.lng, p.accuracy_m, p.speed_mps, p.heading_deg)
    if any(x is not None and not math.isfinite(x) for x in numbers):
        return Reason.NOT_FINITE
    if not -90.0 <= p.lat <= 90.0:
        return Reason.LAT_OUT_OF_RANGE
    if not -180.0 <= p.lng <= 180.0:
        return Reason.LNG_OUT_OF_RANGE
    if p.accuracy_m is not None and p.accuracy_m < 0:
        return Reason.INVALID_ACCURACY
    if p.speed_mps is not None and p.speed_mps < 0:
        return Reason.INVALID_SPEED
    if p.heading_deg is not None and not 0.0 <= p.heading_deg <= 360.0:
        return Reason.INVALID_HEADING
    return None


def distance_m(a_lat: float, a_lng: float, b_lat: float, b_lng: float) -> float:
    return float(h3.great_circle_distance((a_lat, a_lng), (b_lat, b_lng), unit="m"))


def _motion_problem(
    p: PingLike, t: float, last: Fix | None, last_t: float, now_t: float, limits: Limits
) -> Reason | None:
    """``t``, ``last_t`` and ``now_t`` are epoch seconds: float arithmetic, not timedeltas,
    since this runs for every ping."""
    if t - now_t > limits.max_future_skew_s:
        return Reason.FUTURE
    if now_t - t > limits.max_age_s:
        return Reason.STALE
    if last is None:
        return None
    dt = t - last_t
    if dt <= 0:
        return Reason.STALE
    if distance_m(last.lat, last.lng, p.lat, p.lng) / dt > limits.max_speed_mps:
        return Reason.IMPOSSIBLE_JUMP
    return None


def screen(pings: Sequence[PingLike], last: Fix | None, now: datetime, limits: Limits) -> Screened:
    """Check a batch in recorded order against the driver's last accepted fix.

    Pings are taken in the order they were recorded (a phone may flush its buffer out of order);
    indices in the result refer to the batch as sent. A ping no newer than the last accepted one
    is stale, so a retried batch is not indexed twice.
    """
    accepted: list[tuple[int, PingLike]] = []
    rejected: list[tuple[int, Reason]] = []
    times = [p.recorded_at.timestamp() for p in pings]
    now_t = now.timestamp()
    last_t = last.recorded_at.timestamp() if last is not None else 0.0
    for i in sorted(range(len(pings)), key=times.__getitem__):
        p = pings[i]
        reason = _shape_problem(p) or _motion_problem(p, times[i], last, last_t, now_t, limits)
        if reason is not None:
            rejected.append((i, reason))
            continue
        accepted.append((i, p))
        last, last_t = Fix(p.lat, p.lng, p.recorded_at), times[i]
    rejected.sort()
    return Screened(accepted=accepted, rejected=rejected, last=last)
