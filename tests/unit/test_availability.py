"""The matcher's in-memory view of available workers, driven by numbered state events."""

from __future__ import annotations

from typing import Any

import pytest

from polder.dispatch.domain.availability import Availability
from polder.dispatch.domain.states import WorkerStatus


def event(driver: str, seq: int, before: str, after: str, cause: str) -> dict[str, Any]:
    return {"driver_id": driver, "seq": seq, "from": before, "to": after, "cause": cause}


def test_going_online_starts_a_wait_and_an_offer_keeps_it() -> None:
    a = Availability()
    assert a.apply_event(event("d", 1, "offline", "idle", "went_online"), 100.0)
    assert dict(a.idle) == {"d": 100.0}
    assert a.apply_event(event("d", 2, "idle", "offered", "offer_sent"), 110.0)
    assert dict(a.idle) == {}
    assert a.apply_event(event("d", 3, "offered", "idle", "offer_declined"), 120.0)
    assert dict(a.idle) == {"d": 100.0}  # the wait that began at 100 goes on


def test_a_trip_ends_the_wait_and_completion_starts_a_new_one() -> None:
    a = Availability()
    a.load([("d", 4, "offered", 50.0)])
    a.apply_event(event("d", 5, "offered", "en_route_pickup", "offer_accepted"), 60.0)
    assert dict(a.idle) == {}
    assert a.state("d") is not None and a.state("d").waiting_since is None  # type: ignore[union-attr]
    for seq, (before, after, cause) in enumerate(
        [
            ("en_route_pickup", "at_pickup", "arrived_pickup"),
            ("at_pickup", "on_trip", "picked_up"),
            ("on_trip", "at_dropoff", "arrived_dropoff"),
            ("at_dropoff", "idle", "completed"),
        ],
        start=6,
    ):
        a.apply_event(event("d", seq, before, after, cause), 60.0 + seq)
    assert dict(a.idle) == {"d": 69.0}


def test_replays_and_events_older_than_the_snapshot_change_nothing() -> None:
    a = Availability()
    a.load([("d", 7, "on_trip", None)])
    assert not a.apply_event(event("d", 6, "offered", "idle", "offer_declined"), 1.0)
    assert not a.apply_event(event("d", 7, "offered", "idle", "offer_declined"), 1.0)
    assert dict(a.idle) == {}
    # An event that arrived before the snapshot is not undone by an older snapshot row.
    b = Availability()
    b.apply_event(event("e", 3, "offline", "idle", "went_online"), 5.0)
    b.load([("e", 2, "offline", None)])
    assert dict(b.idle) == {"e": 5.0}
    assert b.state("e") is not None and b.state("e").status is WorkerStatus.IDLE  # type: ignore[union-attr]


def test_leaving_goes_offline_or_on_break() -> None:
    a = Availability()
    a.load([("d", 1, "idle", 10.0), ("e", 1, "idle", None), ("f", 3, "offline", None)])
    assert dict(a.idle) == {"d": 10.0, "e": None}
    a.apply_event(event("d", 2, "idle", "break", "took_break"), 20.0)
    a.apply_event(event("e", 2, "idle", "offline", "went_offline"), 20.0)
    assert dict(a.idle) == {} and len(a) == 0


def test_a_missed_event_falls_back_to_the_event_time() -> None:
    a = Availability()
    a.load([("d", 1, "idle", 10.0)])
    # seq 2 (offered) was never seen; seq 3 brings the worker back to idle.
    a.apply_event(event("d", 3, "offered", "idle", "offer_expired"), 30.0)
    assert dict(a.idle) == {"d": 30.0}


def test_fresh_idle_shows_idle_workers_with_a_fresh_position_only() -> None:
    from polder.common.geoindex import LocationIndex
    from polder.dispatch.domain.availability import FreshIdle
    from polder.dispatch.domain.match_types import Worker

    now = 1_000.0
    view = Availability()
    view.load(
        [
            ("fresh", 1, "idle", 900.0),
            ("unknown-wait", 1, "idle", None),
            ("stale", 1, "idle", 900.0),
            ("no-position", 1, "idle", 900.0),
            ("on-trip", 1, "on_trip", None),
        ]
    )
    index = LocationIndex(9, ttl_s=60.0)
    index.upsert("fresh", 52.37, 4.89, now - 5, now - 5)
    index.upsert("unknown-wait", 52.36, 4.88, now - 1, now - 1)
    index.upsert("stale", 52.38, 4.90, now - 61, now - 61)
    index.upsert("on-trip", 52.37, 4.90, now, now)

    workers = FreshIdle(view.idle, index, now)

    assert sorted(workers) == ["fresh", "unknown-wait"] and len(workers) == 2
    assert "fresh" in workers and "stale" not in workers and "on-trip" not in workers
    assert "no-position" not in workers and "nobody" not in workers
    assert workers["fresh"] == Worker("fresh", 52.37, 4.89, 900.0)
    assert workers["unknown-wait"].waiting_since == now  # unknown wait: counted from now
    for absent in ("stale", "on-trip", "no-position", "nobody"):
        with pytest.raises(KeyError):
            workers[absent]
    assert sorted(workers.cells()) == sorted(
        index.get(d).cell
        for d in ("fresh", "unknown-wait")  # type: ignore[union-attr]
    )
    # Among drivers the view's own index answered (all fresh), membership is being idle.
    among = workers.membership_among(index, now)
    assert among("fresh") and among("unknown-wait") and not among("on-trip")
    other = LocationIndex(9, ttl_s=60.0)
    assert not workers.membership_among(other, now)("stale")  # another index: `in` itself
    assert not workers.membership_among(index, now - 30)("stale")  # another clock: the same
    # A view: a worker who gets an offer leaves it as soon as the event arrives; a census
    # that names them as taken by the batch still counts them, once, either way.
    both = sorted(workers.cells())
    assert sorted(workers.cells(taken={"fresh"})) == both
    view.apply_event({"driver_id": "fresh", "seq": 2, "to": "offered", "cause": "offer_sent"}, now)
    assert "fresh" not in workers and len(workers) == 1
    assert len(workers.cells()) == 1 and sorted(workers.cells(taken={"fresh"})) == both
