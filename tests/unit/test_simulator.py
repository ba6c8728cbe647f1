"""The simulator's pure parts: movement, demand, plans, the bounds its checks use, the KPIs."""

from __future__ import annotations

import random

import pytest

from polder.simulator.checks import CheckResult, expected_status
from polder.simulator.city import get_city, haversine_m, offset
from polder.simulator.model import (
    Behaviour,
    Mover,
    demand_per_min,
    next_arrival_s,
    plan_order,
    plan_shift,
)
from polder.simulator.observations import OrderObs, WorkerObs, percentile, progress
from polder.simulator.report import earnings, time_shares

CITY = get_city("amsterdam")


def test_a_mover_drives_straight_at_its_speed_and_turns_from_where_it_is() -> None:
    start = (52.37, 4.89)
    target = offset(*start, 1000.0, 0.0)  # 1 km north
    m = Mover.parked(start, 0.0, 10.0)
    assert m.position(5.0) == start and not m.moving(5.0)
    arrival = m.go_to(target, 10.0)
    assert arrival == pytest.approx(110.0, rel=2e-3)
    halfway = m.position(60.0)
    assert haversine_m(*start, *halfway) == pytest.approx(500.0, rel=2e-3)
    assert m.moving(60.0) and m.position(200.0) == target
    # a new leg starts where the worker is, not where the last one began
    m.go_to(start, 60.0)
    assert m.origin == halfway
    assert m.arrival_t() == pytest.approx(110.0, rel=2e-3)
    m.stop(80.0)
    assert m.position(1000.0) == m.position(80.0)


def test_orders_arrive_at_the_base_rate_on_average_and_follow_the_wave() -> None:
    rng = random.Random(3)
    t, n = 0.0, 0
    while t < 6000.0:  # 100 min, ten waves of 10 min
        t += next_arrival_s(30.0, t, 600.0, rng)
        n += 1
    assert n / 100.0 == pytest.approx(30.0, rel=0.05)
    assert demand_per_min(30.0, 150.0, 600.0) == pytest.approx(45.0)  # the crest
    assert demand_per_min(30.0, 450.0, 600.0) == pytest.approx(15.0)  # the trough


def test_a_seed_fixes_the_plans_and_distances_follow_the_scale() -> None:
    behaviour = Behaviour(trip_scale=0.1)
    a = [plan_order(CITY, behaviour, random.Random(5)) for _ in range(3)]
    b = [plan_order(CITY, behaviour, random.Random(5)) for _ in range(3)]
    assert a == b
    rng = random.Random(9)
    plans = [plan_order(CITY, behaviour, rng) for _ in range(500)]
    kinds = {p.kind for p in plans}
    assert kinds == {"ride", "delivery"}
    for p in plans:
        trip_m = haversine_m(*p.pickup, *p.dropoff)
        assert trip_m <= 6000.0 * 0.1 + 1.0  # never longer than the scaled longest trip
        assert (p.prep_s is not None) == (p.kind == "delivery")
        if p.prep_s is not None:
            assert 6.0 <= p.prep_s <= 60.0
    cancelling = sum(1 for p in plans if p.cancel_after_s is not None) / len(plans)
    assert 0.03 < cancelling < 0.15


def test_shifts_spread_workers_over_the_busy_places_and_end_within_the_run() -> None:
    rng = random.Random(1)
    shifts = [plan_shift(CITY, Behaviour(), 600.0, i, rng) for i in range(40)]
    assert {s.area for s in shifts} == set(range(len(CITY.hotspots)))
    for s in shifts:
        assert 0.0 <= s.start_s <= 120.0 < s.end_s <= 600.0 or s.end_s == 600.0
        assert s.start_s < s.end_s


def test_online_time_bounds_come_from_when_requests_were_sent_and_answered() -> None:
    w = WorkerObs("w")
    w.online = [(10.0, 10.2), (100.0, 100.5)]
    w.offline = [(50.0, 50.3), (130.0, 130.1)]
    lo, hi = w.online_bounds_s()
    assert lo == pytest.approx((50.0 - 10.2) + (130.0 - 100.5))
    assert hi == pytest.approx((50.3 - 10.0) + (130.1 - 100.0))
    assert not w.is_online()
    w.online.append((140.0, 140.1))
    assert w.is_online() and w.online_bounds_s() == (lo, hi)  # an open shift is not counted


def test_what_dispatch_must_say_about_each_order() -> None:
    o = OrderObs("k", "c", "ride", 0.0, order_id="o")
    assert expected_status(o) == {"expired"}
    o.cancelled_by_customer = True
    assert expected_status(o) == {"cancelled"}
    o.cancelled_by_customer, o.completed_t = False, 10.0
    assert expected_status(o) == {"completed"}


def test_percentiles_are_nearest_rank_and_progress_counts_what_was_seen() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    orders = [OrderObs(f"k{i}", "c", "ride", 0.0, order_id=f"o{i}", placed_t=1.0) for i in range(4)]
    orders[0].accepted_t, orders[0].quoted_eta_s = 3.0, 40.0
    orders[1].accepted_t, orders[1].quoted_eta_s = 4.0, 60.0
    orders[1].completed_t = 50.0
    w = WorkerObs("w", online=[(0.0, 0.1)])
    p = progress([w], orders, now_t=30.0)
    assert (p.workers_online, p.orders_placed, p.matched, p.trips_completed) == (1, 4, 2, 1)
    assert p.match_rate == 0.5 and p.median_pickup_eta_s == 40.0


def _statement(online: float, idle: float, trip: float, unpaid: float, total: int) -> dict:
    return {
        "time": {
            "online_s": online,
            "idle_s": idle,
            "offered_s": 0.0,
            "en_route_pickup_s": 0.0,
            "at_pickup_s": 0.0,
            "on_trip_s": trip,
            "at_dropoff_s": 0.0,
        },
        "waiting": {"paid_s": idle - unpaid, "unpaid_s": unpaid},
        "earnings": {"currency": "EUR", "total_minor": total},
        "effective_hourly_minor": {"per_online_hour": round(total / (online / 3600))},
    }


def test_time_shares_and_earnings_add_up_over_the_workers_statements() -> None:
    statements = {"a": _statement(3600, 2700, 900, 0, 1500), "b": _statement(1800, 1800, 0, 900, 0)}
    shares = time_shares(statements)
    assert shares["online_h"] == 1.5
    assert shares["p1_share"] == pytest.approx(4500 / 5400, abs=1e-4)
    assert shares["p3_share"] == pytest.approx(900 / 5400, abs=1e-4)
    assert shares["unpaid_waiting_share"] == pytest.approx(900 / 5400, abs=1e-4)
    result = CheckResult(
        by_policy={"nl_hourly": statements}, not_comparable={"prop22": "422: another currency"}
    )
    e = earnings(result)
    assert e["nl_hourly"]["per_online_hour_minor"] == 1000  # 1500 over 1.5 h
    assert e["prop22"] == {"not_comparable": "422: another currency"}
