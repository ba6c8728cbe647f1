"""A transaction's changes take effect no earlier than the previous change of any row it locked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from polder.dispatch.transitions import not_before, settled

T0 = datetime(2026, 12, 6, 12, tzinfo=UTC)


def test_now_stands_when_every_locked_row_changed_before_it() -> None:
    worker = {"status_since": T0 - timedelta(seconds=3)}
    order = {"updated_at": T0 - timedelta(seconds=1)}
    assert settled(T0, worker, order, None) == T0


def test_a_later_change_of_any_locked_row_moves_the_time_to_it() -> None:
    offer_made_later = {"created_at": T0 + timedelta(milliseconds=139)}
    worker = {"status_since": T0 + timedelta(milliseconds=139)}
    order = {"updated_at": T0 + timedelta(milliseconds=20)}
    assert settled(T0, order, offer_made_later, worker) == T0 + timedelta(milliseconds=139)
    assert not_before(T0, None) == T0
    assert not_before(T0, T0 + timedelta(seconds=1)) == T0 + timedelta(seconds=1)
