"""The ingest benchmark's report: ping→index p99 and the share within the target, for the
window and by slice of it, from the scrapes."""

from __future__ import annotations

import math

import pytest

from loadtests._ingest_report import TARGET_P99_S, TO_INDEX, p99_by_slice
from loadtests._stats import Scrape, bucket_delta, bucket_quantile, bucket_share_within

BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0)


def _scrape(at: float, counts: dict[float, float]) -> Scrape:
    """A scrape holding the ping→index histogram with ``counts`` observations per bucket (not
    cumulative), all of them accumulated since the start."""
    samples = {}
    running = 0.0
    for le in (*BOUNDS, math.inf):
        running += counts.get(le, 0.0)
        samples[(f"{TO_INDEX}_bucket", (("le", "+Inf" if math.isinf(le) else str(le)),))] = running
    return Scrape(at, samples)


def test_each_slice_gets_the_p99_of_its_own_observations() -> None:
    # 30 s of scrapes: fast for the first 15 s (all ≤ 50 ms), slow after (all in 0.5-1 s).
    fast = {0.05: 100.0}
    scrapes = []
    total: dict[float, float] = {}
    for t in range(31):
        if t > 0:
            for le, n in (fast if t <= 15 else {1.0: 100.0}).items():
                total[le] = total.get(le, 0.0) + n
        scrapes.append(_scrape(1000.0 + t, total))
    slices = p99_by_slice(scrapes)
    assert [(s["from_s"], s["to_s"]) for s in slices] == [(0.0, 15.0), (15.0, 30.0)]
    assert slices[0]["p99_s"] <= 0.05
    assert 0.5 < slices[1]["p99_s"] <= 1.0


def test_a_short_window_is_one_slice_and_no_scrapes_no_slices() -> None:
    scrapes = [_scrape(1000.0, {}), _scrape(1005.0, {0.1: 10.0})]
    [only] = p99_by_slice(scrapes)
    assert (only["from_s"], only["to_s"]) == (0.0, 5.0) and 0.05 < only["p99_s"] <= 0.1
    assert p99_by_slice([]) == []


def test_the_share_within_the_target_is_exact_and_agrees_with_the_p99_verdict() -> None:
    # 1 000 observations: 985 within 250 ms, 15 in (0.25, 0.5]: 98.5 % within, p99 beyond.
    start = _scrape(1000.0, {})
    end = _scrape(1010.0, {0.1: 900.0, 0.25: 85.0, 0.5: 15.0})
    buckets = bucket_delta(start.buckets(TO_INDEX), end.buckets(TO_INDEX))
    assert bucket_share_within(buckets, TARGET_P99_S) == 0.985
    assert bucket_quantile(buckets, 0.99) > TARGET_P99_S
    [only] = p99_by_slice([start, end])
    assert only["within_target_share"] == 0.985
    # Five more within the bound: exactly 99 %, and the interpolated p99 lands on the bound.
    end = _scrape(1010.0, {0.1: 905.0, 0.25: 85.0, 0.5: 10.0})
    buckets = bucket_delta(start.buckets(TO_INDEX), end.buckets(TO_INDEX))
    assert bucket_share_within(buckets, TARGET_P99_S) == 0.99
    assert bucket_quantile(buckets, 0.99) <= TARGET_P99_S


def test_the_share_within_needs_a_bucket_bound_and_observations() -> None:
    buckets = {0.1: 0.0, 0.25: 0.0, math.inf: 0.0}
    assert math.isnan(bucket_share_within(buckets, 0.25))
    with pytest.raises(ValueError, match="not a bucket bound"):
        bucket_share_within(buckets, 0.2)
