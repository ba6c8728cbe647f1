"""The ingest benchmark's report: ping→index p99 by slice of the window, from the scrapes."""

from __future__ import annotations

import math

from loadtests._ingest_report import TO_INDEX, p99_by_slice
from loadtests._stats import Scrape

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
