"""Screening of incoming GPS pings: each is accepted or rejected with a reason, never silently."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from polder.common.geoindex import haversine_m, within_m


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
    # Two batches behind the last fix whose clock offsets (receipt minus newest ping) agree
    # within this are one clock set back, not retries (``after_stale``): a phone's latency
    # varies by a second or two, a retry's offset grows with the time it waited.
    clock_tolerance_s: float = 3.0


@dataclass(frozen=True, slots=True)
class Screened:
    accepted: list[tuple[int, PingLike]]
    rejected: list[tuple[int, Reason]]
    last: Fix | None
    # recorded_at of each accepted ping in epoch milliseconds, in the order of ``accepted``:
    # what the event carries, computed once here (a datetime's timestamp() is not free).
    accepted_ms: list[int] = field(default_factory=list)
    # accepted from a device whose clock was set back (``after_stale``)
    clock_set_back: bool = False


def _shape_problem(p: PingLike) -> Reason | None:
    lat, lng, accuracy, speed, heading = p.lat, p.lng, p.accuracy_m, p.speed_mps, p.heading_deg
    # The common case in five comparisons (each False for NaN, and infinities fail them too);
    # a ping that fails one is looked at field by field, non-finite numbers first.
    if (
        -90.0 <= lat <= 90.0
        and -180.0 <= lng <= 180.0
        and (accuracy is None or 0.0 <= accuracy < math.inf)
        and (speed is None or 0.0 <= speed < math.inf)
        and (heading is None or 0.0 <= heading <= 360.0)
    ):
        return None
    if any(x is not None and not math.isfinite(x) for x in (lat, lng, accuracy, speed, heading)):
        return Reason.NOT_FINITE
    if not -90.0 <= lat <= 90.0:
        return Reason.LAT_OUT_OF_RANGE
    if not -180.0 <= lng <= 180.0:
        return Reason.LNG_OUT_OF_RANGE
    if accuracy is not None and accuracy < 0:
        return Reason.INVALID_ACCURACY
    if speed is not None and speed < 0:
        return Reason.INVALID_SPEED
    return Reason.INVALID_HEADING


def distance_m(a_lat: float, a_lng: float, b_lat: float, b_lng: float) -> float:
    return haversine_m(a_lat, a_lng, b_lat, b_lng)


def _motion_problem(
    p: PingLike,
    t: float,
    last: tuple[float, float] | None,
    last_t: float,
    now_t: float,
    limits: Limits,
) -> Reason | None:
    """``t``, ``last_t`` and ``now_t`` are epoch seconds: float arithmetic, not timedeltas,
    since this runs for every ping. ``last`` is the (lat, lng) accepted before this ping."""
    if t - now_t > limits.max_future_skew_s:
        return Reason.FUTURE
    if now_t - t > limits.max_age_s:
        return Reason.STALE
    if last is None:
        return None
    dt = t - last_t
    if dt <= 0:
        return Reason.STALE
    if not within_m(last[0], last[1], p.lat, p.lng, limits.max_speed_mps * dt):
        return Reason.IMPOSSIBLE_JUMP
    return None


def screen(pings: Sequence[PingLike], last: Fix | None, now: datetime, limits: Limits) -> Screened:
    """Check a batch in recorded order against the driver's last accepted fix.

    Pings are taken in the order they were recorded (a phone may flush its buffer out of order);
    indices in the result refer to the batch as sent. A ping no newer than the last accepted one
    is stale, so a retried batch is not indexed twice.

    This runs for every ping the service takes (50 000 a second): it keeps to floats and tuples
    and builds the one ``Fix`` it returns at the end.
    """
    accepted: list[tuple[int, PingLike]] = []
    accepted_ms: list[int] = []
    rejected: list[tuple[int, Reason]] = []
    times = [p.recorded_at.timestamp() for p in pings]
    now_t = now.timestamp()
    if last is None:
        last_point, last_t = None, 0.0
    else:
        last_point, last_t = (last.lat, last.lng), last.recorded_at.timestamp()
    newest: PingLike | None = None
    order: Sequence[int] = range(len(pings))
    if sorted(times) != times:  # in C: a loop over the pairs in Python cost more
        order = sorted(order, key=times.__getitem__)
    for i in order:
        p = pings[i]
        t = times[i]
        reason = _shape_problem(p) or _motion_problem(p, t, last_point, last_t, now_t, limits)
        if reason is not None:
            rejected.append((i, reason))
            continue
        accepted.append((i, p))
        accepted_ms.append(int(t * 1000))
        newest, last_point, last_t = p, (p.lat, p.lng), t
    rejected.sort()
    if newest is not None:
        last = Fix(newest.lat, newest.lng, newest.recorded_at)
    return Screened(accepted=accepted, rejected=rejected, last=last, accepted_ms=accepted_ms)


@dataclass(frozen=True, slots=True)
class SetBack:
    """A batch refused as stale, remembered as maybe the first of a clock set back."""

    offset_s: float  # its receipt minus its newest ping: the device clock's offset plus latency
    newest: Fix  # its newest ping, on the device's (new) clock
    received_t: float  # its receipt, server time (epoch s)


def screen_batch(
    pings: Sequence[PingLike],
    last: Fix | None,
    last_received_t: float,
    remembered: SetBack | None,
    now: datetime,
    limits: Limits,
) -> tuple[Screened, SetBack | None]:
    """One batch of a driver: ``screen`` against its last fix (received at ``last_received_t``,
    server epoch s), then ``after_stale`` if the batch was refused whole as stale. Answers the
    screening and the ``SetBack`` to remember for the driver's next batch (None: forget)."""
    result = screen(pings, last, now, limits)
    if (
        last is None
        or result.accepted
        or not result.rejected
        or any(reason is not Reason.STALE for _, reason in result.rejected)
    ):
        return result, None
    return after_stale(pings, result, last, last_received_t, remembered, now, limits)


def after_stale(
    pings: Sequence[PingLike],
    stale: Screened,
    last: Fix,
    last_received_t: float,
    remembered: SetBack | None,
    now: datetime,
    limits: Limits,
) -> tuple[Screened, SetBack | None]:
    """A batch ``screen`` found entirely stale (no newer than the driver's last fix): a retry,
    or a phone whose clock was set back (an NTP correction, the user). Answers the batch's
    screening and what to remember of it for the driver's next batch.

    The first such batch stays stale (a retry must not be taken twice) but is remembered with
    its clock offset. When the next batch is again behind the last fix, its offset agrees with
    the remembered one within ``clock_tolerance_s`` and its newest ping is newer than the
    remembered batch's (the device's clock moved on: a second retry of the same batch does not),
    the clock was set back: the batch is screened as if the remembered batch's newest ping were
    the last fix, so the driver is heard again, having lost at most one batch. Whether that
    ping could be reached from the last fix is checked with the server's time between their
    receipts (plus the tolerance), as device times of two clocks do not compare; the pings
    after it are checked on the device's new clock as usual. A retry of an older batch keeps the
    remembered one; a newer batch whose offset disagrees is remembered instead.

    O(batch) and only for batches refused whole: the per-ping path (``screen``) is untouched, and
    one ``SetBack`` per driver is all it keeps.
    """
    newest = max(pings, key=lambda p: p.recorded_at)
    newest_t, now_t = newest.recorded_at.timestamp(), now.timestamp()
    offset = now_t - newest_t
    if remembered is not None:
        moved_on = newest_t > remembered.newest.recorded_at.timestamp()
        if not moved_on:  # a retry of the remembered batch, or of one before it
            return stale, remembered
        if abs(offset - remembered.offset_s) <= limits.clock_tolerance_s:
            anchor = remembered.newest
            elapsed = remembered.received_t - last_received_t + limits.clock_tolerance_s
            reach = limits.max_speed_mps * max(0.0, elapsed)
            if haversine_m(last.lat, last.lng, anchor.lat, anchor.lng) <= reach:
                return replace(screen(pings, anchor, now, limits), clock_set_back=True), None
    return stale, SetBack(offset, Fix(newest.lat, newest.lng, newest.recorded_at), now_t)
