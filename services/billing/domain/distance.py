"""Engaged distance: the metres a worker drove during engaged segments, from its accepted pings.

Issue 4 ("Time"): the distance of the worker's accepted pings during en_route_pickup,
at_pickup, on_trip and at_dropoff, with GPS jitter filtered. Prop 22's "engaged miles" and
PayUp's engaged miles are this distance (pay-rules.md §1); NYC TLC pays P3 miles (on_trip +
at_dropoff).

The trace is made of legs between the pings kept by ``JitterFilter`` (rules in its docstring);
each leg is spread over the segments its time span overlaps, in proportion to the overlap, so a
leg that starts while idle and ends en route counts only its en-route part. Pings may come in
any order and more than once: they are sorted by time and a time seen twice is kept once.

Ping times are compared with segment times, which are server times; ``recorded_at_ms`` is the
device's clock. ``batch_clock_offsets_ms`` measures how far a device's clock is off at each
batch the pings came in (a phone's clock may be corrected, or set back, mid-shift), and
``on_server_clock`` places each ping on the server's clock with its batch's offset before legs
are measured. ``estimate_clock_offset_ms`` is the one-offset estimate for a clock that never
changes.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from polder.billing.domain.segments import ENGAGED, P2, P3, Segment, SegmentKind
from polder.common.geoindex import haversine_m


@dataclass(frozen=True, slots=True)
class Ping:
    """One accepted ping of ``polder.location.pings_recorded.v1``."""

    recorded_at_ms: int
    lat: float
    lng: float
    accuracy_m: float | None = None


@dataclass(frozen=True, slots=True)
class JitterFilter:
    """Which pings make legs, and which moves count.

    - A ping less accurate than ``max_accuracy_m`` is dropped (a cell-tower fix, not a position).
    - A move is measured from an anchor, the last ping that counted. A move shorter than
      ``min_move_m`` — or than either ping's own accuracy — is jitter: it does not count and
      the anchor stays, so a worker standing still adds nothing, while a slow crawl still adds up
      once it has moved far enough from the anchor (only the last uncounted metres are lost).
    - A ping reached faster than ``max_speed_mps`` from the ping before it (70 m/s = 252 km/h,
      as the location service screens) is a jump: it is dropped. If the next ping agrees with
      the dropped one rather than with the trace, the trace was the outlier (or it resumed
      elsewhere): it goes on from those two, and the jump itself never counts.
    - Two pings more than ``max_gap_ms`` apart start a new trace: nothing is known of the path
      between them.
    """

    min_move_m: float = 12.0
    max_speed_mps: float = 70.0
    max_accuracy_m: float = 100.0
    max_gap_ms: int = 300_000


@dataclass(frozen=True, slots=True)
class Leg:
    """A counted move of ``distance_m`` that happened between ``start_ms`` and ``end_ms``."""

    start_ms: int
    end_ms: int
    distance_m: float


@dataclass(frozen=True, slots=True)
class TripDistance:
    trip_id: str
    engaged_m: float  # every engaged segment of the trip
    p2_m: float  # en_route_pickup + at_pickup
    p3_m: float  # on_trip + at_dropoff


@dataclass(frozen=True, slots=True)
class EngagedDistance:
    """The segments, sorted, with ``distance_m`` filled for the measured kinds; the totals."""

    segments: tuple[Segment, ...]
    trips: Mapping[str, TripDistance]
    engaged_m: float
    p3_m: float


def legs(pings: Iterable[Ping], jitter: JitterFilter = JitterFilter()) -> tuple[Leg, ...]:
    """The counted moves of a trace (see ``JitterFilter``), in time order.

    A leg's time span is from the ping before its end (not the anchor) to its end: a worker
    who stood still and then drove moved in the last interval, not during the whole wait.
    """
    trace = _sorted_unique(p for p in pings if _accurate(p, jitter))
    out: list[Leg] = []
    anchor: Ping | None = None
    last: Ping | None = None  # the last ping kept (counted or jitter)
    suspect: Ping | None = None  # a ping dropped as a jump: the anchor may be the outlier
    for p in trace:
        if (
            anchor is None
            or last is None
            or p.recorded_at_ms - last.recorded_at_ms > jitter.max_gap_ms
        ):
            anchor = last = p
            suspect = None
            continue
        if _too_fast(last, p, jitter):
            if suspect is None or _too_fast(suspect, p, jitter):
                suspect = p
                continue
            anchor = last = suspect  # the two agree: the trace goes on from the suspect
        suspect = None
        moved = haversine_m(anchor.lat, anchor.lng, p.lat, p.lng)
        if moved >= _threshold(anchor, p, jitter):
            out.append(Leg(last.recorded_at_ms, p.recorded_at_ms, moved))
            anchor = p
        last = p
    return tuple(out)


def engaged_distance(
    segments: Iterable[Segment],
    pings: Iterable[Ping],
    *,
    jitter: JitterFilter = JitterFilter(),
    clock_offset_ms: int = 0,
    kinds: frozenset[SegmentKind] = ENGAGED,
    measured: Iterable[Leg] = (),
) -> EngagedDistance:
    """Fill ``distance_m`` of the segments of ``kinds`` (engaged ones by default) from the pings.

    ``segments`` are one worker's, non-overlapping (a ``Timeline``'s); other kinds keep their
    ``distance_m``. ``clock_offset_ms`` (server minus device) is added to each ping's time.
    ``measured`` are legs measured earlier (device time, from pings no longer held: retention),
    counted as the pings' own legs are. Per-trip totals count engaged kinds only.
    """
    segs = sorted(segments, key=lambda s: (s.start_ms, s.end_ms))
    for a, b in zip(segs, segs[1:], strict=False):
        if b.start_ms < a.end_ms:
            raise ValueError(f"segments overlap: {a} / {b}")
    shifted = (
        replace(p, recorded_at_ms=p.recorded_at_ms + clock_offset_ms) if clock_offset_ms else p
        for p in pings
    )
    starts = [s.start_ms for s in segs]
    metres = [0.0] * len(segs)
    earlier = (
        replace(g, start_ms=g.start_ms + clock_offset_ms, end_ms=g.end_ms + clock_offset_ms)
        for g in measured
    )
    all_legs = sorted([*earlier, *legs(shifted, jitter)], key=lambda g: (g.start_ms, g.end_ms))
    for leg in all_legs:
        span = leg.end_ms - leg.start_ms
        i = max(0, bisect.bisect_right(starts, leg.start_ms) - 1)
        while i < len(segs) and segs[i].start_ms < leg.end_ms:
            overlap = min(segs[i].end_ms, leg.end_ms) - max(segs[i].start_ms, leg.start_ms)
            if overlap > 0 and segs[i].kind in kinds:
                metres[i] += leg.distance_m * overlap / span
            i += 1
    filled = tuple(
        replace(s, distance_m=m) if s.kind in kinds else s
        for s, m in zip(segs, metres, strict=True)
    )
    return EngagedDistance(
        segments=filled,
        trips=_per_trip(filled),
        engaged_m=sum(s.distance_m for s in filled if s.kind in ENGAGED),
        p3_m=sum(s.distance_m for s in filled if s.kind in P3),
    )


def split_at_break(
    pings: Iterable[Ping], movable: int, jitter: JitterFilter = JitterFilter()
) -> int:
    """How many of the first ``movable`` pings (by time) can be measured on their own: the
    largest count after which the trace breaks (the next accurate ping comes more than
    ``max_gap_ms`` later, or none does), so their legs are the legs the whole trace has.
    ``pings`` are a worker's, sorted by time; 0 when no break follows any of the first
    ``movable``."""
    trace = list(pings)
    best = 0
    last_accurate: int | None = None
    for i, p in enumerate(trace):
        if not _accurate(p, jitter):
            continue
        if last_accurate is not None and p.recorded_at_ms - last_accurate > jitter.max_gap_ms:
            best = max(best, min(i, movable))
        last_accurate = p.recorded_at_ms
        if i >= movable:
            break
    else:
        best = movable  # nothing after them: the trace ends
    return best


def estimate_clock_offset_ms(
    batches: Iterable[tuple[int, int]], *, tolerance_ms: int = 5_000
) -> int:
    """How far a device's clock is behind the server's (negative: ahead), from its batches.

    Each batch is ``(received_at_ms, latest recorded_at_ms in it)``. Their difference is the
    clock offset plus the time the newest ping took to arrive (buffering, network), which is
    never negative, so the smallest difference is the best estimate. Within ``tolerance_ms`` the
    device clock is trusted (0): the difference is then mostly latency, not skew.
    """
    offsets = [received - recorded for received, recorded in batches]
    if not offsets:
        return 0
    offset = min(offsets)
    return 0 if abs(offset) <= tolerance_ms else offset


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """How a device's clock offset is estimated per batch (``batch_clock_offsets_ms``).

    - ``neighbours``: batches looked at on each side (k). A run of up to k batches that came
      late (retries, a phone's buffer sent in several requests) is ignored; a level shift (the
      clock set back or forward) is followed at once, whatever k.
    - ``tolerance_ms``: an offset within it is latency, not skew: the device clock is trusted (0),
      so a phone whose clock is right is placed exactly as it recorded.
    - ``max_gap_ms``: batches received further apart than this are not neighbours (a new
      stretch, often a new shift, may come with another clock), so an offset depends only on
      its own stretch of the history, which retention and statements both read whole.
    """

    neighbours: int = 5
    tolerance_ms: int = 5_000
    max_gap_ms: int = 300_000


def robust_offsets_ms(offsets: Sequence[int], neighbours: int) -> list[int]:
    """Each batch's clock offset from the raw ``offsets`` (received minus newest recorded, in
    order of receipt): ``max(min(o[i-k..i]), min(o[i..i+k]))``.

    A raw offset is the clock's offset plus the newest ping's latency, which is never negative
    and now and then large (a retry, a buffer): the minimum of a window is the best estimate of
    the offset over it. The window behind a batch sees a level shift late and the window ahead
    sees it early; the larger of the two minima is right on both sides of a shift, up or down,
    while a run of at most k late batches inside the history is under both minima. At the very
    first (last) batches there is nothing behind (ahead): a late batch there cannot be told
    from a clock changed just after (before) it, and is taken as it came.
    """
    raw = np.asarray(offsets, dtype=np.int64)
    return [int(o) for o in _robust(raw, neighbours)]


def _robust(raw: npt.NDArray[np.int64], neighbours: int) -> npt.NDArray[np.int64]:
    k = max(0, neighbours)
    if len(raw) == 0 or k == 0:
        return raw
    # windows of k+1 over the raw offsets with the first (last) repeated k times in front
    # (behind): min(o[max(0, i-k)..i]) and min(o[i..i+k]) for every i at once
    behind = sliding_window_view(np.pad(raw, (k, 0), mode="edge"), k + 1).min(axis=1)
    ahead = sliding_window_view(np.pad(raw, (0, k), mode="edge"), k + 1).min(axis=1)
    estimate: npt.NDArray[np.int64] = np.maximum(behind, ahead)
    return estimate


def batch_clock_offsets_ms(
    pings: Iterable[tuple[int, int]], estimate: ClockEstimate = ClockEstimate()
) -> dict[int, int]:
    """The device clock's offset (server minus device, ms) at each batch, keyed by the batch's
    ``received_at`` in epoch ms.

    ``pings`` are ``(received_ms, recorded_at_ms)`` of a worker's stored pings, any order; the
    pings of one ``pings_recorded`` event share its ``received_at``, which makes them a batch.
    A batch's raw offset is its receipt minus its newest ping; ``robust_offsets_ms`` smooths
    them within each stretch (``ClockEstimate``), and an offset within the tolerance is 0.
    A month of a worker's pings (~150 000) takes some 20 ms, in numpy.
    """
    pairs = np.fromiter(chain.from_iterable(pings), dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return {}
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]  # by receipt, then device time
    received_all = pairs[:, 0]
    last_of_batch = np.flatnonzero(np.diff(received_all, append=received_all[-1] + 1))
    received = received_all[last_of_batch]
    raw = received - pairs[last_of_batch, 1]  # receipt minus the batch's newest ping
    smooth = np.empty_like(raw)
    breaks = np.flatnonzero(np.diff(received) > estimate.max_gap_ms) + 1
    for lo, hi in zip([0, *breaks], [*breaks, len(raw)], strict=True):
        smooth[lo:hi] = _robust(raw[lo:hi], estimate.neighbours)
    smooth[np.abs(smooth) <= estimate.tolerance_ms] = 0
    return dict(zip(received.tolist(), smooth.tolist(), strict=True))


def on_server_clock(pings: Iterable[tuple[int, Ping]], offsets: Mapping[int, int]) -> list[Ping]:
    """Each ``(received_ms, ping)`` placed on the server's clock with its batch's offset
    (``batch_clock_offsets_ms``)."""
    return [
        replace(p, recorded_at_ms=p.recorded_at_ms + offsets[received]) if offsets[received] else p
        for received, p in pings
    ]


def _accurate(p: Ping, jitter: JitterFilter) -> bool:
    return p.accuracy_m is None or p.accuracy_m <= jitter.max_accuracy_m


def _sorted_unique(pings: Iterable[Ping]) -> list[Ping]:
    """By time; of pings with the same time, one (the same whatever the arrival order)."""
    trace: list[Ping] = []
    for p in sorted(pings, key=lambda p: (p.recorded_at_ms, p.lat, p.lng, p.accuracy_m or 0.0)):
        if not trace or p.recorded_at_ms != trace[-1].recorded_at_ms:
            trace.append(p)
    return trace


def _too_fast(a: Ping, b: Ping, jitter: JitterFilter) -> bool:
    seconds = (b.recorded_at_ms - a.recorded_at_ms) / 1000
    return haversine_m(a.lat, a.lng, b.lat, b.lng) > jitter.max_speed_mps * seconds


def _threshold(a: Ping, b: Ping, jitter: JitterFilter) -> float:
    return max(jitter.min_move_m, a.accuracy_m or 0.0, b.accuracy_m or 0.0)


def _per_trip(segments: tuple[Segment, ...]) -> dict[str, TripDistance]:
    totals: dict[str, list[float]] = {}
    for s in segments:
        if s.trip_id is None or s.kind not in ENGAGED:
            continue
        t = totals.setdefault(s.trip_id, [0.0, 0.0, 0.0])
        t[0] += s.distance_m
        t[1] += s.distance_m if s.kind in P2 else 0.0
        t[2] += s.distance_m if s.kind in P3 else 0.0
    return {
        trip: TripDistance(trip, engaged_m=e, p2_m=p2, p3_m=p3)
        for trip, (e, p2, p3) in sorted(totals.items())
    }
