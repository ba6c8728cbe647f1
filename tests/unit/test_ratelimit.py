import pytest

from polder.common.ratelimit import RateLimiter


def test_burst_then_steady_rate() -> None:
    rl = RateLimiter(rate_per_s=2, burst=3)
    assert [rl.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.take("a", 0.0)
    assert wait == pytest.approx(0.5)
    assert rl.take("a", 0.5) == 0.0
    assert rl.take("a", 0.5) > 0


def test_keys_are_independent() -> None:
    rl = RateLimiter(rate_per_s=1, burst=1)
    assert rl.take("a", 0.0) == 0.0
    assert rl.take("a", 0.0) > 0
    assert rl.take("b", 0.0) == 0.0


def test_forgetting_full_buckets_keeps_the_map_bounded_without_changing_answers() -> None:
    rl = RateLimiter(rate_per_s=1, burst=2, max_keys=10)
    for i in range(10):
        rl.take(f"k{i}", 0.0)
    rl.take("busy", 100.0)  # all earlier buckets refilled long ago: forgotten
    rl.take("busy", 100.0)
    assert rl.take("busy", 100.0) > 0
    assert rl.take("k1", 100.0) == 0.0


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=0, burst=1)
