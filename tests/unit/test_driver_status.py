"""Who is on shift, as the location service follows it: newest change per driver wins."""

from __future__ import annotations

from polder.location.domain.status import DriverStatuses, StatusChange, newest


def test_a_driver_never_heard_of_is_offline() -> None:
    assert not DriverStatuses().on_shift("nobody")


def test_every_state_but_offline_is_on_shift() -> None:
    s = DriverStatuses()
    for seq, state in enumerate(["idle", "offered", "on_trip", "break", "at_dropoff"], 1):
        s.apply(StatusChange("d", seq, state))
        assert s.on_shift("d"), state
    s.apply(StatusChange("d", 9, "offline"))
    assert not s.on_shift("d") and len(s) == 0


def test_older_and_repeated_changes_are_ignored() -> None:
    s = DriverStatuses()
    assert s.apply(StatusChange("d", 5, "offline"))
    assert not s.apply(StatusChange("d", 4, "idle"))  # late, older than what is known
    assert not s.apply(StatusChange("d", 5, "idle"))  # same seq: a replay
    assert not s.on_shift("d")
    s.load([StatusChange("d", 3, "idle"), StatusChange("e", 1, "idle")])  # an older snapshot
    assert not s.on_shift("d") and s.on_shift("e") and len(s) == 1


def test_newest_keeps_one_change_per_driver() -> None:
    got = newest(
        [
            StatusChange("a", 2, "idle"),
            StatusChange("a", 3, "offline"),
            StatusChange("b", 1, "idle"),
        ]
    )
    assert sorted(got, key=lambda c: c.driver_id) == [
        StatusChange("a", 3, "offline"),
        StatusChange("b", 1, "idle"),
    ]
