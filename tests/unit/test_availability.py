"""The matcher's in-memory view of available workers, driven by numbered state events."""

from __future__ import annotations

from typing import Any

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
