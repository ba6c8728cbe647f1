"""The dispatch benchmark's report: the first part of each batch, told from the offers alone."""

from __future__ import annotations

import pytest

from loadtests._dispatch_load import Offer
from loadtests._dispatch_report import _first_part_waits
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
