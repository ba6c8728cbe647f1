import pytest
from prometheus_client import CollectorRegistry

from polder.common.errors import ApiError
from polder.common.metrics import CommonMetrics
from polder.common.settings import Settings
from polder.common.throttle import Budget, Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, **limits: float) -> tuple[Throttle, CommonMetrics]:
    metrics = CommonMetrics(CollectorRegistry())
    return Throttle(Settings(**limits), metrics.rate_limited, clock), metrics


def refused(metrics: CommonMetrics, budget: str) -> float:
    value = metrics.registry.get_sample_value("polder_rate_limited_total", {"budget": budget})
    return value or 0.0


def test_a_spent_budget_is_a_429_with_whole_seconds_to_wait() -> None:
    clock = Clock()
    t, metrics = throttle(clock, rate_limit_per_s=0.4, rate_limit_burst=2)
    t.charge("driver:a")
    t.charge("driver:a")
    with pytest.raises(ApiError) as caught:
        t.charge("driver:a")
    err = caught.value
    assert err.status == 429 and err.code == "rate_limited"
    assert err.headers["Retry-After"] == "3"  # 2.5 s until a token: rounded up, never down
    assert err.details["budget"] == "api"
    assert refused(metrics, "api") == 1
    clock.now = 2.5
    t.charge("driver:a")  # as promised


def test_retry_after_is_at_least_one_second() -> None:
    clock = Clock()
    t, _ = throttle(clock, rate_limit_per_s=100, rate_limit_burst=1)
    t.charge("k")
    with pytest.raises(ApiError) as caught:
        t.charge("k")
    assert caught.value.headers["Retry-After"] == "1"


def test_tokens_and_budgets_are_apart() -> None:
    clock = Clock()
    t, metrics = throttle(
        clock,
        rate_limit_per_s=1,
        rate_limit_burst=1,
        report_rate_limit_per_s=1,
        report_rate_limit_burst=2,
    )
    t.charge("operator:o")
    with pytest.raises(ApiError):
        t.charge("operator:o")
    t.charge("operator:p")  # another token
    t.charge("operator:o", Budget.REPORTS)  # the reports budget is the operator's own
    t.charge("operator:o", Budget.REPORTS)
    with pytest.raises(ApiError) as caught:
        t.charge("operator:o", Budget.REPORTS)
    assert caught.value.details["budget"] == "reports"
    assert (refused(metrics, "api"), refused(metrics, "reports")) == (1, 1)
