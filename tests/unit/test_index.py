import math
import random
from dataclasses import fields

import h3.api.basic_int as h3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from polder.common.bus import Received
from polder.common.envelope import Event
from polder.common.geoindex import (
    _KEPT_RINGS,
    ALL_BUT_RES,
    LocationIndex,
    Nearby,
    Position,
    _ring,
    cell_resolution,
    haversine_m,
    parent_bits,
    within_m,
)
from polder.location.handlers import IndexUpdater
from polder.location.metrics import LocationMetrics

CENTRE = (52.37, 4.89)


def scatter(
    index: LocationIndex, n: int, seed: int, spread: float = 0.1, now: float = 1000.0
) -> None:
    rng = random.Random(seed)
    for i in range(n):
        lat = CENTRE[0] + rng.uniform(-spread, spread)
        lng = CENTRE[1] + rng.uniform(-spread, spread) * 1.6
        index.upsert(f"d{i}", lat, lng, recorded_at=now - rng.uniform(0, 5), seen_at=now)


def brute_force(
    index: LocationIndex, lat: float, lng: float, radius: float, limit: int, now: float
) -> list[str]:
    found = sorted(
        (haversine_m(lat, lng, p.lat, p.lng), p.driver_id)
        for p in index
        if index.is_fresh(p, now) and haversine_m(lat, lng, p.lat, p.lng) <= radius
    )
    return [d for _, d in found[:limit]]


def test_upsert_places_driver_in_its_cell_and_ignores_older_positions() -> None:
    index = LocationIndex(resolution=9, ttl_s=60)
    assert index.upsert("d1", 52.37, 4.89, recorded_at=100, seen_at=100)
    assert not index.upsert("d1", 52.40, 4.90, recorded_at=99, seen_at=101)
    assert not index.upsert("d1", 52.40, 4.90, recorded_at=100, seen_at=101)
    pos = index.get("d1")
    assert pos is not None and (pos.lat, pos.lng) == (52.37, 4.89)
    assert pos.cell == h3.latlng_to_cell(52.37, 4.89, 9)
    assert index.upsert("d1", 52.38, 4.89, recorded_at=101, seen_at=102)
    assert len(index) == 1
    assert [n.position.driver_id for n in index.nearby(52.38, 4.89, 50, 5, now=102)] == ["d1"]
    assert index.nearby(52.37, 4.89, 50, 5, now=102) == []  # the old cell no longer holds d1


def test_a_position_from_a_device_clock_set_back_replaces_the_newer_looking_one() -> None:
    index = LocationIndex(resolution=9, ttl_s=60)
    assert index.upsert("d1", 52.37, 4.89, recorded_at=1000, seen_at=1000)
    # 6 s later by the server, 300 s earlier by the device: its clock was set back
    assert index.upsert("d1", 52.38, 4.89, recorded_at=706, seen_at=1006)
    pos = index.get("d1")
    assert pos is not None and (pos.lat, pos.recorded_at, pos.seen_at) == (52.38, 706, 1006)
    assert index.upsert("d1", 52.381, 4.89, recorded_at=709, seen_at=1009)  # the new clock on
    # a redelivery of the position from before the set back is not received later: ignored
    assert not index.upsert("d1", 52.37, 4.89, recorded_at=1000, seen_at=1000)
    assert not index.upsert("d1", 52.38, 4.89, recorded_at=706, seen_at=1006)
    # nor is a position that went back by less than the server's clock moved on (plus 10 s):
    # two replicas that took batches of the driver at the same moment
    assert not index.upsert("d1", 52.39, 4.89, recorded_at=700, seen_at=1010)
    pos = index.get("d1")
    assert pos is not None and (pos.lat, pos.recorded_at, pos.seen_at) == (52.381, 709, 1009)
    assert [n.position.driver_id for n in index.nearby(52.381, 4.89, 50, 5, now=1010)] == ["d1"]


def test_drivers_expire_after_the_ttl() -> None:
    index = LocationIndex(ttl_s=60)
    index.upsert("old", 52.37, 4.89, recorded_at=0, seen_at=0)
    index.upsert("new", 52.37, 4.891, recorded_at=30, seen_at=30)
    assert [n.position.driver_id for n in index.nearby(52.37, 4.89, 500, 10, now=70)] == ["new"]
    assert index.expire(now=70) == 1
    assert index.get("old") is None and index.get("new") is not None
    assert index.expire(now=95) == 1
    assert len(index) == 0


def test_a_newer_sighting_keeps_a_driver_alive() -> None:
    index = LocationIndex(ttl_s=60)
    index.upsert("a", 52.37, 4.89, recorded_at=0, seen_at=0)
    index.upsert("b", 52.37, 4.89, recorded_at=0, seen_at=10)
    index.upsert("a", 52.37, 4.8901, recorded_at=50, seen_at=50)
    assert index.expire(now=65) == 0  # "a" moved behind "b", which is not yet 60 s old
    assert index.expire(now=75) == 1
    assert index.get("a") is not None


@pytest.mark.parametrize(
    ("radius", "limit"), [(300, 5), (1000, 20), (2500, 50), (8000, 30), (8000, 5000)]
)
def test_nearby_matches_brute_force(radius: float, limit: int) -> None:
    index = LocationIndex(ttl_s=60)
    scatter(index, 3000, seed=7)
    rng = random.Random(11)
    for _ in range(40):
        lat = CENTRE[0] + rng.uniform(-0.1, 0.1)
        lng = CENTRE[1] + rng.uniform(-0.16, 0.16)
        got = [n.position.driver_id for n in index.nearby(lat, lng, radius, limit, now=1000)]
        assert got == brute_force(index, lat, lng, radius, limit, now=1000)


def test_nearby_results_are_sorted_within_radius_and_limit() -> None:
    index = LocationIndex()
    scatter(index, 500, seed=3, spread=0.01)
    found = index.nearby(*CENTRE, radius_m=600, limit=15, now=1000)
    assert 0 < len(found) <= 15
    distances = [n.distance_m for n in found]
    assert distances == sorted(distances)
    assert all(d <= 600 for d in distances)


def test_nearby_skips_stale_drivers_before_expiry_runs() -> None:
    index = LocationIndex(ttl_s=60)
    index.upsert("stale", *CENTRE, recorded_at=0, seen_at=0)
    assert index.nearby(*CENTRE, radius_m=100, limit=5, now=61) == []


def test_supply_counts_fresh_drivers_per_parent_cell() -> None:
    index = LocationIndex(ttl_s=60)
    scatter(index, 400, seed=5, spread=0.05)
    index.upsert("stale", *CENTRE, recorded_at=0, seen_at=0)
    counts = index.supply(7, now=1000)
    assert sum(counts.values()) == 400
    for cell in counts:
        assert h3.get_resolution(cell) == 7
    expected: dict[int, int] = {}
    for p in index:
        if p.driver_id != "stale":
            parent = h3.cell_to_parent(p.cell, 7)
            expected[parent] = expected.get(parent, 0) + 1
    assert counts == expected
    with pytest.raises(ValueError):
        index.supply(10, now=1000)


def test_remove_unlinks_every_level() -> None:
    index = LocationIndex()
    index.upsert("d", *CENTRE, recorded_at=1, seen_at=1)
    assert index.remove("d")
    assert not index.remove("d")
    assert index.nearby(*CENTRE, radius_m=9000, limit=5, now=1) == []


async def test_index_updater_applies_only_the_newest_ping_of_a_batch() -> None:
    index = LocationIndex(ttl_s=10**10)
    pings = [
        {
            "lat": 52.0 + i / 1000,
            "lng": 4.0,
            "recorded_at_ms": 1_795_996_800_000 + i * 1000,
        }
        for i in (2, 5, 1)
    ]
    event = Event(
        type="polder.location.pings_recorded.v1",
        source="t",
        subject="d",
        data={"driver_id": "d", "received_at": "2026-11-29T12:00:06.000Z", "pings": pings},
    )
    await IndexUpdater(index, LocationMetrics(CollectorRegistry()))(
        [Received(event, "d", "t", 0, 0)]
    )
    pos = index.get("d")
    assert pos is not None and pos.lat == 52.005


# --- nearby() is exactly a full sort, at every level, wherever on the globe -----------------

Hit = tuple[str, float]


def hits(found: list[Nearby]) -> list[Hit]:
    return [(n.position.driver_id, n.distance_m) for n in found]


def brute_force_hits(
    index: LocationIndex, lat: float, lng: float, radius: float, limit: int, now: float
) -> list[Hit]:
    """Every fresh driver sorted by (haversine_m, driver_id), cut at the radius and the limit."""
    found = sorted(
        (haversine_m(lat, lng, p.lat, p.lng), p.driver_id) for p in index if index.is_fresh(p, now)
    )
    return [(d, dist) for dist, d in found if dist <= radius][:limit]


def wrap_lng(lng: float) -> float:
    return (lng + 180.0) % 360.0 - 180.0


def scatter_around(
    index: LocationIndex, lat: float, lng: float, n: int, spread_m: float, seed: int
) -> None:
    """n drivers within spread_m of a point (square), 10 % of them stale at now=1000."""
    rng = random.Random(seed)
    dlat = spread_m / 111_320.0
    dlng = dlat / max(0.01, math.cos(math.radians(lat)))
    for i in range(n):
        seen_at = 900.0 if rng.random() < 0.1 else 1000.0 - rng.uniform(0, 30)
        index.upsert(
            f"d{i:05d}",
            lat + rng.uniform(-dlat, dlat),
            wrap_lng(lng + rng.uniform(-dlng, dlng)),
            recorded_at=seen_at,
            seen_at=seen_at,
        )


@pytest.mark.parametrize(
    ("radius", "limit"),
    [
        (150, 3),  # resolution 9
        (1_000, 1),
        (1_000, 20),
        (4_000, 300),
        (12_000, 25),  # resolution 8
        (25_000, 10),  # resolution 7
        (40_000, 10),  # resolution 6
        (150_000, 400),  # resolution 6, past the ring cap
    ],
)
def test_nearby_gives_haversine_distances_in_full_sort_order(radius: float, limit: int) -> None:
    index = LocationIndex(ttl_s=60)
    scatter_around(index, *CENTRE, n=2_500, spread_m=30_000, seed=21)
    rng = random.Random(radius + limit)
    for _ in range(25):
        lat = CENTRE[0] + rng.uniform(-0.25, 0.25)
        lng = CENTRE[1] + rng.uniform(-0.4, 0.4)
        got = hits(index.nearby(lat, lng, radius, limit, now=1000))
        assert got == brute_force_hits(index, lat, lng, radius, limit, now=1000)


@pytest.mark.parametrize(("radius", "limit"), [(1_000, 8), (5_000, 8), (40_000, 30)])
def test_nearby_with_accept_is_the_full_sort_of_the_accepted_drivers(
    radius: float, limit: int
) -> None:
    index = LocationIndex(ttl_s=60)
    scatter_around(index, *CENTRE, n=2_500, spread_m=30_000, seed=5)
    # About two in three drivers accepted, as when a batch skips the busy ones: the answer
    # still holds `limit` of them where the radius has them (asked once, never again).
    accepted = {d.driver_id for d in index if int(d.driver_id[1:]) % 3 != 0}
    rng = random.Random(radius)
    for _ in range(25):
        lat = CENTRE[0] + rng.uniform(-0.25, 0.25)
        lng = CENTRE[1] + rng.uniform(-0.4, 0.4)
        got = hits(index.nearby(lat, lng, radius, limit, 1000, accepted.__contains__))
        wider = brute_force_hits(index, lat, lng, radius, len(index), now=1000)
        assert got == [h for h in wider if h[0] in accepted][:limit]


PENTAGON_9 = h3.cell_to_latlng(min(h3.get_pentagons(9)))


@pytest.mark.parametrize(
    "centre",
    [
        PENTAGON_9,  # the _ring fallback and distorted cells
        (-16.5, 179.99),  # across the antimeridian
        (78.2, 15.6),  # far north: narrow longitudes
        (-89.9, 0.0),  # at the pole
    ],
)
def test_nearby_is_exact_near_pentagons_the_antimeridian_and_the_poles(
    centre: tuple[float, float],
) -> None:
    index = LocationIndex(ttl_s=60)
    scatter_around(index, *centre, n=1_500, spread_m=8_000, seed=4)
    rng = random.Random(8)
    lng_scale = 1 / max(0.01, math.cos(math.radians(centre[0])))
    queries = [centre] + [
        (
            centre[0] + rng.uniform(-0.06, 0.06),
            wrap_lng(centre[1] + rng.uniform(-0.06, 0.06) * lng_scale),
        )
        for _ in range(12)
    ]
    for lat, lng in queries:
        for radius, limit in ((300, 5), (1_500, 20), (6_000, 50), (20_000, 2_000)):
            got = hits(index.nearby(lat, lng, radius, limit, now=1000))
            assert got == brute_force_hits(index, lat, lng, radius, limit, now=1000)


def test_ties_are_broken_by_driver_id_as_a_full_sort_would() -> None:
    index = LocationIndex()
    # Two points exactly as far from the query (binary fractions: every step is exact), ~530 m
    # apart so in different cells, each holding drivers of both halves of the alphabet.
    lat, lng, step = 52.375, 4.875, 0.0078125
    ids = [f"t{i:02d}" for i in range(16)]
    random.Random(3).shuffle(ids)
    for i, driver_id in enumerate(ids):
        index.upsert(driver_id, lat, lng + (step if i % 2 else -step), recorded_at=1, seen_at=1)
    for limit in (1, 3, 8, 11):
        found = index.nearby(lat, lng, 1_000, limit, now=1)
        assert [n.position.driver_id for n in found] == sorted(ids)[:limit]
        assert len({n.distance_m for n in found}) == 1
    # Drivers on the query point itself: all at 0 m.
    for driver_id in ("z2", "z0", "z1"):
        index.upsert(driver_id, lat, lng, recorded_at=1, seen_at=1)
    found = index.nearby(lat, lng, 1_000, 2, now=1)
    assert hits(found) == [("z0", 0.0), ("z1", 0.0)]


def test_moves_removals_and_expiry_keep_nearby_exact() -> None:
    index = LocationIndex(ttl_s=60)
    rng = random.Random(12)
    for step in range(8):
        now = 1_000.0 + 10 * step
        for i in range(700):
            driver_id = f"m{i}"
            if rng.random() < 0.08:
                index.remove(driver_id)
                continue
            pos = index.get(driver_id)
            if pos is not None and rng.random() < 0.7:  # a short drive, often within its cell
                lat = pos.lat + rng.uniform(-0.002, 0.002)
                lng = pos.lng + rng.uniform(-0.003, 0.003)
            else:  # a jump anywhere in town
                lat = CENTRE[0] + rng.uniform(-0.05, 0.05)
                lng = CENTRE[1] + rng.uniform(-0.08, 0.08)
            index.upsert(driver_id, lat, lng, recorded_at=now, seen_at=now - rng.uniform(0, 70))
        index.expire(now)
        for _ in range(15):
            lat = CENTRE[0] + rng.uniform(-0.05, 0.05)
            lng = CENTRE[1] + rng.uniform(-0.08, 0.08)
            for radius, limit in ((400, 4), (2_000, 25), (15_000, 10_000)):
                got = hits(index.nearby(lat, lng, radius, limit, now))
                assert got == brute_force_hits(index, lat, lng, radius, limit, now)
    everyone = index.nearby(*CENTRE, radius_m=50_000, limit=10_000, now=1_000.0 + 70)
    assert {n.position.driver_id for n in everyone} == {
        p.driver_id for p in index if index.is_fresh(p, 1_000.0 + 70)
    }
    while len(index):
        assert index.remove(next(iter(index)).driver_id)
    assert index.nearby(*CENTRE, radius_m=50_000, limit=10, now=1_000.0) == []


def test_positions_are_plain_snapshots() -> None:
    index = LocationIndex()
    index.upsert("d", 52.37, 4.89, recorded_at=5, seen_at=6)
    pos = index.get("d")
    cell = h3.latlng_to_cell(52.37, 4.89, 9)
    assert pos == Position("d", 52.37, 4.89, cell, 5, 6)
    assert repr(pos) == f"Position(driver_id='d', lat=52.37, lng=4.89, cell={cell}, " + (
        "recorded_at=5, seen_at=6)"
    )
    assert [f.name for f in fields(Position)] == [
        "driver_id",
        "lat",
        "lng",
        "cell",
        "recorded_at",
        "seen_at",
    ]
    assert index.upsert("d", 52.38, 4.89, recorded_at=7, seen_at=3)  # seen earlier: keeps 6
    newer = index.get("d")
    assert newer is not None and (newer.lat, newer.recorded_at, newer.seen_at) == (52.38, 7, 6)
    assert pos is not None and (pos.lat, pos.recorded_at) == (52.37, 5)  # untouched
    [hit] = index.nearby(52.38, 4.89, 10, 5, now=6)
    assert hit.position is newer and hit.distance_m == 0.0


@given(
    lat=st.floats(-89.9, 89.9),
    lng=st.floats(-180.0, 180.0),
    fine=st.integers(0, 15),
    data=st.data(),
)
def test_parents_from_bits_are_h3s_parents(
    lat: float, lng: float, fine: int, data: st.DataObject
) -> None:
    cell = h3.latlng_to_cell(lat, lng, fine)
    coarse = data.draw(st.integers(0, fine))
    assert cell_resolution(cell) == fine
    assert (cell & ALL_BUT_RES) | parent_bits(coarse) == h3.cell_to_parent(cell, coarse)


@given(
    lat=st.floats(-90.0, 90.0),
    lng=st.floats(-180.0, 180.0),
    dlat=st.floats(-0.05, 0.05),
    dlng=st.floats(-0.05, 0.05),
    far=st.booleans(),
    scale=st.floats(0.0, 2.0),
)
def test_within_is_haversine_compared_with_the_limit(
    lat: float, lng: float, dlat: float, dlng: float, far: bool, scale: float
) -> None:
    lat2 = max(-90.0, min(90.0, lat + (dlat * 2_000 if far else dlat)))
    lng2 = max(-180.0, min(180.0, lng + (dlng * 3_000 if far else dlng)))
    exact = haversine_m(lat, lng, lat2, lng2)
    # Limits around the distance, where a loose bound would show; just above the cheap bound
    # (so the answer comes from it: a slack too small would show there); far off; NaN.
    path = (abs(lat2 - lat) + abs(lng2 - lng)) * math.radians(1.0) * 6_371_008.8
    near = (exact * (1 - 1e-12), exact * (1 + 1e-12), exact + 1e-7)
    bound = (path * (1 + 1e-9) + 1e-6, path * (1 + 2e-9) + 2e-6)
    for limit in (exact, exact * scale, *near, *bound, 70.0, math.nan):
        assert within_m(lat, lng, lat2, lng2, limit) == (not exact > limit)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((-89.999998854, 0.0), (90.0, 0.0)),  # pole to pole: asin at its steepest
        ((0.0, 0.0), (0.0, 179.999998854)),  # nearly antipodal on the equator
        ((10.0, 179.9999), (10.0, -179.9999)),  # across the antimeridian: 20 m, not 40 000 km
        ((90.0, 0.0), (90.0, 120.0)),  # one pole, two longitudes: the same point
    ],
)
def test_within_is_exact_at_the_antipode_the_antimeridian_and_the_poles(
    a: tuple[float, float], b: tuple[float, float]
) -> None:
    exact = haversine_m(*a, *b)
    for limit in (exact, exact * (1 - 1e-9), exact * (1 + 1e-9), exact + 0.5, exact - 0.5, 70.0):
        assert within_m(*a, *b, limit) == (not exact > limit)


@pytest.mark.parametrize("where", ["amsterdam", "pentagon"])
def test_rings_are_the_disk_minus_the_inner_disk_kept_or_not(where: str) -> None:
    """The search's rings (kept for reuse up to a few steps out, computed beyond) are exactly
    the cells k steps away, next to a pentagon too, where H3's own ring gives up."""
    origin = (
        h3.latlng_to_cell(52.37, 4.89, 9)
        if where == "amsterdam"
        else next(iter(h3.get_pentagons(9)))
    )
    for k in range(_KEPT_RINGS + 3):
        inner = set(h3.grid_disk(origin, k - 1)) if k else set()
        expected = set(h3.grid_disk(origin, k)) - inner
        assert set(_ring(origin, k)) == expected and len(_ring(origin, k)) == len(expected)
        if 0 < k <= _KEPT_RINGS:  # kept: the same ring comes back, not one computed again
            assert _ring(origin, k) is _ring(origin, k)
