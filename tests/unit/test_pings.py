import math
from datetime import UTC, datetime, timedelta

import pytest

from polder.location.domain.pings import (
    Fix,
    Limits,
    Ping,
    Reason,
    Screened,
    SetBack,
    screen,
    screen_batch,
)

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
    bad_accuracy = Ping(
        52.37, 4.89, NOW - timedelta(seconds=5), accuracy_m=-1.0, heading_deg=math.inf
    )
    result = screen([both, bad_accuracy], None, NOW, LIMITS)
    assert result.rejected == [(0, Reason.NOT_FINITE), (1, Reason.NOT_FINITE)]
    only_range = screen([Ping(100.0, 4.89, NOW - timedelta(seconds=5))], None, NOW, LIMITS)
    assert only_range.rejected == [(0, Reason.LAT_OUT_OF_RANGE)]


# --- a device clock set back mid-shift --------------------------------------------------------


class Phone:
    """A driver's batches through ``screen_batch``, keeping what the ingest handler keeps: the
    last fix with its receipt time, and the batch remembered as a possible clock set back."""

    def __init__(self) -> None:
        self.last: Fix | None = None
        self.last_received_t = 0.0
        self.remembered: SetBack | None = None

    def send(self, pings: list[Ping], received: datetime) -> Screened:
        result, self.remembered = screen_batch(
            pings, self.last, self.last_received_t, self.remembered, received, LIMITS
        )
        if result.accepted:
            self.last, self.last_received_t = result.last, received.timestamp()
        return result


def batch(device_s: float, lat: float = 52.37, lng: float = 4.89) -> list[Ping]:
    """Three pings a second apart, the newest at ``device_s`` (device clock, from NOW)."""
    return [at(device_s - 2 + k, lat=lat + k * 1e-5, lng=lng) for k in range(3)]


def accepted(result: Screened) -> int:
    return len(result.accepted)


def test_a_retry_of_the_same_batch_stays_stale_however_often() -> None:
    phone = Phone()
    sent = batch(-0.5)
    assert accepted(phone.send(sent, NOW)) == 3
    assert accepted(phone.send(batch(2.5, lat=52.3701), NOW + timedelta(seconds=3))) == 3
    for retry in range(1, 4):  # the first batch sent again, 1, 2 and 3 s later
        result = phone.send(sent, NOW + timedelta(seconds=3 + retry))
        assert accepted(result) == 0 and not result.clock_set_back
        assert {r for _, r in result.rejected} == {Reason.STALE}
    # the second retry came within a second of the first (offsets agree): the device clock
    # did not move on, so it is a retry, not a clock set back
    assert phone.remembered is not None
    assert phone.remembered.newest.recorded_at == NOW - timedelta(seconds=0.5)
    assert accepted(phone.send(batch(5.5, lat=52.3702), NOW + timedelta(seconds=6))) == 3
    assert phone.remembered is None


def test_a_clock_set_back_5_minutes_is_followed_after_one_batch() -> None:
    phone = Phone()
    for n in range(4):  # every 3 s, on time
        assert accepted(phone.send(batch(3 * n), NOW + timedelta(seconds=3 * n + 0.3))) == 3
    back = -300.0  # then the phone's clock is set back 5 minutes
    first = phone.send(batch(12 + back), NOW + timedelta(seconds=12.4))
    assert accepted(first) == 0 and {r for _, r in first.rejected} == {Reason.STALE}
    second = phone.send(batch(15 + back, lat=52.3701), NOW + timedelta(seconds=15.2))
    assert accepted(second) == 3 and second.rejected == [] and second.clock_set_back
    assert second.last == Fix(52.3701 + 2e-5, 4.89, NOW + timedelta(seconds=15 + back))
    # and from there on as usual, on the new clock
    third = phone.send(batch(18 + back, lat=52.3702), NOW + timedelta(seconds=18.3))
    assert accepted(third) == 3 and not third.clock_set_back
    # a retry of the batch taken on the new clock is stale as ever
    assert accepted(phone.send(batch(18 + back, lat=52.3702), NOW + timedelta(seconds=19))) == 0


def test_offsets_that_disagree_are_not_a_clock_set_back() -> None:
    phone = Phone()
    assert accepted(phone.send(batch(60), NOW + timedelta(seconds=60.3))) == 3
    # two old batches, each behind the last fix, retried with a minute between them: the
    # device clock moved on 3 s while the server's moved on 60 s
    assert accepted(phone.send(batch(54), NOW + timedelta(seconds=61))) == 0
    assert accepted(phone.send(batch(57), NOW + timedelta(seconds=121))) == 0
    # the second is remembered instead of the first: a batch that agrees with it may follow
    assert phone.remembered is not None and phone.remembered.offset_s == pytest.approx(64)
    assert phone.remembered.newest.recorded_at == NOW + timedelta(seconds=57)


def test_a_jump_is_still_checked_across_and_after_a_clock_set_back() -> None:
    phone = Phone()
    assert accepted(phone.send(batch(0), NOW + timedelta(seconds=0.3))) == 3
    back = -600.0
    # set back, and the remembered batch 11 km away 3 s of server time later: impossible
    far = 52.47
    assert accepted(phone.send(batch(3 + back, lat=far), NOW + timedelta(seconds=3.3))) == 0
    jumped = phone.send(batch(6 + back, lat=far), NOW + timedelta(seconds=6.3))
    assert accepted(jumped) == 0 and {r for _, r in jumped.rejected} == {Reason.STALE}
    # nearby instead: taken after one batch
    assert accepted(phone.send(batch(9 + back), NOW + timedelta(seconds=9.3))) == 0
    near = phone.send(batch(12 + back, lat=52.3702), NOW + timedelta(seconds=12.3))
    assert accepted(near) == 3 and near.clock_set_back
    # on the new clock, a jump is checked against the fix taken after the set back
    after = phone.send(batch(15 + back, lat=far), NOW + timedelta(seconds=15.3))
    assert accepted(after) == 0
    assert {r for _, r in after.rejected} == {Reason.IMPOSSIBLE_JUMP}
    # and within the batch taken across the set back, device times on the new clock
    phone2 = Phone()
    phone2.send(batch(0), NOW + timedelta(seconds=0.3))
    phone2.send(batch(3 + back), NOW + timedelta(seconds=3.3))
    mixed = [at(4 + back, lat=52.37001), at(5 + back, lat=52.47), at(6 + back, lat=52.37002)]
    result = phone2.send(mixed, NOW + timedelta(seconds=6.3))
    assert result.clock_set_back and result.rejected == [(1, Reason.IMPOSSIBLE_JUMP)]


def test_a_clock_set_forward_is_the_future_limit_s_business() -> None:
    phone = Phone()
    assert accepted(phone.send(batch(0), NOW + timedelta(seconds=0.3))) == 3
    ahead = phone.send(batch(3 + 120), NOW + timedelta(seconds=3.3))
    assert accepted(ahead) == 0 and {r for _, r in ahead.rejected} == {Reason.FUTURE}
    assert phone.remembered is None
