"""Engaged distance from pings, with GPS jitter filtered (issue 4 "Time").

Rules (``polder.billing.domain.distance.JitterFilter``): moves under 12 m (or the pings' own
accuracy) from the last counted position are jitter; a ping reached faster than 70 m/s is a jump
and dropped; pings worse than 100 m accuracy are dropped; pings over 5 min apart start a new
trace; each leg is spread over the segments it overlaps in time; P3 = on_trip + at_dropoff,
engaged = en_route_pickup + at_pickup + on_trip + at_dropoff (Prop 22 / PayUp engaged miles,
NYC TLC P3 miles; pay-rules.md §1).

Pings walk north along a meridian, where a metre is exactly 1 / M_PER_DEG degree of latitude, so
every expected distance below is a sum of the metres written.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from polder.billing.domain.distance import (
    JitterFilter,
    Ping,
    batch_clock_offsets_ms,
    engaged_distance,
    estimate_clock_offset_ms,
    legs,
    on_server_clock,
    robust_offsets_ms,
)
from polder.billing.domain.segments import Segment, SegmentKind

K = SegmentKind
T0 = 1_750_000_000_000
M_PER_DEG = 2 * math.pi * 6_371_008.8 / 360  # the haversine radius of polder.common.geoindex
LAT0, LNG0 = 52.37, 4.89


def at(seconds: float) -> int:
    return T0 + int(seconds * 1000)


def ping(seconds: float, north_m: float, accuracy_m: float | None = None) -> Ping:
    return Ping(at(seconds), LAT0 + north_m / M_PER_DEG, LNG0, accuracy_m)


def seg(kind: SegmentKind, start_s: float, end_s: float, trip: str | None = "t") -> Segment:
    return Segment("d", kind, at(start_s), at(end_s), trip_id=trip)


def metres(segments: tuple[Segment, ...]) -> list[float]:
    return [round(s.distance_m, 3) for s in segments]


def test_a_straight_drive_on_trip_counts_every_metre() -> None:
    # 10 legs of 100 m at 10 m/s inside on_trip: 1000 m of P3 and engaged distance.
    pings = [ping(10 * i, 100 * i) for i in range(11)]
    result = engaged_distance([seg(K.ON_TRIP, 0, 100)], pings)
    assert metres(result.segments) == [1000.0]
    assert result.engaged_m == pytest.approx(1000) and result.p3_m == pytest.approx(1000)


def test_standing_still_at_pickup_adds_nothing() -> None:
    # GPS jitter of up to 6 m around one spot for 5 minutes is below the 12 m threshold.
    rng = random.Random(7)
    pings = [ping(5 * i, rng.uniform(-6, 6)) for i in range(61)]
    result = engaged_distance([seg(K.AT_PICKUP_WITHIN_GRACE, 0, 300)], pings)
    assert metres(result.segments) == [0.0]


def test_a_slow_crawl_still_adds_up_once_far_enough_from_the_anchor() -> None:
    # 5 m per ping: counted in moves of 15 m (at 15, 30, 45 m); the last 5 m are not yet a move.
    pings = [ping(4 * i, 5 * i) for i in range(11)]
    assert metres(engaged_distance([seg(K.ON_TRIP, 0, 40)], pings).segments) == [45.0]


def test_a_jump_is_dropped_and_the_trace_goes_on() -> None:
    # 1000 m in 10 s is 100 m/s > 70 m/s: that ping is dropped; 0 → 200 m over 20 s counts.
    pings = [ping(0, 0), ping(10, 1000), ping(20, 200)]
    assert legs(pings) == (legs([ping(0, 0), ping(20, 200)])[0],)
    assert metres(engaged_distance([seg(K.ON_TRIP, 0, 20)], pings).segments) == [200.0]


def test_an_outlier_first_ping_does_not_hold_the_trace_hostage() -> None:
    # The first ping is 5 km off; the next two agree with each other, so the trace goes on from
    # them: 9 legs of 100 m between the 10 good pings, the jump never counted.
    pings = [ping(0, 5000)] + [ping(10 * i, 100 * i) for i in range(1, 11)]
    assert metres(engaged_distance([seg(K.ON_TRIP, 0, 100)], pings).segments) == [900.0]


def test_a_leg_is_spread_over_the_segments_it_overlaps() -> None:
    # 100 m between 0 and 10 s; en route from 5 s: half of the leg's time, so half its metres.
    # The idle half is not engaged and is not filled.
    result = engaged_distance(
        [seg(K.IDLE, 0, 5, trip=None), seg(K.EN_ROUTE_PICKUP, 5, 10)], [ping(0, 0), ping(10, 100)]
    )
    assert metres(result.segments) == [0.0, 50.0]


def test_per_trip_totals_split_p2_and_p3() -> None:
    # En route 500 m, standing at pickup, 2000 m on the trip, standing at drop-off.
    pings = (
        [ping(10 * i, 50 * i) for i in range(11)]  # 0..100 s: 0 → 500 m
        + [ping(100 + 10 * i, 500) for i in range(1, 11)]  # at pickup
        + [ping(200 + 10 * i, 500 + 100 * i) for i in range(1, 21)]  # 200..400 s: → 2500 m
        + [ping(400 + 10 * i, 2500) for i in range(1, 6)]  # at drop-off
    )
    segments = [
        seg(K.EN_ROUTE_PICKUP, 0, 100),
        seg(K.AT_PICKUP_WITHIN_GRACE, 100, 200),
        seg(K.ON_TRIP, 200, 400),
        seg(K.AT_DROPOFF, 400, 450),
    ]
    result = engaged_distance(segments, pings)
    assert metres(result.segments) == [500.0, 0.0, 2000.0, 0.0]
    trip = result.trips["t"]
    assert (trip.trip_id, round(trip.p2_m, 3), round(trip.p3_m, 3)) == ("t", 500.0, 2000.0)
    assert trip.engaged_m == pytest.approx(2500)
    assert result.p3_m == pytest.approx(2000)


def test_order_and_duplicates_of_pings_do_not_matter() -> None:
    pings = [ping(10 * i, 80 * i) for i in range(11)]
    shuffled = pings * 3
    random.Random(3).shuffle(shuffled)
    segments = [seg(K.EN_ROUTE_PICKUP, 0, 40), seg(K.ON_TRIP, 40, 100)]
    assert engaged_distance(segments, shuffled) == engaged_distance(segments, pings)


def test_pings_too_far_apart_start_a_new_trace() -> None:
    # 1 km in 400 s is plausible but the path is unknown: not counted (gap > 300 s).
    assert legs([ping(0, 0), ping(400, 1000)]) == ()
    assert len(legs([ping(0, 0), ping(400, 1000)], JitterFilter(max_gap_ms=600_000))) == 1


def test_accuracy_drops_bad_fixes_and_raises_the_jitter_threshold() -> None:
    # A 200 m-accuracy fix is dropped; with 30 m accuracy a 20 m move is still jitter.
    assert legs([ping(0, 0), ping(10, 150, accuracy_m=200)]) == ()
    assert legs([ping(0, 0, 30), ping(10, 20, 30)]) == ()
    assert [round(leg.distance_m) for leg in legs([ping(0, 0, 30), ping(10, 31, 30)])] == [31]


def test_a_device_clock_behind_the_server_is_corrected() -> None:
    # The device clock is 60 s behind: its pings at "0..100 s" happened during on_trip at 60..160.
    segments = [seg(K.EN_ROUTE_PICKUP, 0, 60), seg(K.ON_TRIP, 60, 160)]
    pings = [ping(10 * i, 100 * i) for i in range(11)]
    result = engaged_distance(segments, pings, clock_offset_ms=60_000)
    assert metres(result.segments) == [0.0, 1000.0]


def test_clock_offset_is_the_smallest_delay_beyond_the_tolerance() -> None:
    # Received minus newest recorded: 75 s and 60 s → 60 s behind; 1.2 s is latency, not skew.
    assert estimate_clock_offset_ms([(at(1000), at(925)), (at(2000), at(1940))]) == 60_000
    assert estimate_clock_offset_ms([(at(1000), at(998.8))]) == 0
    assert estimate_clock_offset_ms([]) == 0


def test_overlapping_segments_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        engaged_distance([seg(K.ON_TRIP, 0, 10), seg(K.AT_DROPOFF, 5, 20)], [])


def test_a_trace_is_split_for_retention_only_where_it_breaks() -> None:
    from polder.billing.domain.distance import split_at_break

    def at(*seconds: int, bad: frozenset[int] = frozenset()) -> list[Ping]:
        return [
            Ping(s * 1000, 52.37 + i * 1e-3, 4.89, 500.0 if i in bad else 5.0)
            for i, s in enumerate(seconds)
        ]

    trace = at(0, 10, 20, 400, 410, 420)  # a 380 s pause after the third ping
    assert split_at_break(trace, 6) == 6  # all of it: nothing follows
    assert split_at_break(trace, 5) == 3  # up to the pause: the rest is one unbroken trace
    assert split_at_break(trace, 2) == 0  # no break after the first two
    # a cell-tower fix inside the pause does not bridge it (it never makes a leg): it goes
    # with the part before
    assert split_at_break(at(0, 10, 20, 200, 400, 410, bad=frozenset({3})), 5) == 4
    # split where it breaks: the legs of the parts are the legs of the whole
    whole = legs(trace)
    n = split_at_break(trace, 5)
    assert legs(trace[:n]) + legs(trace[n:]) == whole


# --- the device clock, batch by batch -------------------------------------------------------
#
# A batch's raw offset is its receipt minus its newest ping: the clock's offset (server minus
# device) plus the newest ping's latency (never negative; large for a retry or a buffer).


def offsets(raw_s: list[float], neighbours: int = 3) -> list[float]:
    """Each batch's estimated offset, in seconds, from raw offsets in seconds."""
    ms = robust_offsets_ms([int(o * 1000) for o in raw_s], neighbours)
    return [o / 1000 for o in ms]


def test_a_constant_skew_is_the_smallest_delay_around_each_batch() -> None:
    assert offsets([600.2] * 7) == [600.2] * 7
    assert offsets([-600.0] * 5) == [-600.0] * 5
    # latencies vary: inside the history the smallest around; at its first and last batches
    # there is nothing behind (ahead) to compare with, and a batch keeps some of its latency
    raw = [600.2, 600.1, 600.9, 600.1, 600.3, 600.2, 600.4]
    assert offsets(raw, 3) == [600.2, 600.1, 600.1, 600.1, 600.2, 600.2, 600.4]
    assert all(600.1 <= o <= r for o, r in zip(offsets(raw), raw, strict=True))


def test_a_clock_set_back_mid_shift_is_followed_at_once() -> None:
    # the device clock goes back 5 minutes after the fourth batch: its offset rises by 300 s
    raw = [0.2, 0.2, 0.4, 0.2, 300.3, 300.2, 300.5, 300.2, 300.2]
    assert offsets(raw) == [0.2, 0.2, 0.2, 0.2, 300.2, 300.2, 300.2, 300.2, 300.2]


def test_a_clock_set_forward_mid_shift_is_followed_at_once() -> None:
    raw = [120.2, 120.2, 120.3, 0.2, 0.3, 0.4, 0.2]
    assert offsets(raw) == [120.2, 120.2, 120.2, 0.2, 0.2, 0.2, 0.2]


def test_a_retry_spike_is_ignored() -> None:
    # the fourth batch came 40 s late (a retry); a run of up to k late batches is ignored
    raw = [0.2, 0.3, 0.2, 40.2, 0.2, 0.3, 0.2]
    assert offsets(raw) == [0.2] * 7
    late_run = [0.2, 0.2, 0.2, 40.0, 37.0, 34.0, 0.2, 0.2, 0.2]
    assert offsets(late_run, 3) == [0.2] * 9
    assert offsets(late_run, 2) != [0.2] * 9  # longer than k: taken as a clock change


def test_the_estimate_is_the_larger_of_the_two_window_minima() -> None:
    rng = random.Random(5)
    for _ in range(300):
        n, k = rng.randint(0, 30), rng.randint(0, 6)
        raw = [rng.choice([0, 0, 0, 300_000, -60_000]) + rng.randint(0, 2_000) for _ in range(n)]
        brute = [max(min(raw[max(0, i - k) : i + 1]), min(raw[i : i + k + 1])) for i in range(n)]
        assert robust_offsets_ms(raw, k) == brute, (raw, k)


def test_batch_offsets_trust_the_device_within_the_tolerance_and_split_stretches() -> None:
    # (received, recorded) of each ping; a batch is the pings received together
    skewed = [(at(10), at(9.5)), (at(10), at(9)), (at(20), at(19.8)), (at(30), at(29.7))]
    assert batch_clock_offsets_ms(skewed) == {at(10): 0, at(20): 0, at(30): 0}
    behind = [(r, t - 60_000) for r, t in skewed]  # a minute behind: newest of each batch
    # the first batch's 0.5 s latency has nothing before it to be told from a clock change by
    assert batch_clock_offsets_ms(behind) == {at(10): 60_500, at(20): 60_200, at(30): 60_300}
    # a shift hours later is a stretch of its own: its clock tells nothing of the first one's
    later = [(at(4000), at(4000 - 120)), (at(4010), at(4010 - 121))]
    found = batch_clock_offsets_ms(behind + later)
    assert [found[at(s)] for s in (10, 20, 30, 4000, 4010)] == [
        60_500,
        60_200,
        60_300,
        120_000,
        121_000,
    ]
    assert batch_clock_offsets_ms([]) == {}


def test_pings_are_placed_with_their_batch_offset() -> None:
    pings = [(at(10), ping(9, 0)), (at(310), ping(5, 30)), (at(320), ping(15, 60))]
    offsets_ms = batch_clock_offsets_ms((r, p.recorded_at_ms) for r, p in pings)
    placed = on_server_clock(pings, offsets_ms)
    # the first batch is trusted (1 s); then the clock was set back 5 minutes
    assert [p.recorded_at_ms for p in placed] == [at(9), at(310), at(320)]
    assert [(p.lat, p.lng) for p in placed] == [(p.lat, p.lng) for _, p in pings]


def test_a_clock_set_back_mid_trip_measures_the_clean_distance() -> None:
    # 100 m every 10 s on trip from 0 to 200 s; the clock is set back 5 min at 100 s. One
    # offset for the whole history would put the second half before the trip started.
    segments = [seg(K.IDLE, -400, 0), seg(K.ON_TRIP, 0, 200), seg(K.IDLE, 200, 400)]
    clean = [(at(10 * i), ping(10 * i, 100 * i)) for i in range(21)]  # received as recorded
    setback = [
        (r, replace(p, recorded_at_ms=p.recorded_at_ms - (300_000 if i > 10 else 0)))
        for i, (r, p) in enumerate(clean)
    ]
    expected = engaged_distance(segments, [p for _, p in clean])
    assert metres(expected.segments) == [0.0, 2000.0, 0.0]
    offsets_ms = batch_clock_offsets_ms((r, p.recorded_at_ms) for r, p in setback)
    placed = engaged_distance(segments, on_server_clock(setback, offsets_ms))
    assert placed == expected
    one_offset = estimate_clock_offset_ms((r, p.recorded_at_ms) for r, p in setback)
    shifted = engaged_distance(segments, [p for _, p in setback], clock_offset_ms=one_offset)
    assert shifted != expected  # what a single offset made of it
