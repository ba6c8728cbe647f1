"""Candidate search, pickup ETA and match settings: pure, no I/O."""

import math
import random
from collections.abc import Callable

import pytest

from polder.common.geoindex import LocationIndex, Nearby, haversine_m
from polder.dispatch.domain.availability import Availability, FreshIdle
from polder.dispatch.domain.matching import (
    GreatCircleEta,
    Leg,
    MatchConfig,
    OpenOrder,
    Worker,
    candidates,
    search_radii,
)

CENTRE = (52.37, 4.89)
NOW = 1_000_000.0
M_PER_DEG_LAT = 111_320.0


def at(north_m: float, east_m: float = 0.0) -> tuple[float, float]:
    lat = CENTRE[0] + north_m / M_PER_DEG_LAT
    return lat, CENTRE[1] + east_m / (M_PER_DEG_LAT * math.cos(math.radians(CENTRE[0])))


def worker(driver_id: str, north_m: float, east_m: float = 0.0, waited_s: float = 0.0) -> Worker:
    return Worker(driver_id, *at(north_m, east_m), waiting_since=NOW - waited_s)


class RecordingIndex(LocationIndex):
    """Remembers the radius of every query, to see the search widen."""

    def __init__(self) -> None:
        super().__init__(resolution=9, ttl_s=1e9)
        self.radii: list[float] = []

    def nearby(
        self,
        lat: float,
        lng: float,
        radius_m: float,
        limit: int,
        now: float,
        accept: Callable[[str], bool] | None = None,
    ) -> list[Nearby]:
        self.radii.append(radius_m)
        return super().nearby(lat, lng, radius_m, limit, now, accept)


def world(*workers: Worker) -> tuple[dict[str, Worker], RecordingIndex]:
    index = RecordingIndex()
    for w in workers:
        index.upsert(w.driver_id, w.lat, w.lng, recorded_at=NOW - 1, seen_at=NOW)
    return {w.driver_id: w for w in workers}, index


def ride(excluded: frozenset[str] = frozenset()) -> OpenOrder:
    return OpenOrder("o1", "ride", *at(0.0), created_at=NOW, excluded=excluded)


def test_great_circle_eta_stretches_the_arc_and_drives_at_constant_speed() -> None:
    eta = GreatCircleEta()
    (lat1, lng1), (lat2, lng2) = at(0.0), at(1_000.0)
    leg = eta.pickup(lat1, lng1, lat2, lng2)
    assert leg.distance_m == pytest.approx(haversine_m(lat1, lng1, lat2, lng2) * 1.3)
    assert leg.eta_s == pytest.approx(leg.distance_m / 8.3)
    assert GreatCircleEta(road_factor=1.0, speed_mps=10.0).pickup(lat1, lng1, lat2, lng2).eta_s == (
        pytest.approx(haversine_m(lat1, lng1, lat2, lng2) / 10.0)
    )
    assert eta.pickup(lat1, lng1, lat1, lng1) == Leg(0.0, 0.0)


@pytest.mark.parametrize("kwargs", [{"road_factor": 0.9}, {"speed_mps": 0.0}])
def test_great_circle_eta_rejects_impossible_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GreatCircleEta(**kwargs)


def test_any_eta_provider_can_be_plugged_in() -> None:
    class FlatRateEta:
        def pickup(self, from_lat: float, from_lng: float, to_lat: float, to_lng: float) -> Leg:
            return Leg(distance_m=42.0, eta_s=7.0)

    workers, index = world(worker("w1", 800.0))
    [found] = candidates(ride(), workers, index, NOW, MatchConfig(), FlatRateEta())
    assert (found.distance_m, found.eta_s, found.cost) == (42.0, 7.0, 7.0)


def test_the_great_circle_leg_is_the_one_pickup_gives_from_the_worker_position() -> None:
    """The search hands its measured distance to the estimate instead of measuring again: the
    legs must be, bit for bit, what ``pickup`` gives from each worker's position."""
    rng = random.Random(11)
    eta = GreatCircleEta(road_factor=1.37, speed_mps=7.1)
    workers, index = world(
        *(worker(f"w{i:02d}", rng.uniform(-4e3, 4e3), rng.uniform(-4e3, 4e3)) for i in range(40))
    )
    order = OpenOrder("o1", "ride", *at(123.0, -45.0), created_at=NOW)
    found = candidates(order, workers, index, NOW, MatchConfig(k_nearest=12), eta)
    assert len(found) == 12
    for c in found:
        w = workers[c.driver_id]
        assert Leg(c.distance_m, c.eta_s) == eta.pickup(w.lat, w.lng, *at(123.0, -45.0))


def test_a_great_circle_subclass_measuring_otherwise_is_asked() -> None:
    class Detour(GreatCircleEta):
        def pickup(self, from_lat: float, from_lng: float, to_lat: float, to_lng: float) -> Leg:
            return Leg(distance_m=999.0, eta_s=99.0)

    workers, index = world(worker("w1", 300.0))
    [found] = candidates(ride(), workers, index, NOW, MatchConfig(), Detour())
    assert (found.distance_m, found.eta_s) == (999.0, 99.0)


def test_search_radii_double_up_to_the_maximum() -> None:
    assert list(search_radii(MatchConfig())) == [1_000.0, 2_000.0, 4_000.0, 5_000.0]
    assert list(search_radii(MatchConfig(initial_radius_m=500, max_radius_m=1_000))) == [
        500.0,
        1_000.0,
    ]
    assert list(search_radii(MatchConfig(initial_radius_m=3_000, max_radius_m=3_000))) == [3_000.0]


def test_search_widens_until_k_candidates_are_found() -> None:
    workers, index = world(worker("near", 500.0), worker("far", 1_500.0))
    found = candidates(ride(), workers, index, NOW, MatchConfig(k_nearest=2))
    assert [c.driver_id for c in found] == ["near", "far"]
    assert index.radii == [1_000.0, 2_000.0]


def test_search_stays_small_when_the_first_ring_suffices() -> None:
    workers, index = world(worker("a", 200.0), worker("b", 400.0), worker("c", 3_000.0))
    found = candidates(ride(), workers, index, NOW, MatchConfig(k_nearest=2))
    assert [c.driver_id for c in found] == ["a", "b"]
    assert index.radii == [1_000.0]


def test_search_gives_up_beyond_the_maximum_radius() -> None:
    workers, index = world(worker("too-far", 6_000.0))
    assert candidates(ride(), workers, index, NOW, MatchConfig()) == []
    assert index.radii == [1_000.0, 2_000.0, 4_000.0, 5_000.0]


def test_candidates_are_pruned_to_the_k_nearest_cheapest_first() -> None:
    workers, index = world(*(worker(f"w{i:02d}", 100.0 * i) for i in range(12, 0, -1)))
    found = candidates(ride(), workers, index, NOW, MatchConfig(k_nearest=8))
    assert [c.driver_id for c in found] == [f"w{i:02d}" for i in range(1, 9)]
    assert [c.cost for c in found] == sorted(c.cost for c in found)


def test_excluded_workers_are_skipped_and_k_are_still_found() -> None:
    workers, index = world(*(worker(f"w{i}", 100.0 * i) for i in range(1, 8)))
    order = ride(excluded=frozenset({"w1", "w2"}))
    found = candidates(order, workers, index, NOW, MatchConfig(k_nearest=3))
    assert [c.driver_id for c in found] == ["w3", "w4", "w5"]


def test_only_workers_listed_as_available_are_candidates() -> None:
    workers, index = world(*(worker(f"w{i}", 100.0 * i) for i in range(1, 21)))
    busy = {f"w{i}" for i in range(1, 16)}  # in the index, but no longer available
    available = {k: v for k, v in workers.items() if k not in busy}
    found = candidates(ride(), available, index, NOW, MatchConfig(k_nearest=3))
    assert [c.driver_id for c in found] == ["w16", "w17", "w18"]


def test_a_candidate_carries_its_leg_its_wait_and_its_cost() -> None:
    workers, index = world(worker("w1", 1_000.0, waited_s=90.0))
    [found] = candidates(ride(), workers, index, NOW, MatchConfig())
    assert found.distance_m == pytest.approx(1_300.0, rel=0.01)
    assert found.eta_s == pytest.approx(found.distance_m / 8.3)
    assert found.waiting_s == 90.0
    assert found.cost == found.eta_s
    assert found.early_s == 0.0


def test_a_wait_that_starts_in_the_future_counts_as_zero() -> None:
    workers, index = world(worker("w1", 100.0, waited_s=-5.0))
    assert candidates(ride(), workers, index, NOW)[0].waiting_s == 0.0


def test_a_delivery_candidate_pays_for_arriving_before_the_food_is_ready() -> None:
    workers, index = world(worker("w1", 1_000.0))
    order = OpenOrder("o1", "delivery", *at(0.0), created_at=NOW, ready_at=NOW + 600.0)
    [found] = candidates(order, workers, index, NOW, MatchConfig(early_arrival_weight=2.0))
    assert found.early_s == pytest.approx(600.0 - found.eta_s)
    assert found.cost == pytest.approx(found.eta_s + 2.0 * found.early_s)


def test_a_ride_ignores_ready_at() -> None:
    workers, index = world(worker("w1", 1_000.0))
    order = OpenOrder("o1", "ride", *at(0.0), created_at=NOW, ready_at=NOW + 600.0)
    [found] = candidates(order, workers, index, NOW)
    assert (found.early_s, found.cost) == (0.0, found.eta_s)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_radius_m": 6_000.0},
        {"initial_radius_m": 0.0},
        {"k_nearest": 0},
        {"max_exact_orders": 0},
        {"fairness_weight": 1.5},
        {"fairness_weight": -0.1},
        {"fairness_tolerance_s": -1.0},
        {"delivery_early_slack_s": -1.0},
        {"early_arrival_weight": -1.0},
        {"early_arrival_weight": float("inf")},
        {"early_arrival_weight": float("nan")},
        {"partition_resolution": 16},
        {"tree_from_orders": 0},
    ],
)
def test_match_config_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MatchConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("excluded", [frozenset(), frozenset({"w03", "w10"})])
def test_the_view_of_idle_workers_gives_the_candidates_a_dict_of_them_gives(
    excluded: frozenset[str],
) -> None:
    """The matcher searches through FreshIdle (a view over the idle map and the index); the
    answer is the one a plain dict of the same available workers gives."""
    rng = random.Random(4)
    index, availability, rows = LocationIndex(resolution=9, ttl_s=60), Availability(), []
    for i in range(60):
        d = f"w{i:02d}"
        seen = NOW - (120 if i % 7 == 0 else rng.uniform(0, 30))  # every 7th is stale
        index.upsert(d, *at(rng.uniform(-3_000, 3_000), rng.uniform(-3_000, 3_000)), seen, seen)
        status = "on_trip" if i % 3 == 0 else "idle"  # a third busy
        since = None if status != "idle" or i % 5 == 0 else NOW - rng.uniform(0, 900)
        rows.append((d, 1, status, since))  # every 5th idle one: wait start unknown (now)
    availability.load(rows)
    view = FreshIdle(availability.idle, index, NOW)
    plain = {d: view[d] for d in view}  # the same workers, built one by one
    assert 20 < len(plain) < 40
    order = OpenOrder("o1", "ride", *at(0.0), created_at=NOW, excluded=excluded)
    config = MatchConfig(k_nearest=8)
    found = candidates(order, view, index, NOW, config)
    assert found == candidates(order, plain, index, NOW, config)
    assert len(found) == 8 and not {c.driver_id for c in found} & excluded
