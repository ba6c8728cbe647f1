"""The dispatch benchmark's report: the first part of each batch and the late orders, told from the
offers alone."""

from __future__ import annotations

import pytest

from loadtests._dispatch_load import Offer
from loadtests._dispatch_report import _first_part_waits, _late, late_orders
from loadtests._report import FAST_HOST_LOOP_S, host_loop_s, host_row


def _offer(n: int, batch: str, at: float, published: float) -> Offer:
    return Offer(f"f{n}", f"o{n}", f"d{n}", at=at, published=published, batch_id=batch)


def test_only_the_offers_of_each_batchs_earliest_written_part_count() -> None:
    offers = [
        _offer(1, "b1", at=10.000, published=10.030),  # b1, first part
        _offer(2, "b1", at=10.000, published=10.045),
        _offer(3, "b1", at=10.050, published=10.090),  # b1, second part
        _offer(4, "b2", at=11.020, published=11.060),  # b2 had one part
    ]
    assert _first_part_waits(offers) == pytest.approx([0.030, 0.045, 0.040])


def test_no_offers_no_waits() -> None:
    assert _first_part_waits([]) == []


def test_the_host_row_says_how_slow_the_host_was_against_a_fast_day() -> None:
    label, text = host_row(2 * FAST_HOST_LOOP_S)
    assert "5 M-addition loop" in label
    assert text == f"{2 * FAST_HOST_LOOP_S:.2f} s (2.0 × a fast day's {FAST_HOST_LOOP_S} s)"
    assert 0 < host_loop_s(repeat=1) < 60


def test_late_orders_are_told_by_batches_missed_and_part() -> None:
    offers = [
        _offer(1, "b1", at=10.05, published=10.07),  # b1 part 0: placed 9.00, on time
        _offer(2, "b1", at=10.05, published=10.07),  # placed 8.90: 170 ms beyond, part 0
        _offer(3, "b1", at=10.30, published=10.32),  # placed 9.10: 220 ms beyond, part 1
        _offer(4, "b2", at=11.05, published=11.08),  # placed 9.95: missed b1, 130 ms beyond
        _offer(5, "b3", at=12.06, published=12.08),  # placed 9.99: missed b1 and b2
        _offer(6, "b2", at=11.05, published=11.07),  # placed 10.06, after b1 began: on time
        _offer(7, "b3", at=12.06, published=12.20),  # placed as b2 began: b3 is its first
    ]
    placed = {"o1": 9.00, "o2": 8.90, "o3": 9.10, "o4": 9.95, "o5": 9.99, "o6": 10.06}
    placed["o7"] = 11.05
    first = {o.order_id: o for o in offers}
    late = late_orders(placed, first, offers, 1.0)
    assert late == {"n": 5, "by_batches_missed": {0: 3, 1: 1, 2: 1}, "by_part": {0: 4, 1: 1}}
    assert late_orders({}, {}, [], 1.0) == {"n": 0, "by_batches_missed": {}, "by_part": {}}


def test_the_late_row_folds_long_tails_of_rounds_missed() -> None:
    late = {"n": 30, "by_batches_missed": {0: 2, 1: 10, 2: 3, 3: 5, 5: 6, 9: 4}, "by_part": {0: 30}}
    assert _late(late) == "30 · by batches missed 0: 2, 1: 10, 2: 3, 3: 5, 5+: 10 · by part 0: 30"
    assert _late({"n": 0, "by_batches_missed": {}, "by_part": {}}) == "none"
