"""Billing timeline: a worker's state changes → an exclusive, gap-free timeline of segments.

Rules checked (DESIGN.md §4, issue 4 "Time", and the rules numbered in
``polder.billing.domain.timeline``): every online second in exactly one segment; at_pickup split
at the product's grace (ride 120 s, delivery 300 s: tariffs' ``wait_grace_s``); duplicates change
nothing, out-of-order and late events are placed where they belong, a replay changes nothing; a
silent worker is closed at its last sign of life, inferred; seq gaps are reported.

Times below are written in seconds after T0 and converted to ms by ``at``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from polder.billing.domain.segments import Product, Segment, SegmentKind
from polder.billing.domain.timeline import (
    StateChange,
    Timeline,
    TimelineInvariantError,
    build_timeline,
    check_exclusive_and_gap_free,
    epoch_ms,
    invariant_violations,
)
from polder.dispatch.domain.states import WORKER_TRANSITIONS, Cause, WorkerStatus

K = SegmentKind
D = "driver-1"
T0 = 1_750_000_000_000
GRACE_MS = {"ride": 120_000, "delivery": 300_000}  # tariffs.json wait_grace_s
HOUR = 3_600_000


def at(seconds: float) -> int:
    return T0 + int(seconds * 1000)


def grace(product: Product | None) -> int:
    return GRACE_MS[product] if product else 0


def change(
    seq: int,
    seconds: float,
    from_: str,
    to: str,
    cause: str,
    *,
    order: str | None = None,
    trip: str | None = None,
    offer: str | None = None,
    product: Product | None = None,
    event_id: str | None = None,
) -> StateChange:
    return StateChange(
        event_id=event_id or f"ev-{seq}",
        driver_id=D,
        seq=seq,
        at_ms=at(seconds),
        from_=from_,
        to=to,
        cause=cause,
        order_id=order,
        trip_id=trip,
        offer_id=offer,
        product=product,
    )


def build(
    changes: Iterable[StateChange],
    until_s: float,
    *,
    last_sign_s: float | None = None,
    timeout_s: float = 24 * 3600,
    signs_s: Sequence[float] | None = None,
) -> Timeline:
    timeline = build_timeline(
        changes,
        until_ms=at(until_s),
        last_sign_of_life_ms=None if last_sign_s is None else at(last_sign_s),
        silence_timeout_ms=int(timeout_s * 1000),
        grace_ms=grace,
        signs_of_life_ms=None if signs_s is None else [at(s) for s in signs_s],
        driver_id=D,
    )
    check_exclusive_and_gap_free(timeline)
    return timeline


def seg(kind: SegmentKind, start_s: float, end_s: float, **fields: Any) -> Segment:
    return Segment(D, kind, at(start_s), at(end_s), **fields)


def spans(timeline: Timeline) -> list[tuple[SegmentKind, float, float]]:
    return [(s.kind, (s.start_ms - T0) / 1000, (s.end_ms - T0) / 1000) for s in timeline.segments]


def trip_b(seq: int, seconds: float, from_: str, to: str, cause: str) -> StateChange:
    """A step of trip tB (order oB, a ride), with the ids dispatch sends."""
    return change(seq, seconds, from_, to, cause, order="oB", trip="tB", product="ride")


# A whole shift: online → offer A declined → offer B accepted → ride → break → offline.
SHIFT = [
    change(1, 0, "offline", "idle", "went_online"),
    change(2, 300, "idle", "offered", "offer_sent", order="oA", offer="fA", product="ride"),
    change(3, 315, "offered", "idle", "offer_declined", order="oA", product="ride"),
    change(4, 900, "idle", "offered", "offer_sent", order="oB", offer="fB", product="ride"),
    trip_b(5, 910, "offered", "en_route_pickup", "offer_accepted"),
    trip_b(6, 1210, "en_route_pickup", "at_pickup", "arrived_pickup"),
    trip_b(7, 1390, "at_pickup", "on_trip", "picked_up"),
    trip_b(8, 2290, "on_trip", "at_dropoff", "arrived_dropoff"),
    trip_b(9, 2350, "at_dropoff", "idle", "completed"),
    change(10, 2650, "idle", "break", "took_break"),
    change(11, 3550, "break", "offline", "went_offline"),
]
TRIP = {"order_id": "oB", "trip_id": "tB", "offer_id": "fB", "product": "ride"}


def test_a_whole_shift_yields_exactly_its_segments_and_totals() -> None:
    # DESIGN.md §4 table: each state is one segment; at_pickup splits at the ride's 120 s grace
    # (1210 + 120 = 1330); offline is no segment; the accepted trip keeps the offer it came from.
    timeline = build(SHIFT, until_s=4000)
    assert timeline.segments == (
        seg(K.IDLE, 0, 300),
        seg(K.OFFERED, 300, 315, order_id="oA", offer_id="fA", product="ride"),
        seg(K.IDLE, 315, 900),
        seg(K.OFFERED, 900, 910, order_id="oB", offer_id="fB", product="ride"),
        seg(K.EN_ROUTE_PICKUP, 910, 1210, **TRIP),
        seg(K.AT_PICKUP_WITHIN_GRACE, 1210, 1330, **TRIP),
        seg(K.AT_PICKUP_BEYOND_GRACE, 1330, 1390, **TRIP),
        seg(K.ON_TRIP, 1390, 2290, **TRIP),
        seg(K.AT_DROPOFF, 2290, 2350, **TRIP),
        seg(K.IDLE, 2350, 2650),
        seg(K.BREAK, 2650, 3550),
    )
    assert timeline.sessions == ((at(0), at(3550)),)
    assert timeline.gaps == () and not timeline.provisional
    assert timeline.last_state == "offline"
    s = 1000
    assert timeline.totals_ms() == {
        K.IDLE: 1185 * s,  # 300 + 585 + 300
        K.OFFERED: 25 * s,
        K.BREAK: 900 * s,
        K.EN_ROUTE_PICKUP: 300 * s,
        K.AT_PICKUP_WITHIN_GRACE: 120 * s,
        K.AT_PICKUP_BEYOND_GRACE: 60 * s,
        K.ON_TRIP: 900 * s,
        K.AT_DROPOFF: 60 * s,
    }
    # Online for pay excludes the break: 3550 - 900; waiting = idle + offered + pickup + dropoff.
    assert timeline.online_ms == 2650 * s
    assert timeline.waiting_ms == (1185 + 25 + 180 + 60) * s
    assert (timeline.p1_ms, timeline.p2_ms, timeline.p3_ms) == (1210 * s, 480 * s, 960 * s)
    assert timeline.p1_ms + timeline.p2_ms + timeline.p3_ms == timeline.online_ms
    assert (timeline.break_ms, timeline.engaged_ms) == (900 * s, 1440 * s)


def test_the_open_segment_runs_to_the_cut_off() -> None:
    # Rule 2: the last state lasts until until_ms (the worker is still on the trip).
    timeline = build(SHIFT[:7], until_s=1500, last_sign_s=1499)
    assert spans(timeline)[-1] == (K.ON_TRIP, 1390, 1500)
    assert timeline.last_state == "on_trip"
    assert not timeline.segments[-1].inferred


def at_pickup_history(product: Product, wait_s: float) -> list[StateChange]:
    """Online at 0, offer at 10, accepted at 20, arrived at 100, picked up after ``wait_s``."""

    def step(seq: int, seconds: float, from_: str, to: str, cause: str) -> StateChange:
        return change(seq, seconds, from_, to, cause, order="o", trip="t", product=product)

    return [
        change(1, 0, "offline", "idle", "went_online"),
        change(2, 10, "idle", "offered", "offer_sent", order="o", offer="f", product=product),
        step(3, 20, "offered", "en_route_pickup", "offer_accepted"),
        step(4, 100, "en_route_pickup", "at_pickup", "arrived_pickup"),
        step(5, 100 + wait_s, "at_pickup", "on_trip", "picked_up"),
    ]


@pytest.mark.parametrize(
    ("product", "wait_s", "within_s", "beyond_s"),
    [
        ("ride", 400, 120, 280),  # ride grace 120 s (DESIGN.md §4: "ride: 2 min")
        ("delivery", 400, 300, 100),  # delivery grace 300 s (tariffs.json)
        ("ride", 90, 90, 0),  # shorter than grace: all of it within
        ("delivery", 300, 300, 0),  # exactly the grace: nothing beyond
    ],
)
def test_at_pickup_splits_at_the_products_grace(
    product: Product, wait_s: float, within_s: float, beyond_s: float
) -> None:
    totals = build(at_pickup_history(product, wait_s), until_s=2000).totals_ms()
    assert totals[K.AT_PICKUP_WITHIN_GRACE] == within_s * 1000
    assert totals[K.AT_PICKUP_BEYOND_GRACE] == beyond_s * 1000


def test_duplicates_reordering_and_replay_change_nothing() -> None:
    # Issue 4: duplicate events change nothing; out-of-order events are placed where they
    # belong; replaying the topic from offset 0 changes nothing.
    clean = build(SHIFT, until_s=4000)
    rng = random.Random(4)
    for _ in range(20):
        delivered = [c for c in SHIFT for _ in range(rng.randint(1, 4))]
        rng.shuffle(delivered)
        assert build(delivered, until_s=4000) == clean
    assert build(SHIFT + SHIFT, until_s=4000) == clean


def test_a_late_event_in_the_middle_is_reported_then_placed() -> None:
    # Rule 5: without picked_up (seq 7) the worker stays at pickup until the next known change
    # (2290) and the gap is reported; once it arrives the timeline is the clean one.
    without = [c for c in SHIFT if c.seq != 7]
    provisional = build(without, until_s=4000)
    assert provisional.gaps == ((7, 7),) and provisional.provisional
    assert (K.AT_PICKUP_BEYOND_GRACE, 1330, 2290) in spans(provisional)
    check_exclusive_and_gap_free(provisional)
    assert build([*without, SHIFT[6]], until_s=4000) == build(SHIFT, until_s=4000)


def test_seq_gaps_are_reported_as_inclusive_ranges() -> None:
    # Rule 5: seq is per driver with no gaps, so a missing number is a change not yet received;
    # a history that starts after 1 misses its beginning.
    kept = [c for c in SHIFT if c.seq in (3, 4, 8, 11)]
    assert build(kept, until_s=4000).gaps == ((1, 2), (5, 7), (9, 10))


def test_one_seq_under_two_event_ids_is_a_conflict_resolved_by_time() -> None:
    impostor = replace(SHIFT[9], event_id="ev-other", at_ms=at(2700))
    timeline = build([*SHIFT, impostor], until_s=4000)
    assert timeline.conflicts == (10,) and timeline.provisional
    assert timeline.segments == build(SHIFT, until_s=4000).segments  # earliest (2650) is used


def test_changes_after_the_cut_off_are_not_seen() -> None:
    # Rule 2: the timeline is "as of" until_ms.
    assert build(SHIFT, until_s=1000).segments == build(SHIFT[:5], until_s=1000).segments


def test_a_silent_worker_is_closed_at_the_last_sign_of_life() -> None:
    # Rule 3 (issue 4): no event and no ping for longer than the timeout → offline from the last
    # sign of life, the segment marked inferred. Last ping at 600 s, timeout 300 s.
    online = [change(1, 0, "offline", "idle", "went_online")]
    silent = build(online, until_s=901, last_sign_s=600, timeout_s=300)
    assert silent.segments == (seg(K.IDLE, 0, 600, inferred=True),)
    assert silent.last_state == "offline"
    assert silent.sessions == ((at(0), at(600)),)
    # Exactly at the timeout the worker is not yet silent (600 + 300 < 900 is false).
    assert build(online, until_s=900, last_sign_s=600, timeout_s=300).segments == (
        seg(K.IDLE, 0, 900),
    )


def test_silence_inside_the_history_is_cut_out_given_the_pings() -> None:
    # Rule 3: pings every 60 s until 600 s, none until 2000 s, then pings until going offline at
    # 2400 s. With the ping times the silence is offline; without them it cannot be seen.
    history = [
        change(1, 0, "offline", "idle", "went_online"),
        change(2, 2400, "idle", "offline", "went_offline"),
    ]
    pings = [*range(60, 601, 60), *range(2000, 2400, 60)]
    cut = build(history, until_s=3000, timeout_s=300, signs_s=pings)
    assert cut.segments == (seg(K.IDLE, 0, 600, inferred=True), seg(K.IDLE, 2000, 2400))
    assert cut.sessions == ((at(0), at(600)), (at(2000), at(2400)))
    assert build(history, until_s=3000, timeout_s=300).segments == (seg(K.IDLE, 0, 2400),)
    # A hole of exactly the timeout is not a silence ("for longer than").
    exact = build(history, until_s=3000, timeout_s=300, signs_s=range(0, 2400, 300))
    assert exact.segments == (seg(K.IDLE, 0, 2400),)


def test_grace_is_counted_from_arrival_across_a_silence() -> None:
    # Rules 3 and 4: the ride's grace ends 120 s after arrival (at 220) even if the worker was
    # silent in between; after the silence the worker is back at pickup, beyond grace.
    history = at_pickup_history("ride", 500)  # arrives 100, picked up 600
    pings = [130, 160, 400, 430, 460, 490, 520, 550, 580]
    timeline = build(history, until_s=700, timeout_s=200, signs_s=pings)
    ids = {"order_id": "o", "trip_id": "t", "offer_id": "f", "product": "ride"}
    assert timeline.segments[-3:] == (
        seg(K.AT_PICKUP_WITHIN_GRACE, 100, 160, inferred=True, **ids),
        seg(K.AT_PICKUP_BEYOND_GRACE, 400, 600, **ids),
        seg(K.ON_TRIP, 600, 700, **ids),
    )


def test_clip_cuts_segments_to_a_period() -> None:
    # Statements per day/week: only the period's milliseconds, the kinds unchanged.
    clipped = build(SHIFT, until_s=4000).clip(at(1000), at(2300))
    assert spans(clipped) == [
        (K.EN_ROUTE_PICKUP, 1000, 1210),
        (K.AT_PICKUP_WITHIN_GRACE, 1210, 1330),
        (K.AT_PICKUP_BEYOND_GRACE, 1330, 1390),
        (K.ON_TRIP, 1390, 2290),
        (K.AT_DROPOFF, 2290, 2300),
    ]
    assert clipped.sessions == ((at(1000), at(2300)),)
    assert clipped.online_ms == 1300 * 1000
    check_exclusive_and_gap_free(clipped)


def test_clip_shares_a_segments_distance_by_time() -> None:
    # No metre in two periods: 900 m over on_trip [1390, 2290), cut at 1690 → 300 m and 600 m.
    whole = build(SHIFT, until_s=4000)
    driven = replace(
        whole,
        segments=tuple(
            replace(s, distance_m=900.0) if s.kind is K.ON_TRIP else s for s in whole.segments
        ),
    )
    before = driven.clip(at(0), at(1690)).segments[-1]
    after = driven.clip(at(1690), at(4000)).segments[0]
    assert (before.kind, before.distance_m) == (K.ON_TRIP, 300.0)
    assert (after.kind, after.distance_m) == (K.ON_TRIP, 600.0)


def test_clip_keeps_inferred_only_where_the_period_holds_the_end() -> None:
    online = [change(1, 0, "offline", "idle", "went_online")]
    silent = build(online, until_s=901, last_sign_s=600, timeout_s=300)
    assert silent.clip(at(0), at(300)).segments == (seg(K.IDLE, 0, 300),)
    assert silent.clip(at(300), at(900)).segments == (seg(K.IDLE, 300, 600, inferred=True),)


def test_the_invariant_checker_finds_holes_and_overlaps() -> None:
    good = build(SHIFT, until_s=4000)
    holed = replace(good, segments=good.segments[:2] + good.segments[3:])
    assert any("not covered" in p for p in invariant_violations(holed))
    overlapping = replace(good, segments=(seg(K.IDLE, 0, 310), *good.segments[1:]))
    assert any("overlap" in p for p in invariant_violations(overlapping))
    with pytest.raises(TimelineInvariantError):
        check_exclusive_and_gap_free(holed)


def test_from_event_reads_the_schema_payload() -> None:
    data = {
        "driver_id": D,
        "seq": 5,
        "from": "offered",
        "to": "en_route_pickup",
        "cause": "offer_accepted",
        "order_id": "0e4b3d8c-0000-4000-8000-000000000001",
        "trip_id": "0e4b3d8c-0000-4000-8000-000000000002",
        "offer_id": None,
        "kind": "delivery",
    }
    time_ms = epoch_ms(datetime(2025, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC))
    c = StateChange.from_event("e-1", time_ms, data)
    assert (c.seq, c.from_, c.to, c.cause) == (5, "offered", "en_route_pickup", "offer_accepted")
    assert (c.product, c.offer_id, c.at_ms) == ("delivery", None, 1_748_779_200_250)
    with pytest.raises(ValueError, match="unknown worker state"):
        StateChange.from_event("e-2", time_ms, {**data, "to": "flying"})


# --- seeded property test ----------------------------------------------------------------------


STATUS_CAUSES = frozenset({Cause.WENT_ONLINE, Cause.WENT_OFFLINE, Cause.TOOK_BREAK})
# Weighted up so that most histories get through whole trips, not just offers and breaks.
PROGRESS = frozenset(
    {
        Cause.WENT_ONLINE,
        Cause.OFFER_SENT,
        Cause.OFFER_ACCEPTED,
        Cause.ARRIVED_PICKUP,
        Cause.PICKED_UP,
        Cause.ARRIVED_DROPOFF,
        Cause.COMPLETED,
    }
)


def random_history(rng: random.Random, n: int) -> list[StateChange]:
    """A legal history: a walk of dispatch's worker state machine, with the ids dispatch sends
    (offer_sent: order, offer, kind; answers: order, kind; trip steps: order, trip, kind)."""
    state, t = WorkerStatus.OFFLINE, 0
    order: str | None = None
    trip: str | None = None
    product: Product | None = None
    out: list[StateChange] = []
    for seq in range(1, n + 1):
        causes = sorted(c for (s, c) in WORKER_TRANSITIONS if s is state)
        cause = rng.choices(causes, [4 if c in PROGRESS else 1 for c in causes])[0]
        after = WORKER_TRANSITIONS[(state, cause)]
        t += rng.choice([0, 0, rng.randint(1, 2_000), rng.randint(1_000, 900_000)])
        if cause is Cause.OFFER_SENT:
            order, product = f"o{seq}", rng.choice(["ride", "delivery"])
        elif cause is Cause.OFFER_ACCEPTED:
            trip = f"t{seq}"
        bare = cause in STATUS_CAUSES
        out.append(
            StateChange(
                event_id=f"e{seq}-{rng.getrandbits(32):08x}",
                driver_id=D,
                seq=seq,
                at_ms=T0 + t,
                from_=state.value,
                to=after.value,
                cause=cause.value,
                order_id=None if bare else order,
                trip_id=None if bare else trip,
                offer_id=f"f{seq}" if cause is Cause.OFFER_SENT else None,
                product=None if bare else product,
            )
        )
        state = after
        if after is WorkerStatus.IDLE:
            order = trip = product = None
    return out


def expected_gaps(received: Iterable[StateChange]) -> tuple[tuple[int, int], ...]:
    seqs = sorted({c.seq for c in received})
    missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs)) if seqs else []
    ranges: list[tuple[int, int]] = []
    for s in missing:
        if ranges and ranges[-1][1] == s - 1:
            ranges[-1] = (ranges[-1][0], s)
        else:
            ranges.append((s, s))
    return tuple(ranges)


def online_ms_by_walk(history: Sequence[StateChange], until_ms: int) -> int:
    """Signed-in milliseconds by the simplest possible walk (an oracle for coverage)."""
    total = 0
    for c, nxt in zip(history, [*history[1:], None], strict=True):
        end = until_ms if nxt is None else nxt.at_ms
        if c.to != "offline":
            total += end - c.at_ms
    return total


@pytest.mark.parametrize("seed", range(300))
def test_any_delivery_of_a_legal_history_converges_on_its_timeline(seed: int) -> None:
    # Issue 4 "Tests": random histories delivered with duplicates (×1–5), shuffled, delayed and
    # truncated: after each step the timeline is exclusive and gap-free and its gaps are the
    # missing seqs; at the end it equals the clean history's timeline; a replay changes nothing.
    rng = random.Random(seed)
    history = random_history(rng, rng.randint(1, 40))
    until = history[-1].at_ms + rng.randint(0, 3 * HOUR)
    silent = seed % 3 == 0  # a third of the cases with a short silence timeout and pings
    timeout = rng.randint(60_000, 900_000) if silent else 48 * HOUR
    pings = sorted(rng.randint(T0, until) for _ in range(rng.randint(0, 60))) if silent else None
    truncate = rng.random() < 0.3  # the stream stops early: only a seq-prefix ever arrives
    final_history = history[: rng.randint(1, len(history))] if truncate else history

    def timeline_of(received: Iterable[StateChange]) -> Timeline:
        received = list(received)
        signs = [c.at_ms for c in received] + (pings or [])
        return build_timeline(
            received,
            until_ms=until,
            last_sign_of_life_ms=max(signs) if signs else None,
            silence_timeout_ms=timeout,
            grace_ms=grace,
            signs_of_life_ms=pings,
            driver_id=D,
        )

    clean = timeline_of(final_history)
    assert invariant_violations(clean) == []
    assert clean.gaps == ()
    if not silent:
        assert clean.online_ms + clean.break_ms == online_ms_by_walk(final_history, until)

    delivery = [c for c in final_history for _ in range(rng.randint(1, 5))]
    rng.shuffle(delivery)
    delayed = [c for c in delivery if rng.random() < 0.1]  # held back, delivered last
    delivery = [c for c in delivery if c not in delayed] + delayed
    received: list[StateChange] = []
    for c in delivery:
        received.append(c)
        step = timeline_of(received)
        assert invariant_violations(step) == [], (seed, len(received))
        assert step.gaps == expected_gaps(received)
        if not silent and step.gaps == ():
            # A seq-prefix decides the timeline up to its last change, whatever comes later.
            last = max(x.at_ms for x in received)
            assert step.clip(T0, last).segments == clean.clip(T0, last).segments
    assert timeline_of(received) == clean
    assert timeline_of(received + delivery[::-1]) == clean  # replayed from offset 0
