"""The batch's k-d tree of workers gives each order the list the index's ring search gives, to the
bit (ties, crowds, excluded workers, stale positions, far corners of the globe). Pure."""

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polder.common.geoindex import LocationIndex, Nearby, haversine_m
from polder.dispatch.domain.availability import Availability, FreshIdle
from polder.dispatch.domain.matching import MatchConfig, OpenOrder, assign_batch
from polder.dispatch.domain.nearest import Query, WorkerPoints, WorkerTree, chord_bound

NOW = 1_000_000.0
CENTRE = (52.37, 4.89)


def city(
    rng: random.Random, n: int, spread_deg: float = 0.05, centre: tuple[float, float] = CENTRE
) -> tuple[LocationIndex, FreshIdle]:
    """``n`` drivers around ``centre``: a third busy, every 7th stale, some on one spot."""
    index, availability, rows = LocationIndex(resolution=9, ttl_s=60), Availability(), []
    spot = (centre[0] + spread_deg / 3, centre[1] - spread_deg / 3)
    for i in range(n):
        d = f"w{i:04d}"
        if i % 11 == 0:
            lat, lng = spot  # several drivers at exactly the same place: ties
        else:
            lat = centre[0] + rng.uniform(-spread_deg, spread_deg)
            lng = ((centre[1] + rng.uniform(-spread_deg, spread_deg) * 1.6) + 180) % 360 - 180
        seen = NOW - (120 if i % 7 == 0 else rng.uniform(0, 30))
        index.upsert(d, lat, lng, seen, seen)
        rows.append((d, 1, "on_trip" if i % 3 == 0 else "idle", NOW - rng.uniform(0, 600)))
    availability.load(rows)
    return index, FreshIdle(availability.idle, index, NOW)


def ring_search(
    index: LocationIndex, workers: FreshIdle, query: Query, radius_m: float, limit: int
) -> list[Nearby]:
    """The reference: the index's ring search, asked for the available, not excluded ones."""
    lat, lng, excluded = query
    return index.nearby(
        lat, lng, radius_m, limit, NOW, lambda d: d in workers and d not in excluded
    )


def brute_force(
    workers: FreshIdle, query: Query, radius_m: float, limit: int
) -> list[tuple[float, str]]:
    """Every available worker measured and sorted by (distance, driver_id)."""
    lat, lng, excluded = query
    found = sorted(
        (haversine_m(lat, lng, w.lat, w.lng), d) for d, w in workers.items() if d not in excluded
    )
    return [f for f in found if f[0] <= radius_m][:limit]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("radius_m", "limit"), [(500.0, 3), (2_000.0, 8), (5_000.0, 16), (20_000.0, 40), (300.0, 1)]
)
def test_the_tree_gives_the_ring_searchs_list(seed: int, radius_m: float, limit: int) -> None:
    rng = random.Random(seed)
    index, workers = city(rng, 600)
    tree = WorkerTree.of(workers, index, NOW)
    assert len(tree) == len(workers)
    queries = []
    for q in range(40):
        lat, lng = CENTRE[0] + rng.uniform(-0.06, 0.06), CENTRE[1] + rng.uniform(-0.1, 0.1)
        if q % 5 == 0:
            lat, lng = CENTRE[0] + 0.05 / 3, CENTRE[1] - 0.05 / 3  # right on the crowded spot
        some = rng.sample(sorted(workers), rng.choice([0, 0, 1, 3, 12]))
        queries.append((lat, lng, frozenset(some)))
    answers = tree.nearest_each(queries, radius_m, limit)
    for query, got in zip(queries, answers, strict=True):
        expected = ring_search(index, workers, query, radius_m, limit)
        assert got == expected
        assert [(h.distance_m, h.position.driver_id) for h in got] == brute_force(
            workers, query, radius_m, limit
        )
        assert tree.nearest(*query[:2], radius_m, limit, query[2]) == expected


def test_a_crowd_on_one_spot_is_cut_by_driver_id_as_a_full_sort_would() -> None:
    """Twenty workers at the same place, three wanted: the tree returns some four of them in
    whatever order its rounding gives; the answer must be the three smallest ids of all
    twenty (a check that asks again for everything up to that distance)."""
    index, availability = LocationIndex(resolution=9, ttl_s=60), Availability()
    ids = [f"w{i:02d}" for i in range(20)]
    rng = random.Random(3)
    for d in rng.sample(ids, len(ids)):  # inserted in random order
        index.upsert(d, *CENTRE, NOW, NOW)
    availability.load((d, 1, "idle", NOW) for d in ids)
    workers = FreshIdle(availability.idle, index, NOW)
    tree = WorkerTree.of(workers, index, NOW)
    got = tree.nearest(CENTRE[0] + 0.001, CENTRE[1], 1_000.0, 3)
    assert [h.position.driver_id for h in got] == ["w00", "w01", "w02"]
    excluded = frozenset({"w00", "w02", "w05"})
    got = tree.nearest(CENTRE[0] + 0.001, CENTRE[1], 1_000.0, 3, excluded)
    assert [h.position.driver_id for h in got] == ["w01", "w03", "w04"]


@settings(max_examples=60, deadline=None)
@given(
    centre=st.sampled_from([(52.37, 4.89), (0.0, 179.99), (-33.9, -179.995), (89.95, 10.0)]),
    seed=st.integers(0, 10_000),
    radius_m=st.floats(1.0, 50_000.0),
    limit=st.integers(1, 30),
)
def test_the_tree_is_exact_across_the_antimeridian_and_near_the_pole(
    centre: tuple[float, float], seed: int, radius_m: float, limit: int
) -> None:
    rng = random.Random(seed)
    index, workers = city(rng, 150, spread_deg=0.08, centre=centre)
    tree = WorkerTree.of(workers, index, NOW)
    lat = max(-90.0, min(90.0, centre[0] + rng.uniform(-0.05, 0.05)))
    lng = ((centre[1] + rng.uniform(-0.05, 0.05)) + 180) % 360 - 180
    got = tree.nearest(lat, lng, radius_m, limit)
    assert got == ring_search(index, workers, (lat, lng, frozenset()), radius_m, limit)


def test_only_the_views_workers_with_fresh_positions_are_in_the_tree() -> None:
    index, workers = city(random.Random(1), 300)
    tree = WorkerTree.of(workers, index, NOW)
    found = {h.position.driver_id for h in tree.nearest(*CENTRE, 50_000.0, 1_000)}
    assert found == set(workers)
    # A plain mapping of workers gives the same tree (positions from the index, fresh ones).
    plain = {d: workers[d] for d in workers}
    everyone = {**plain, "ghost": next(iter(plain.values()))}  # not in the index: left out
    other = WorkerTree.of(everyone, index, NOW)
    assert other.nearest(*CENTRE, 50_000.0, 1_000) == tree.nearest(*CENTRE, 50_000.0, 1_000)
    # The same view asked about a later time: drivers gone stale since are left out.
    later = WorkerTree.of(workers, index, NOW + 45)
    assert len(later) == sum(1 for d in workers if index.is_fresh(index.get(d), NOW + 45))
    assert 0 < len(later) < len(tree)


def test_nothing_to_find_gives_empty_lists() -> None:
    empty = WorkerTree.of_positions([], LocationIndex())
    assert empty.nearest(*CENTRE, 5_000.0, 8) == []
    assert empty.nearest_each([], 5_000.0, 8) == []
    index, workers = city(random.Random(2), 50)
    tree = WorkerTree.of(workers, index, NOW)
    assert tree.nearest(*CENTRE, 5_000.0, 0) == []
    assert tree.nearest(*CENTRE, 0.0, 5) == []
    assert tree.nearest(-CENTRE[0], CENTRE[1] - 180, 5_000.0, 5) == []  # the antipode


@given(st.floats(0.0, 2e7), st.floats(0.0, 1.0))
def test_the_chord_bound_covers_every_pair_within_the_distance(d: float, share: float) -> None:
    """Two points ``share * d`` apart along a meridian are no farther apart as a chord (in
    floating point, as the tree computes it) than ``chord_bound(d)``; the bound grows with d."""
    phi1 = math.radians(10.0)
    phi2 = phi1 + share * d / 6_371_008.8
    chord = math.dist((math.cos(phi1), 0.0, math.sin(phi1)), (math.cos(phi2), 0.0, math.sin(phi2)))
    assert chord <= chord_bound(d)
    assert chord_bound(d) <= chord_bound(d * 1.001 + 1.0)


@pytest.mark.parametrize("seed", range(8))
def test_a_batch_matches_the_same_with_the_tree_as_with_the_rings(seed: int) -> None:
    """``tree_from_orders`` only changes how the lists are found: with widening, fairness,
    deliveries and declined workers, the batch's assignments and decisions are the same."""
    rng = random.Random(seed)
    index, workers = city(rng, 400, spread_deg=0.03)
    orders = []
    for i in range(rng.randint(20, 60)):
        lat, lng = CENTRE[0] + rng.uniform(-0.03, 0.03), CENTRE[1] + rng.uniform(-0.05, 0.05)
        excluded = frozenset(rng.sample(sorted(workers), rng.choice([0, 0, 2])))
        if i % 4 == 0:
            ready = NOW + rng.uniform(0, 900)
            orders.append(OpenOrder(f"o{i}", "delivery", lat, lng, NOW, ready, excluded))
        else:
            orders.append(OpenOrder(f"o{i}", "ride", lat, lng, NOW - i, None, excluded))
    config = MatchConfig(k_nearest=rng.choice([2, 4, 8]), max_radius_m=4_000.0)
    rings = assign_batch(orders, workers, index, NOW, replace(config, tree_from_orders=10**9))
    tree = assign_batch(orders, workers, index, NOW, replace(config, tree_from_orders=1))
    assert tree == rings
    assert rings.assignments  # the comparison is about something


@pytest.mark.parametrize("seed", range(5))
def test_points_kept_as_positions_and_states_change_give_the_walks_tree(seed: int) -> None:
    """WorkerPoints follows the index and the availability through moves, workers going busy
    and idle again, positions going stale and fresh or dropped, drivers never seen before (in
    either order: state first or position first) and a row array that grows; at any moment the
    tree it gives answers as the one built by walking the idle workers does."""
    rng = random.Random(seed)
    index, availability = LocationIndex(resolution=9, ttl_s=60), Availability()
    # Some state before the points start following: they take it over.
    for i in range(30):
        index.upsert(f"w{i:03d}", *spot(rng), NOW - 50, NOW - 50)
    availability.load((f"w{i:03d}", 1, "idle", NOW - 100) for i in range(0, 40, 2))
    points = WorkerPoints.following(index, availability)
    seqs: dict[str, int] = {}
    now = NOW
    for step in range(1_500):
        now += rng.uniform(0.0, 0.2)
        d = f"w{rng.randrange(300):03d}"
        roll = rng.random()
        if roll < 0.01:
            index.expire(now)  # as the matcher's index does at each batch
        elif roll < 0.03:
            index.remove(d)
        elif roll < 0.6:
            # Sometimes an old ping (not taken), sometimes a fresh one, sometimes one already
            # stale when it arrives.
            seen = now - rng.choice([0.0, 0.0, 30.0, 90.0])
            index.upsert(d, *spot(rng), seen - rng.uniform(-5, 5), seen)
        else:
            seqs[d] = seqs.get(d, 1) + 1
            status = rng.choice(["idle", "idle", "on_trip", "offline", "offered"])
            data = {"driver_id": d, "seq": seqs[d], "to": status, "cause": "went_online"}
            availability.apply_event(data, now)
        if step % 100 == 99:
            walked = FreshIdle(availability.idle, index, now)
            kept = FreshIdle(availability.idle, index, now, points)
            by_walk, by_points = WorkerTree.of(walked, index, now), WorkerTree.of(kept, index, now)
            assert len(by_points) == len(by_walk) == len(walked)
            queries = [(*spot(rng), frozenset()) for _ in range(20)]
            assert by_points.nearest_each(queries, 3_000.0, 6) == by_walk.nearest_each(
                queries, 3_000.0, 6
            )
            assert by_points.nearest(*CENTRE, 1e7, 10_000) == by_walk.nearest(*CENTRE, 1e7, 10_000)


def spot(rng: random.Random) -> tuple[float, float]:
    return CENTRE[0] + rng.uniform(-0.03, 0.03), CENTRE[1] + rng.uniform(-0.05, 0.05)


def test_points_refuse_to_be_a_second_listener_or_to_serve_another_view() -> None:
    """One listener per index and availability (a second would leave the first behind, its
    tree proposing workers long gone), and a view only takes the points of its own index and
    idle workers."""
    index, availability = LocationIndex(resolution=9, ttl_s=60), Availability()
    points = WorkerPoints.following(index, availability)
    with pytest.raises(ValueError, match="index already has a listener"):
        WorkerPoints.following(index, Availability())
    with pytest.raises(ValueError, match="availability already has a listener"):
        WorkerPoints.following(LocationIndex(), availability)
    with pytest.raises(ValueError, match="another index or other workers"):
        FreshIdle(Availability().idle, index, NOW, points)
    with pytest.raises(ValueError, match="another index or other workers"):
        FreshIdle(availability.idle, LocationIndex(), NOW, points)
    assert FreshIdle(availability.idle, index, NOW, points).points is points


def test_a_worker_first_seen_idle_as_the_rows_grow_is_kept_idle() -> None:
    """A worker whose state arrives before any position, just as the arrays are full, gets a
    row in the grown arrays, marked idle (the mark once went to the array being replaced)."""
    index = LocationIndex(resolution=9, ttl_s=60)
    points = WorkerPoints(index, {}, capacity=2)
    ids = [f"g{i}" for i in range(5)]
    for i, driver_id in enumerate(ids):
        points.idle_changed(driver_id, True)  # rows 0..4: the arrays grow at 2 and at 4
        index.upsert(driver_id, CENTRE[0] + 0.001 * i, CENTRE[1], NOW - 1, NOW - 1)
        points.moved(index[driver_id])
    found = points.tree(NOW).nearest(*CENTRE, 10_000.0, 10)
    assert sorted(n.position.driver_id for n in found) == ids
