import math
from datetime import UTC, datetime, timedelta

import pytest

from polder.location.domain.pings import Fix, Limits, Ping, Reason, screen

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LIMITS = Limits(max_future_skew_s=30, max_speed_mps=70)


def at(seconds: float, lat: float = 52.37, lng: float = 4.89, **kw: float) -> Ping:
    return Ping(lat, lng, NOW + timedelta(seconds=seconds), **kw)


def test_valid_pings_are_accepted_and_become_the_last_fix() -> None:
    result = screen([at(-10), at(-5, lat=52.3701)], None, NOW, LIMITS)
    assert [i for i, _ in result.accepted] == [0, 1]
    assert result.rejected == []
    assert result.last == Fix(52.3701, 4.89, NOW - timedelta(seconds=5))


@pytest.mark.parametrize(
    ("ping", "reason"),
    [
        (at(-1, lat=float("nan")), Reason.NOT_FINITE),
        (at(-1, lng=float("inf")), Reason.NOT_FINITE),
        (at(-1, lat=90.0001), Reason.LAT_OUT_OF_RANGE),
        (at(-1, lat=-91), Reason.LAT_OUT_OF_RANGE),
        (at(-1, lng=180.5), Reason.LNG_OUT_OF_RANGE),
        (at(-1, accuracy_m=-1), Reason.INVALID_ACCURACY),
        (at(-1, speed_mps=-0.1), Reason.INVALID_SPEED),
        (at(-1, speed_mps=float("nan")), Reason.NOT_FINITE),
        (at(-1, heading_deg=361), Reason.INVALID_HEADING),
        (at(31), Reason.FUTURE),
    ],
)
def test_each_bad_ping_is_rejected_with_its_reason(ping: Ping, reason: Reason) -> None:
    result = screen([ping], None, NOW, LIMITS)
    assert result.accepted == []
    assert result.rejected == [(0, reason)]
    assert result.last is None


def test_small_future_skew_is_tolerated() -> None:
    assert screen([at(29)], None, NOW, LIMITS).rejected == []


def test_ping_no_newer_than_the_last_fix_is_stale() -> None:
    last = Fix(52.37, 4.89, NOW - timedelta(seconds=5))
    result = screen([at(-5), at(-6), at(-4)], last, NOW, LIMITS)
    assert result.rejected == [(0, Reason.STALE), (1, Reason.STALE)]
    assert [i for i, _ in result.accepted] == [2]


def test_a_retried_batch_is_all_stale() -> None:
    batch = [at(-3), at(-2), at(-1)]
    first = screen(batch, None, NOW, LIMITS)
    again = screen(batch, first.last, NOW, LIMITS)
    assert again.accepted == []
    assert {r for _, r in again.rejected} == {Reason.STALE}


def test_physically_impossible_jump_is_rejected() -> None:
    last = Fix(52.37, 4.89, NOW - timedelta(seconds=10))
    # ~11 km in 10 s is ~1100 m/s
    result = screen([at(0, lat=52.47)], last, NOW, LIMITS)
    assert result.rejected == [(0, Reason.IMPOSSIBLE_JUMP)]
    # the same move over 10 minutes is a plausible ~18 m/s
    later = screen([at(590, lat=52.47)], last, NOW + timedelta(seconds=600), LIMITS)
    assert later.rejected == []


def test_a_rejected_ping_does_not_move_the_last_fix() -> None:
    last = Fix(52.37, 4.89, NOW - timedelta(seconds=10))
    # the jump is rejected; the next ping is checked against the original fix, not the jump
    result = screen([at(-5, lat=52.60), at(-4, lat=52.3702)], last, NOW, LIMITS)
    assert result.rejected == [(0, Reason.IMPOSSIBLE_JUMP)]
    assert [i for i, _ in result.accepted] == [1]


def test_out_of_order_batch_is_screened_in_recorded_order_with_original_indices() -> None:
    result = screen([at(-1, lat=52.3702), at(-3), at(-2, lat=52.3701)], None, NOW, LIMITS)
    assert result.rejected == []
    assert [i for i, _ in result.accepted] == [1, 2, 0]
    assert result.last is not None and result.last.recorded_at == NOW - timedelta(seconds=1)


def test_a_ping_from_a_broken_clock_long_ago_is_stale_even_for_a_new_driver() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    old = [
        Ping(52.37, 4.89, datetime(1621, 8, 18, 9, 14, tzinfo=UTC)),
        Ping(52.37, 4.89, datetime(1970, 1, 1, tzinfo=UTC)),
        Ping(52.37, 4.89, now - timedelta(days=2)),
    ]
    result = screen(old, None, now, LIMITS)
    assert result.rejected == [(0, Reason.STALE), (1, Reason.STALE), (2, Reason.STALE)]
    recent = screen([Ping(52.37, 4.89, now - timedelta(minutes=20))], None, now, LIMITS)
    assert [i for i, _ in recent.accepted] == [0]


def test_a_non_finite_number_is_the_reason_even_when_another_field_is_out_of_range() -> None:
    both = Ping(100.0, 4.89, NOW - timedelta(seconds=5), speed_mps=math.nan)
    bad_accuracy = Ping(52.37, 4.89, NOW - timedelta(seconds=5), accuracy_m=-1.0,
                        heading_deg=math.inf)
    result = screen([both, bad_accuracy], None, NOW, LIMITS)
    assert result.rejected == [(0, Reason.NOT_FINITE), (1, Reason.NOT_FINITE)]
    only_range = screen([Ping(100.0, 4.89, NOW - timedelta(seconds=5))], None, NOW, LIMITS)
    assert only_range.rejected == [(0, Reason.LAT_OUT_OF_RANGE)]
