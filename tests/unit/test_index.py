import random

import h3.api.basic_int as h3
import pytest
from prometheus_client import CollectorRegistry

from polder.common.bus import Received
from polder.common.envelope import Event
from polder.common.geoindex import LocationIndex, haversine_m
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
